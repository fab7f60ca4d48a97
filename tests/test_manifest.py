"""The manifest schema (``lunglens.models.manifest``): read, checked, written back key for key."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from lunglens.errors import ModelRefused
from lunglens.models import ModelManifest, load_manifest, sha256_bytes, sha256_of
from lunglens.models.seal import SEAL, decision_digest, seal_matches
from lunglens.preprocess import Preprocessing
from onnx_fixtures import write_model

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "models").glob("*/manifest.json"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.parent.name for p in SHIPPED])
def test_every_shipped_manifest_round_trips(path: Path) -> None:
    """load -> to_dict gives the JSON on disk: same keys, same order, same values (nulls too)."""
    text = path.read_text(encoding="utf-8")
    spec = ModelManifest.read(path)
    assert json.dumps(spec.to_dict(), indent=2) == text.rstrip("\n")
    assert ModelManifest.from_dict(spec.to_dict()) == spec


def test_shipped_manifests_exist() -> None:
    assert {p.parent.name for p in SHIPPED} >= {"modality-check", "squeezenet-light-ct"}


def _sealed(data: dict) -> dict:
    """``data`` with the seal of its decision fields, as a writer seals it."""
    return {k: v for k, v in data.items() if k != SEAL} | {SEAL: decision_digest(data)}


def _without_cam_fields(name: str) -> dict:
    """A shipped manifest without its optional CAM measurements (a model from before them)."""
    data = json.loads((REPO / "models" / name / "manifest.json").read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if k not in ("cam_in_lungs", "cam_reference", SEAL)}


def test_absent_and_null_stay_apart() -> None:
    """An optional key written as ``null`` comes back as ``null``; an absent one stays absent."""
    base = _without_cam_fields("squeezenet-light-cxr")
    assert "cam_in_lungs" not in ModelManifest.from_dict(_sealed(base)).to_dict()
    with_null = base | {"cam_in_lungs": None}
    assert ModelManifest.from_dict(_sealed(with_null)).to_dict()["cam_in_lungs"] is None


def test_unknown_keys_are_kept_after_the_known_ones() -> None:
    data = json.loads((REPO / "models" / "squeezenet-light-ct" / "manifest.json").read_text())
    spec = ModelManifest.from_dict({"vendor_note": {"a": 1}} | data)
    assert spec.extra == {"vendor_note": {"a": 1}}
    out = spec.to_dict()
    assert list(out)[-1] == "vendor_note" and out == {"vendor_note": {"a": 1}} | data


def test_typed_fields_and_derived_values() -> None:
    from lunglens.models import default_model_for

    ct_default = default_model_for("ct", REPO / "models").path  # the shipped CT default
    spec = ModelManifest.read(ct_default / "manifest.json")
    assert spec.labels == ("covid", "non-covid") and isinstance(spec.threshold, float)
    assert spec.task is None and spec.task_or_default() == "triage"
    assert spec.input_size() == (224, 224)
    window = spec.window()
    assert window is not None and (window.center, window.width) == (-600.0, 1500.0)
    assert spec.preprocessing() == Preprocessing("body", "percentile")
    assert [g.output for g in spec.gallery()][:2] == ["act_0", "act_1"]
    check = ModelManifest.read(REPO / "models" / "modality-check" / "manifest.json")
    assert check.task_or_default() == "modality-check" and check.warn_probability == 0.9


def _minimal() -> dict:
    return _sealed(
        {
            "name": "m",
            "version": "1",
            "modality": "ct",
            "labels": ["covid", "non-covid"],
            "positive_label": "covid",
            "input": {"size": [8, 8]},
            "file": "model.onnx",
            "sha256": "AB" * 32,
        }
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": 5}, "manifest is malformed: labels: 5 is not a valid value"),
        ({"threshold": None}, "manifest is malformed: threshold: null is not a valid value"),
        ({"input": {"shape": [1]}}, "manifest is malformed"),
        ({"input": {}}, "manifest is malformed"),
        ({"threshold": "high"}, "malformed: threshold: 'high' is not a valid value"),
        ({"input": {"size": [8, 8], "preprocessing": {"crop": "heart"}}}, "manifest is malformed"),
        ({"outputs": {"gallery": [{"layer": "x"}]}}, "manifest is malformed"),
        ({"positive_label": "pneumonia"}, "positive_label 'pneumonia' is not one of"),
        ({"labels": ["covid"]}, "at least two labels"),
    ],
)
def test_from_dict_checks(change: dict, message: str, tmp_path: Path) -> None:
    data = _sealed(_minimal() | change)  # refused for what it holds, not for its seal
    assert ModelManifest.from_dict(_minimal()).input_size() == (8, 8)
    with pytest.raises(ModelRefused, match=message) as err:
        ModelManifest.from_dict(data, tmp_path / "manifest.json")
    assert err.value.path == str(tmp_path / "manifest.json")
    assert "Reinstall the model folder from the LungLens release" in str(err.value)


def test_from_dict_refuses_non_objects_and_missing_keys() -> None:
    with pytest.raises(ModelRefused, match="not a JSON object"):
        ModelManifest.from_dict([1, 2])
    data = _minimal()
    del data["sha256"], data["input"]
    with pytest.raises(ModelRefused, match="lacks input, sha256"):
        ModelManifest.from_dict(data)


def test_read_refuses_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ModelRefused, match=r"no manifest\.json"):
        ModelManifest.read(tmp_path / "manifest.json")
    (tmp_path / "manifest.json").write_text("{nope", encoding="utf-8")
    with pytest.raises(ModelRefused, match="not valid JSON"):
        ModelManifest.read(tmp_path / "manifest.json")


def test_registry_wraps_the_schema(tmp_path: Path) -> None:
    """ModelInfo is built from the schema: hash lower-cased, defaults applied, JSON kept."""
    folder = write_model(tmp_path / "m", threshold=0.25, vendor_note="kept")
    data = json.loads((folder / "manifest.json").read_text())
    data["sha256"] = data["sha256"].upper()
    data["decision_sha256"] = decision_digest(data)  # as a writer of upper-case hashes seals
    (folder / "manifest.json").write_text(json.dumps(data))
    info = load_manifest(folder)
    assert info.spec == ModelManifest.from_dict(data)
    assert info.sha256 == data["sha256"].lower() and info.threshold == 0.25
    assert info.manifest == data and info.manifest["vendor_note"] == "kept"
    assert info.task == "triage" and info.architecture == data["architecture"]


def test_every_schema_field_is_documented() -> None:
    text = (REPO / "docs" / "model-contract.md").read_text(encoding="utf-8")
    schema = {f.name for f in fields(ModelManifest)} - {"extra", "keep_null"}
    assert [k for k in sorted(schema) if f"| `{k}" not in text] == []


def test_one_sha256_for_files_and_bytes(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # more than one 1 MiB chunk
    (tmp_path / "f").write_bytes(data)
    assert sha256_of(tmp_path / "f") == sha256_bytes(data)
    assert sha256_bytes(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_ood_writer_keeps_the_rest_of_the_manifest(tmp_path: Path) -> None:
    """``lunglens-train ood`` rewrites only the ``ood`` entry; the same entry, the same file."""
    pytest.importorskip("onnxruntime")
    import shutil

    from lunglens.training.ood import record_stats

    folder = tmp_path / "modality-check"
    shutil.copytree(REPO / "models" / "modality-check", folder)
    text = (folder / "manifest.json").read_text(encoding="utf-8")
    shipped = ModelManifest.read(folder / "manifest.json")
    assert shipped.ood is not None
    record_stats(folder, ood=dict(shipped.ood))
    assert (folder / "manifest.json").read_text(encoding="utf-8") == text
    entry = dict(shipped.ood) | {"thresholds": {"ct": 1.0, "cxr": 2.0}}
    record_stats(folder, ood=entry)
    info = load_manifest(folder)
    assert info.spec.ood == entry
    # sealed again by the writer: the gate's thresholds decide which images are refused
    written = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert seal_matches(written) is True and written[SEAL] != json.loads(text)[SEAL]
    # new statistics decide other refusals: a new version (the same ones kept the file above)
    assert info.version == "1.1.1" and json.loads(text)["version"] == "1.1.0"
    changed = ("ood", SEAL, "version")
    assert {k: v for k, v in info.manifest.items() if k not in changed} == {
        k: v for k, v in json.loads(text).items() if k not in changed
    }


def test_cam_reference_is_read_and_checked() -> None:
    """The app scales a not-flagged scan's CAM by ``cam_reference``: a value that is not a
    positive number of one of the model's labels would silently blank or saturate maps."""
    from lunglens.models import default_model_for

    info = default_model_for("ct", REPO / "models")
    assert set(info.cam_reference) == {"covid"} and info.cam_reference["covid"] > 0
    base = _without_cam_fields("squeezenet-light-cxr")
    assert ModelManifest.from_dict(_sealed(base)).cam_references() == {}
    good = _sealed(base | {"cam_reference": {"values": {"covid": 4.5}, "rule": "r"}})
    assert ModelManifest.from_dict(good).cam_references() == {"covid": 4.5}
    for values in ({"flu": 4.5}, {"covid": 0}, {"covid": -1.0}, {"covid": float("nan")}):
        with pytest.raises(ModelRefused, match="cam_reference"):
            ModelManifest.from_dict(base | {"cam_reference": {"values": values}})
    # a wrong type is a refused model (ModelRefused), never a crash of the model list
    for ref in ("x", {"values": [1]}, {"values": {"covid": True}}, {"values": {"covid": "4"}}):
        with pytest.raises(ModelRefused, match="cam_reference"):
            ModelManifest.from_dict(base | {"cam_reference": ref})
