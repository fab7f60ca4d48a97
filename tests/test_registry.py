"""Model registry: discovery, selection and integrity checks (tampered models are refused)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lunglens.errors import ModelNotFound, ModelRefused
from lunglens.inference import clear_engines, get_engine
from lunglens.models import (
    default_model_for,
    discover_models,
    get_model,
    list_models,
    models_dir,
    verify_model,
)
from lunglens.models.seal import decision_digest
from onnx_fixtures import make_models_dir, write_model


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    clear_engines()
    return make_models_dir(tmp_path / "models")


def test_lists_models_with_manifest_fields(mdir: Path) -> None:
    models = list_models(mdir)
    assert [m.name for m in models] == ["synthetic-ct", "synthetic-cxr"]
    ct = models[0]
    assert ct.labels == ("covid", "non-covid")
    assert ct.positive_index == 0
    assert ct.input_size == (32, 32)
    assert ct.window is not None and ct.window.width == 1500
    assert ct.gallery[0].output == "act_0"
    assert ct.series_aggregation == ("top_k_mean", 3)
    assert ct.onnx_path == mdir / "synthetic-ct" / "model.onnx"
    assert verify_model(ct) is ct


def test_env_var_and_argument_override(mdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUNGLENS_MODELS_DIR", str(mdir))
    assert models_dir() == mdir
    assert get_model("synthetic-cxr").modality == "cxr"
    assert models_dir(mdir / "elsewhere") == mdir / "elsewhere"


def test_default_model_by_modality(mdir: Path) -> None:
    assert default_model_for("ct", mdir).name == "synthetic-ct"
    assert default_model_for("cxr", mdir).name == "synthetic-cxr"
    with pytest.raises(ModelNotFound, match="--model"):
        default_model_for("unknown", mdir)
    with pytest.raises(ModelNotFound, match="no installed model"):
        default_model_for("cxr", make_models_dir_only_ct(mdir.parent / "ct-only"))


def make_models_dir_only_ct(root: Path) -> Path:
    write_model(root / "only-ct", name="only-ct")
    return root


def test_unknown_name_lists_available(mdir: Path) -> None:
    with pytest.raises(ModelNotFound, match="synthetic-ct") as err:
        get_model("nope", mdir)
    assert err.value.code == "ModelNotFound"


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_byte_is_refused(mdir: Path) -> None:
    info = get_model("synthetic-ct", mdir)
    _flip_byte(info.onnx_path, info.onnx_path.stat().st_size // 2)
    with pytest.raises(ModelRefused, match="integrity check") as err:
        verify_model(info)
    assert err.value.code == "ModelRefused"
    with pytest.raises(ModelRefused):
        get_engine(info)  # the engine never loads an unverified model


def test_truncated_model_is_refused(mdir: Path) -> None:
    info = get_model("synthetic-ct", mdir)
    data = info.onnx_path.read_bytes()
    info.onnx_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelRefused, match="truncated"):
        verify_model(info)


def test_missing_model_file_is_reported_not_fatal(mdir: Path) -> None:
    (mdir / "synthetic-ct" / "model.onnx").unlink()
    models, problems = discover_models(mdir)
    assert [m.name for m in models] == ["synthetic-cxr"]
    assert len(problems) == 1 and "missing" in str(problems[0])
    with pytest.raises(ModelRefused, match="missing"):
        get_model("synthetic-ct", mdir)


def test_bad_json_is_reported_not_fatal(mdir: Path) -> None:
    (mdir / "synthetic-cxr" / "manifest.json").write_text("{not json", encoding="utf-8")
    assert [m.name for m in list_models(mdir)] == ["synthetic-ct"]
    _, problems = discover_models(mdir)
    assert "not valid JSON" in str(problems[0])


def test_manifest_with_missing_keys_or_bad_label(mdir: Path) -> None:
    mpath = mdir / "synthetic-cxr" / "manifest.json"
    data = json.loads(mpath.read_text())
    data["positive_label"] = "pneumonia"
    mpath.write_text(json.dumps(data))
    del_key = mdir / "synthetic-ct" / "manifest.json"
    data2 = json.loads(del_key.read_text())
    del data2["sha256"]
    del_key.write_text(json.dumps(data2))
    models, problems = discover_models(mdir)
    assert models == []
    messages = " ".join(str(p) for p in problems)
    assert "sha256" in messages and "pneumonia" in messages


def test_missing_models_dir_is_empty(tmp_path: Path) -> None:
    assert list_models(tmp_path / "absent") == []


def test_manifest_marked_default_wins(mdir: Path) -> None:
    """``default_for_modality`` in a manifest makes that model the modality's default."""
    write_model(mdir / "zz-marked-ct", name="zz-marked-ct", default_for_modality=True)
    assert default_model_for("ct", mdir).name == "zz-marked-ct"
    assert default_model_for("cxr", mdir).name == "synthetic-cxr"


@pytest.mark.parametrize("crop", ["body", "lungs"])
def test_manifest_preprocessing_is_parsed_and_checked(mdir: Path, crop: str) -> None:
    from lunglens.preprocess import Preprocessing

    assert list_models(mdir)[0].preprocessing == Preprocessing()
    prep = {"crop": crop, "intensity": "percentile"}
    write_model(mdir / "cropped", name="cropped", input_preprocessing=prep)
    info = get_model("cropped", mdir)
    assert info.preprocessing == Preprocessing(crop, "percentile")
    write_model(mdir / "bad-prep", name="bad-prep", input_preprocessing={"crop": "brain"})
    with pytest.raises(ModelRefused, match="preprocessing"):
        get_model("bad-prep", mdir)


def test_manifests_are_parsed_once_and_again_when_edited(mdir: Path) -> None:
    """Repeated lookups reuse the checked manifest (every classify call looks models up),
    but an edit is seen at once, even one that keeps the file's size and time stamp."""
    first = get_model("synthetic-ct", mdir)
    assert get_model("synthetic-ct", mdir) is first
    mpath = mdir / "synthetic-ct" / "manifest.json"
    stat = mpath.stat()
    text = mpath.read_text(encoding="utf-8")
    data = json.loads(text)
    data["version"] = "9" * len(str(data["version"]))  # same length
    data["decision_sha256"] = decision_digest(data)  # sealed again, as a new release is
    edited = json.dumps(data, indent=2)
    edited += " " * (len(text) - len(edited))  # same size
    mpath.write_text(edited, encoding="utf-8")
    os.utime(mpath, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same time stamp
    again = get_model("synthetic-ct", mdir)
    assert again is not first and again.version == data["version"]
    (mdir / "synthetic-ct" / "model.onnx").unlink()
    with pytest.raises(ModelRefused, match="missing"):
        get_model("synthetic-ct", mdir)  # the file check runs on every lookup


def test_sessions_do_not_spin_between_runs(mdir: Path) -> None:
    """Idle onnxruntime threads must not busy-wait: the gate's, the modality check's and the
    triage model's sessions run in turn on 2 cores."""
    from lunglens.inference.engine import SPINNING

    engine = get_engine(get_model("synthetic-ct", mdir))
    assert engine.session.get_session_options().get_session_config_entry(SPINNING) == "0"
