"""The chest-image gate's CT feature check: CT of another body part, without tags, gets no score.

The learned check lets untagged head CT slices through (their distance is inside the chest CT
spread) and the CT model then flags them; the feature check, in the default CT model's own
stage-4 features, refuses them. These tests use the shipped models and real DICOM files of
``../shared/data/dicom`` (pydicom-data, MIT), and PNG exports of them made at test time.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut

from lunglens.errors import ModelRefused
from lunglens.inference import check_chest
from lunglens.inference import gate as gate_module
from lunglens.inference.gate import learned_check, load_stats
from lunglens.inference.gate_feature_check import feature_ratios, load_feature_check
from lunglens.inference.gate_stats import quorum_slice
from lunglens.io import load_scan
from lunglens.models import get_model, modality_checker
from onnx_fixtures import rewrite_manifest
from ood_corpus import CHEST_CT, DICOM, REPO, SHARED

MODELS = REPO / "models"
SAMPLES = REPO / "resources" / "samples"
#: Head CT slices whose headers name no body part (the learned check alone scored them).
HEAD_CT = [DICOM / "chest-ct-transfer-syntaxes" / "CT2_J2KR", DICOM / "ct-misc" / "693_J2KR.dcm"]
pytestmark = pytest.mark.usefixtures("shared_data")


def _png_export(path: Path, out: Path, center: float = -600.0, width: float = 1500.0) -> Path:
    """A slice as a viewer exports it without its header: 8-bit grey PNG in a window."""
    ds = pydicom.dcmread(path)
    hu = np.asarray(apply_modality_lut(ds.pixel_array, ds), np.float64)
    grey = np.clip((hu - (center - width / 2)) / width * 255.0, 0, 255).astype(np.uint8)
    Image.fromarray(grey).save(out)
    return out


def test_untagged_head_ct_is_refused_by_the_feature_check(tmp_path: Path) -> None:
    info = modality_checker(MODELS)
    assert info is not None
    stats = load_stats(info)
    assert stats is not None
    for path in HEAD_CT:
        png = _png_export(path, tmp_path / f"{path.stem}.png")
        for scan in (load_scan(path), load_scan(png)):
            # the learned check alone takes it for a chest CT slice: the feature check refuses
            assert learned_check(scan, info, stats).accepted, scan.source
            verdict = check_chest(scan, MODELS)
            assert not verdict.accepted and verdict.rule == "ct-features", scan.source
            assert "to the CT model efficientnet-lite-ct" in verdict.reason
            assert verdict.distance is not None and verdict.threshold is not None
            assert verdict.distance > verdict.threshold


def test_chest_ct_passes_and_xrays_are_not_compared_with_ct_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = modality_checker(MODELS)
    assert info is not None
    check = load_feature_check(info, MODELS)
    assert check is not None and check.model.name == "efficientnet-lite-ct"
    chest_ct = [CHEST_CT, *sorted(SAMPLES.glob("ct-*.jpg")), SAMPLES / "ct-dicom-chest-j2k.dcm"]
    chest_ct.append(_png_export(CHEST_CT, tmp_path / "chest.png"))
    for path in chest_ct:
        _, ratio = feature_ratios(load_scan(path), check)
        assert (ratio <= 1.0).all(), (path, ratio)
        assert check_chest(load_scan(path), MODELS).accepted, path

    def never(*_: object) -> None:
        raise AssertionError("an X-ray was compared with chest CT features")

    monkeypatch.setattr(gate_module, "feature_ratios", never)
    for path in sorted(SAMPLES.glob("cxr-*")):
        assert check_chest(load_scan(path), MODELS).accepted, path


def _models_copy(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    for name in ("modality-check", "efficientnet-lite-ct"):
        shutil.copytree(MODELS / name, models / name)
    return models


def test_a_changed_ct_model_or_tampered_statistics_refuse_the_gate(tmp_path: Path) -> None:
    """Features of another CT model file mean nothing to the statistics: the gate is refused
    (exit code 4 in the CLI), never silently passed."""
    models = _models_copy(tmp_path)
    folder = models / "modality-check"
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    manifest["feature_check"]["model_sha256"] = "0" * 64
    rewrite_manifest(folder, manifest)
    with pytest.raises(ModelRefused, match="fitted on efficientnet-lite-ct 000000000000"):
        check_chest(load_scan(CHEST_CT), models)

    models = _models_copy(tmp_path / "second")
    stats = models / "modality-check" / "ct_features.npz"
    stats.write_bytes(stats.read_bytes()[:-8] + b"tampered")
    with pytest.raises(ModelRefused, match="integrity"):
        check_chest(load_scan(CHEST_CT), models)

    models = _models_copy(tmp_path / "third")
    shutil.rmtree(models / "efficientnet-lite-ct")
    with pytest.raises(ModelRefused, match="needs the model 'efficientnet-lite-ct'"):
        check_chest(load_scan(CHEST_CT), models)


def test_a_series_needs_a_quarter_of_its_sampled_slices() -> None:
    assert quorum_slice(np.array([3.0])) == 0
    # 4 slices: the best one decides (a quarter of 4)
    assert quorum_slice(np.array([2.0, 0.5, 3.0, 4.0])) == 1
    # 16 slices: the 4th best decides, so 4 passing slices pass the series and 3 do not
    ratio = np.full(16, 2.0)
    ratio[:4] = [0.2, 0.4, 0.6, 0.8]
    assert ratio[quorum_slice(ratio)] == 0.8
    ratio[3] = 1.5
    assert ratio[quorum_slice(ratio)] > 1.0


def test_fit_measures_acceptance_by_fold_and_for_a_source_left_out() -> None:
    from lunglens.training import feature_check

    model = get_model("efficientnet-lite-ct", MODELS)
    rng = np.random.default_rng(0)
    near = rng.normal(0.0, 1.0, (1500, 6))
    shifted = rng.normal(3.0, 1.0, (300, 6))  # a source that looks like no other
    desc = np.concatenate([near, shifted])
    sources = np.array(["a"] * 750 + ["c"] * 750 + ["b"] * 300)  # a and c look alike
    folds = rng.integers(0, 5, len(desc))
    data, entry, ratio = feature_check.fit(model, desc, folds, sources, log=lambda _: None)
    assert data.startswith(b"PK") and entry["model_sha256"] == model.sha256
    assert entry["output"] == "act_3" and entry["layer"] == "stage4"
    assert 0.99 <= float((ratio <= 1.0).mean()) <= 0.999  # the 99.6% quantile, held out
    left_out = entry["new_source_acceptance"]
    assert set(left_out) == {"a", "b", "c"} and left_out["b"]["n"] == 300
    assert (
        left_out["b"]["accepted"] < 0.5 < min(left_out["a"]["accepted"], left_out["c"]["accepted"])
    )


def _subset(root: Path, name: str, every: int) -> None:
    """A small copy of a data set of ../shared/data: every ``every``-th row, images linked."""
    src = SHARED / name
    (root / name).mkdir(parents=True)
    with open(src / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(root / name / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[::every])
    for folder in {Path(r["path"]).parts[0] for r in rows}:
        (root / name / folder).symlink_to(src / folder)


@pytest.mark.slow
def test_lunglens_train_ood_fits_both_checks_and_seals_them(tmp_path: Path) -> None:
    from lunglens.models.manifest import ModelManifest
    from lunglens.training import ood

    data = tmp_path / "data"
    _subset(data, "ct-covid-binary", 8)
    _subset(data, "cxr-3class", 4)
    models = _models_copy(tmp_path)
    before = ModelManifest.read(models / "modality-check" / "manifest.json")
    ood.run(data, models, log=lambda _: None)
    after = ModelManifest.read(models / "modality-check" / "manifest.json")  # sealed
    assert after.version != before.version and after.feature_check is not None
    block = after.feature_check
    assert block["file"] == "ct_features.npz" and block["model"] == "efficientnet-lite-ct"
    for key in ("heldout_acceptance", "gate_and_check_new_source_acceptance"):
        assert set(block[key]) >= {"ct-covid-binary/sars-cov-2-ct", "ct-covid-binary/ct-512"}
    verdict = check_chest(load_scan(CHEST_CT), models)  # the refitted gate loads and runs
    assert verdict.accepted and verdict.distance is not None


def test_a_named_ct_model_gets_the_feature_check_on_an_image_routing_would_not_give_it(
    tmp_path: Path,
) -> None:
    """A plain chest X-ray that the modality check takes for CT while the learned check's
    nearest set is X-ray: routing refuses it as uncertain, but a CT model named by the user
    used to score it (P 0.52, flagged) without the CT feature check. It is now refused."""
    from lunglens.batch import score
    from lunglens.errors import ModalityUncertain, NotChestImage
    from lunglens.inference import classify_scan

    path = SHARED / "cxr-3class" / "normal" / "normal-threeway-0036.jpg"
    scan = load_scan(path)
    verdict = check_chest(scan, MODELS)
    assert verdict.accepted and verdict.nearest == "cxr"
    with pytest.raises(ModalityUncertain):
        classify_scan(scan)  # automatic routing: the two opinions disagree
    with pytest.raises(NotChestImage, match="to the CT model efficientnet-lite-ct"):
        classify_scan(scan, get_model("efficientnet-lite-ct", MODELS))
    out = tmp_path / "rows.csv"
    list(score([path], get_model("efficientnet-lite-ct", MODELS), out, audit=False))
    with open(out, newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["status"] == "error" and "efficientnet-lite-ct (feature distance" in row["error"]
    assert not row["p_covid"]


def test_xrays_need_no_ct_model_and_a_replaced_ct_model_is_seen_at_once(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    for name in ("modality-check", "efficientnet-lite-cxr"):
        shutil.copytree(MODELS / name, models / name)
    for path in sorted(SAMPLES.glob("cxr-*")):  # the CT feature check never loads for X-rays
        assert check_chest(load_scan(path), models).accepted, path
    with pytest.raises(ModelRefused, match="needs the model 'efficientnet-lite-ct'"):
        check_chest(load_scan(CHEST_CT), models)
    shutil.copytree(MODELS / "efficientnet-lite-ct", models / "efficientnet-lite-ct")
    assert check_chest(load_scan(CHEST_CT), models).accepted
    # the CT model is replaced while the app runs: its features no longer fit the statistics
    folder = models / "efficientnet-lite-ct"
    onnx = folder / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")  # trailing bytes: still a loadable model
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    import hashlib

    manifest["sha256"] = hashlib.sha256(onnx.read_bytes()).hexdigest()
    rewrite_manifest(folder, manifest)
    with pytest.raises(ModelRefused, match="was fitted on efficientnet-lite-ct"):
        check_chest(load_scan(CHEST_CT), models)


def test_a_padded_xray_is_left_to_routing_not_called_a_ct_slice(tmp_path: Path) -> None:
    """An X-ray on a black frame (a quarter of its size each side): the learned check's nearest
    set is CT but the modality check says X-ray. The gate used to run the CT check on it and
    refuse it as "not a chest CT slice"; routing now refuses it as uncertain, with its advice
    to name the model, and an X-ray model named for it scores it."""
    from lunglens.errors import ModalityUncertain
    from lunglens.inference import classify_scan

    grey = np.asarray(Image.open(SHARED / "cxr-3class/covid/covid-ieee8023-0052.jpg").convert("L"))
    h, w = grey.shape
    framed = np.zeros((h + 2 * (h // 4), w + 2 * (w // 4)), np.uint8)
    framed[h // 4 : h // 4 + h, w // 4 : w // 4 + w] = grey
    path = tmp_path / "padded.png"
    Image.fromarray(framed).save(path)
    scan = load_scan(path)
    verdict = check_chest(scan, MODELS)
    assert verdict.accepted and verdict.nearest == "ct", verdict
    with pytest.raises(ModalityUncertain, match="says it looks like a chest X-ray"):
        classify_scan(scan)
    result = classify_scan(scan, get_model("efficientnet-lite-cxr", MODELS), with_cam=False)
    assert 0.0 <= result.positive_prob <= 1.0


def test_refusal_numbers_never_print_equal() -> None:
    """A refusal once read "feature distance 17.7 > 17.7"."""
    assert gate_module._pair(25.2, 17.7) == "25.2 > 17.7"
    assert gate_module._pair(17.72, 17.706) == "17.72 > 17.71"
    assert gate_module._pair(17.7061, 17.706) == "17.7061 > 17.7060"


def _count_own_passes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Wrap the feature check's distance function: the list gets ``True`` for each call that
    ran the CT model itself, ``False`` for one judged on a layer output the caller had."""
    from lunglens.inference import gate_feature_check as gfc

    passes: list[bool] = []
    real = gfc.feature_ratios

    def counting(
        scan: object, chk: object, activations: object = None, descriptors: object = None
    ) -> object:
        passes.append(activations is None and descriptors is None)
        return real(scan, chk, activations, descriptors)  # type: ignore[arg-type]

    monkeypatch.setattr(gfc, "feature_ratios", counting)
    monkeypatch.setattr(gate_module, "feature_ratios", counting)
    return passes


def test_one_image_scored_by_the_ct_model_is_judged_on_its_own_scoring_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """classify_scan judges the CT feature check on the layer output of the scoring call
    itself (one image, CAM wanted): the same distance as the check's own pass, the same
    refusal, and no second pass of the CT model."""
    from lunglens.errors import NotChestImage
    from lunglens.inference import classify_scan

    head = load_scan(_png_export(HEAD_CT[0], tmp_path / "head.png"))
    chest = load_scan(SAMPLES / "ct-covid-mosmed-0001.jpg")
    info = modality_checker(MODELS)
    assert info is not None
    check = load_feature_check(info, MODELS)
    assert check is not None
    own = {p.name: feature_ratios(load_scan(p), check)[0][0] for p in (tmp_path / "head.png",)}
    ct = get_model("efficientnet-lite-ct", MODELS)
    for with_cam in (False, True):  # separate pass / the scoring pass
        with pytest.raises(NotChestImage, match="feature distance") as err:
            classify_scan(head, ct, with_cam=with_cam)
        assert f"{own['head.png']:.1f}" in str(err.value)
    passes = _count_own_passes(monkeypatch)
    fused = classify_scan(chest, ct, with_cam=True)
    assert passes == [False]  # judged once, on the scoring pass's output
    passes.clear()
    alone = classify_scan(chest, ct, with_cam=False)
    assert passes == [True]
    assert abs(fused.positive_prob - alone.positive_prob) < 1e-6


def test_fused_and_separate_passes_give_the_same_distance_and_only_for_the_fitted_folder(
    tmp_path: Path,
) -> None:
    """The scoring call's stage-4 output stands in for the check's own pass only for the very
    model folder the check was fitted on: a copy of the same ONNX file with another input
    contract computes other features (a review found 7.75 vs 11.11)."""
    from lunglens.inference import classify_scan
    from lunglens.inference.classify import _gate_and_route
    from lunglens.inference.view import predict_image

    info = modality_checker(MODELS)
    assert info is not None
    check = load_feature_check(info, MODELS)
    assert check is not None
    engine = gate_module.get_engine(check.model)
    for path in (SAMPLES / "ct-covid-mosmed-0001.jpg", SAMPLES / "ct-dicom-chest-j2k.dcm"):
        scan = load_scan(path)
        alone = feature_ratios(scan, check)[0]
        out = predict_image(engine, scan.image[0], ("probs", "cam", check.output), exact=True)
        fused = feature_ratios(scan, check, out[check.output])[0]
        np.testing.assert_allclose(fused, alone, rtol=1e-6)
    models = tmp_path / "models"
    shutil.copytree(MODELS, models)
    copy = models / "ct-copy"
    shutil.copytree(models / "efficientnet-lite-ct", copy)
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    manifest["name"], manifest["default_for_modality"] = "ct-copy", False
    manifest["input"]["preprocessing"] = {"crop": "none", "intensity": "none"}
    rewrite_manifest(copy, manifest)
    scan = load_scan(SAMPLES / "ct-covid-mosmed-0001.jpg")
    *_, judged = _gate_and_route(scan, get_model("ct-copy", models), True, True, True)
    assert judged  # on its own pass, not on the copy's features
    *_, judged = _gate_and_route(scan, get_model("efficientnet-lite-ct", models), True, True, True)
    assert not judged  # left to the scoring pass
    assert classify_scan(scan, get_model("ct-copy", models)).positive_prob >= 0.0


def test_cli_classify_refuses_an_exported_head_ct_slice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lunglens.cli import EXIT_BAD_INPUT, main

    png = _png_export(HEAD_CT[1], tmp_path / "head.png", 40.0, 400.0)  # soft-tissue window
    for extra in ([], ["--model", "efficientnet-lite-ct"], ["--model", "squeezenet-light-ct"]):
        code = main(["--models-dir", str(MODELS), "classify", str(png), *extra])
        out = capsys.readouterr().out
        assert code == EXIT_BAD_INPUT, (extra, out)
        assert "refused:" in out and "to the CT model efficientnet-lite-ct" in out


def test_batch_judges_one_image_on_its_scoring_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch scoring with the CT model the check was fitted on judges a single image on the
    stage-4 output of the scoring pass itself (no pass of its own): the same refusal and the
    same probability as ``classify_scan``."""
    from lunglens.batch import score
    from lunglens.inference import classify_scan

    folder = tmp_path / "in"
    folder.mkdir()
    _png_export(HEAD_CT[0], folder / "head.png")
    shutil.copy(SAMPLES / "ct-covid-mosmed-0001.jpg", folder / "chest.jpg")
    ct = get_model("efficientnet-lite-ct", MODELS)
    want = classify_scan(load_scan(folder / "chest.jpg"), ct)
    passes = _count_own_passes(monkeypatch)
    out = tmp_path / "r.csv"
    list(score([folder], ct, out, audit=False, models_dir=MODELS))
    with open(out, newline="") as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    assert passes == [False, False]  # both judged, neither by a pass of its own
    head, chest = rows["head.png"], rows["chest.jpg"]
    assert head["status"] == "error" and "feature distance" in head["error"]
    assert not head["p_covid"]
    assert chest["status"] == "ok" and abs(float(chest["p_covid"]) - want.positive_prob) < 1e-5
