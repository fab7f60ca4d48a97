"""The seal of a manifest's decision fields (``decision_sha256``, lunglens.models.seal).

``sha256`` covers the ONNX file only; an edited threshold would otherwise be scored under the
released model's name, version and hash."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lunglens.cli import main
from lunglens.errors import ModelRefused
from lunglens.models import ModelManifest, discover_models, load_manifest
from lunglens.models.seal import SEAL, SEALED, decision_digest, plain_json, seal_matches
from onnx_fixtures import make_models_dir, write_model

REPO = Path(__file__).resolve().parents[1]


def _data(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def test_every_shipped_manifest_is_sealed() -> None:
    """The shipped folders carry a seal that matches their fields as written."""
    manifests = sorted((REPO / "models").glob("*/manifest.json"))
    assert manifests
    for path in manifests:
        data = json.loads(path.read_text(encoding="utf-8"))
        assert seal_matches(data) is True, path
        # the threshold of a triage model is among what it covers
        if "threshold" in data:
            edited = dict(data, threshold=round(data["threshold"] / 2, 4))
            assert seal_matches(edited) is False, path


def test_an_edited_threshold_is_refused_with_the_reason(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "models" / "m", threshold=0.3)
    assert load_manifest(folder).threshold == 0.3
    data = _data(folder)
    data["threshold"] = 0.2
    (folder / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ModelRefused, match=f"edited after the model was made.*{SEAL}") as err:
        load_manifest(folder)
    assert "Reinstall the model folder" in str(err.value)
    models, problems = discover_models(tmp_path / "models")
    assert models == [] and SEAL in str(problems[0])


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["labels"].reverse(),
        lambda d: d.update(version="9.9.9"),
        lambda d: d["input"].update(size=[64, 64]),
        lambda d: d["series_aggregation"].update(k=1),
        lambda d: d.update(sha256=d["sha256"].upper()),
        lambda d: d.update(warn_probability=0.5),  # a field added after sealing
        lambda d: d.update(threshold_rule="chosen by hand"),  # printed beside the hash
        lambda d: d.update(architecture="another network"),
        # JSON's NaN or Infinity where the writer put null (both hash as null): an edit
        lambda d: d["series_aggregation"].update(threshold=math.inf),
    ],
)
def test_every_decision_field_is_covered(tmp_path: Path, edit) -> None:
    folder = write_model(tmp_path / "m")
    data = _data(folder)
    edit(data)
    (folder / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ModelRefused, match=SEAL):
        load_manifest(folder)


def test_documentation_and_formatting_are_not_sealed(tmp_path: Path) -> None:
    """A rewritten card, a new measurement or another indentation leaves the seal valid."""
    folder = write_model(tmp_path / "m", threshold=0.3, metrics={"auc": 0.9})
    data = _data(folder)
    data["metrics"] = {"auc": 0.91}
    data["intended_use"] = "rewritten"
    data["default_for_modality"] = True
    data["input"]["window"]["center"] = -600.0  # jq, PowerShell: whole numbers either way
    reordered = dict(reversed(list(data.items())))
    # another indentation, key order, Windows line ends and a byte-order mark (Notepad)
    text = json.dumps(reordered, indent=7).replace("\n", "\r\n")
    (folder / "manifest.json").write_text("\ufeff" + text, encoding="utf-8")
    info = load_manifest(folder)
    assert info.threshold == 0.3 and info.spec.metrics == {"auc": 0.91}
    assert set(SEALED).isdisjoint({"metrics", "intended_use", "default_for_modality"})


def test_a_writer_seals_what_it_writes(tmp_path: Path) -> None:
    """``to_dict`` gives the seal of the fields it holds, right after ``sha256``; NumPy values
    and NaN hash as written."""
    folder = write_model(tmp_path / "m", threshold=0.3)
    spec = ModelManifest.read(folder / "manifest.json")
    out = replace(spec, threshold=0.25).to_dict()
    keys = list(out)
    assert keys[keys.index("sha256") + 1] == SEAL and seal_matches(out) is True
    assert out[SEAL] != spec.decision_sha256  # sealed again, not copied
    # what the training module holds before writing (NumPy numbers, NaN) and what is read back
    held = dict(out, threshold=np.float32(0.25), cam_reference={"values": {}, "peak": math.nan})
    written = json.loads(json.dumps(plain_json(held)))
    assert written["cam_reference"]["peak"] is None
    assert decision_digest(held) == decision_digest(written)
    assert decision_digest(held) != decision_digest(out)


def test_a_manifest_without_a_seal_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Deleting the seal is no way around it: an unsealed manifest is refused by the app and by
    the training stages that read a shipped folder (one reader, ``ModelManifest.from_dict``)."""
    models = make_models_dir(tmp_path / "models", modality_check=True)
    assert main(["--models-dir", str(models), "models", "--verify"]) == 0
    assert capsys.readouterr().out.count("verified") == 3
    write_model(models / "synthetic-ct", name="synthetic-ct", seal=False)
    with pytest.raises(ModelRefused, match="not sealed"):
        load_manifest(models / "synthetic-ct")
    with pytest.raises(ModelRefused, match="not sealed"):
        ModelManifest.read(models / "synthetic-ct" / "manifest.json")
    assert main(["--models-dir", str(models), "models", "--verify"]) == 4
    out = capsys.readouterr().out
    assert out.count("verified") == 2 and "unusable" in out and "not sealed" in out


def test_a_refused_default_model_is_not_replaced_by_the_next(tmp_path: Path) -> None:
    """Automatic mode never falls back to another model when the one it would use is refused
    (a clinic would otherwise be scored by a weaker model without being told); a model chosen
    by name still works."""
    from lunglens.models import default_model_for, get_model

    models = tmp_path / "models"
    write_model(models / "a-default", name="a-default", default_for_modality=True)
    write_model(models / "b-other", name="b-other")
    assert default_model_for("ct", models).name == "a-default"
    data = _data(models / "a-default")
    data["threshold"] = 0.01
    (models / "a-default" / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ModelRefused, match="automatic mode uses, a-default, is refused") as err:
        default_model_for("ct", models)
    assert SEAL in str(err.value) and "--model NAME" in str(err.value)
    assert get_model("b-other", models).name == "b-other"
    # a refused model that automatic mode would not have used changes nothing
    data["default_for_modality"] = False
    (models / "a-default" / "manifest.json").write_text(json.dumps(data), encoding="utf-8")
    write_model(models / "c-marked", name="c-marked", default_for_modality=True)
    assert default_model_for("ct", models).name == "c-marked"
