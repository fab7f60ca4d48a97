"""Train and ship the image-level modality check (``models/modality-check/``): CT slice or X-ray?

Why: plain PNG/JPEG files carry no DICOM ``Modality`` (0008,0060), and headers can be wrong
(secondary captures, ``OT``), so the app routes plain images by this check and warns when the
pixels disagree with the header or with the chosen model (issue #7).

Data: the CT slices of ``ct-covid-binary`` and the X-rays of ``cxr-3class`` relabelled by
modality, with each set's own patient ``group`` and ``fold`` (group-wise 5-fold CV: test fold k,
validation fold k+1, three folds train). Both sets mix sources with distinct looks, so accuracy
is reported per source, and the real DICOM files of ``../shared/data/dicom`` (CT, CR, DX, never
seen in training, rendered by the app's loader) are an external check written to the manifest.

``lunglens-train modality-check`` reproduces it (about a minute per fold on 2 CPU cores).
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from lunglens.io import SCORED_MODALITIES, Modality
from lunglens.models.hashing import sha256_of
from lunglens.models.manifest import MODALITY_CHECK, ModelManifest
from lunglens.training.augment import AugmentConfig
from lunglens.training.data import ImageSet, Record, load_records, read_manifest
from lunglens.training.device import setup_runtime
from lunglens.training.export import export_onnx, input_contract
from lunglens.training.metrics import classification_report, mean_ci
from lunglens.training.train import TrainConfig, load_best, predict_probs, train_run

NAME = MODALITY_CHECK
#: The labels, in the order of the network's outputs (``probs[:, 1]`` is P(X-ray)).
CLASSES: list[str] = [m.value for m in SCORED_MODALITIES]
#: data set (under the shared data root) -> modality label
SETS = {"ct-covid-binary": Modality.CT.value, "cxr-3class": Modality.CXR.value}
#: DICOM Modality (0008,0060) -> label, for the external check
DICOM_MODALITY = {"CT": Modality.CT.value, "CR": Modality.CXR.value, "DX": Modality.CXR.value}
#: The app warns only when the check is at least this sure (see lunglens.inference.modality).
WARN_PROBABILITY = 0.9


def records(data_root: Path) -> list[Record]:
    """Both manifests' rows relabelled by modality; groups and sources prefixed by data set."""
    out: list[Record] = []
    for name, modality in SETS.items():
        for r in read_manifest(data_root / name / "manifest.csv"):
            out.append(
                replace(r, label=modality, source=f"{name}/{r.source}", group=f"{name}/{r.group}")
            )
    return out


def config(epochs: int) -> TrainConfig:
    """The recipe. Monitored on validation *loss*, not AUC: CT vs X-ray reaches AUC 1.0 within
    an epoch or two, so AUC cannot tell checkpoints apart, while the app thresholds the
    probability (``warn_probability``) and needs it calibrated. Wide intensity and geometry
    augmentation: DICOM renderings (full field of view, lung window) look unlike the JPEG
    training sets: monitored on AUC with the default augmentation, the model is only 75-85%
    sure of the real DICOM CT slices."""
    return TrainConfig(
        arch="modality-net",
        size=64,
        epochs=epochs,
        min_epochs=max(1, epochs // 2),
        patience=4,
        batch_size=64,
        lr=2e-3,
        monitor="loss",
        augment=AugmentConfig(
            rotate_deg=15.0,
            shift=0.1,
            scale=(0.8, 1.25),
            shear_deg=8.0,
            hflip=0.5,
            noise_std=0.03,
            brightness=0.2,
            contrast=0.35,
        ),
    )


def external_check(onnx_path: Path, dicom_root: Path, size: int) -> list[dict]:
    """Predict every CT/CR/DX file under ``dicom_root`` with the exported model (onnxruntime)."""
    import pydicom

    from lunglens.errors import ScanError
    from lunglens.inference.engine import open_session
    from lunglens.io import load_scan
    from lunglens.preprocess import to_model_input

    sess = open_session(onnx_path)  # as the app opens it
    rows = []
    for path in sorted(dicom_root.rglob("*.dcm")):
        try:
            modality = pydicom.dcmread(path, stop_before_pixels=True).get("Modality", "")
            truth = DICOM_MODALITY.get(str(modality))
            if truth is None:
                continue
            scan = load_scan(path)
        except (ScanError, pydicom.errors.InvalidDicomError):
            continue
        x = to_model_input(scan.image[scan.n_slices // 2], (size, size))
        p = sess.run(["probs"], {"image": x})[0][0]
        rows.append(
            dict(
                file=str(path.relative_to(dicom_root)),
                dicom_modality=str(modality),
                predicted=CLASSES[int(p.argmax())],
                p_cxr=float(p[1]),
                correct=CLASSES[int(p.argmax())] == truth,
            )
        )
    return rows


def run(
    data_root: Path,
    models_dir: Path,
    workdir: Path,
    *,
    epochs: int = 16,
    device: str = "auto",
    version: str = "1.0.0",
    log=print,
) -> Path:
    """Cross-validate, train the final model, export it and write ``models/modality-check/``."""
    rt = setup_runtime(device)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = config(epochs)
    t0 = time.time()
    ds: ImageSet = load_records(records(data_root), cfg.size, CLASSES)
    log(f"{NAME}: decoded {len(ds.labels)} images at {cfg.size}px in {time.time() - t0:.0f}s")
    folds = np.array([r.fold for r in ds.records])
    sources = ds.sources
    reports, pooled = [], np.zeros((len(ds.labels), 2), np.float32)
    cv_seconds = 0.0
    for k in range(5):
        vf = (k + 1) % 5
        tr = np.flatnonzero((folds != k) & (folds != vf))
        facts = train_run(ds, tr, np.flatnonzero(folds == vf), cfg, rt, workdir / f"fold{k}", log)
        cv_seconds += facts["seconds"]
        model = load_best(workdir / f"fold{k}", cfg.arch, 2).to(rt.device)
        te = np.flatnonzero(folds == k)
        pooled[te] = predict_probs(model, ds.images[te], rt)
        reports.append(classification_report(ds.labels[te], pooled[te], CLASSES, 1, 0.5))
    acc = mean_ci([r["accuracy"] for r in reports])
    per_source = {
        s: dict(
            n=int((sources == s).sum()),
            accuracy=float((pooled[sources == s].argmax(1) == ds.labels[sources == s]).mean()),
        )
        for s in sorted(set(sources))
    }
    sens = {c: mean_ci([r["per_class"][c]["sensitivity"] for r in reports]) for c in CLASSES}
    log(f"{NAME}: CV accuracy {acc['mean']:.4f} ({acc['lo']:.4f}-{acc['hi']:.4f})")

    val = 4
    tr = np.flatnonzero(folds != val)
    final = train_run(ds, tr, np.flatnonzero(folds == val), cfg, rt, workdir / "final", log)
    model = load_best(workdir / "final", cfg.arch, 2)
    out = models_dir / NAME
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    export = export_onnx(model, cfg.size, onnx_path)
    external = external_check(onnx_path, data_root / "dicom", cfg.size)
    ext_acc = float(np.mean([r["correct"] for r in external])) if external else math.nan
    log(f"{NAME}: external DICOM check {sum(r['correct'] for r in external)}/{len(external)}")
    counts = {c: int((ds.labels == i).sum()) for i, c in enumerate(CLASSES)}
    manifest = ModelManifest(
        name=NAME,
        version=version,
        task=MODALITY_CHECK,
        architecture=(
            "ModalityNet: four stride-2 conv+BatchNorm+ReLU blocks (8-16-32-64), global average "
            "pooling, linear; float32 (too small to gain from INT8)"
        ),
        arch=cfg.arch,
        modality="any",
        labels=tuple(CLASSES),
        positive_label=Modality.CXR.value,
        input=input_contract(cfg.size),
        outputs=dict(probs="[N, 2] softmax over labels", gallery=export["gallery"]),
        file="model.onnx",
        sha256=sha256_of(onnx_path),
        threshold=0.5,
        warn_probability=WARN_PROBABILITY,
        decision_rule=(
            "route a plain image to the family of the more probable label where the "
            "chest-image gate's nearest training set agrees (otherwise no model is chosen and "
            "the image is refused until one is); refuse a plain image to a chosen model of the "
            "other family where the gate agrees, or, without the gate's statistics, at a "
            f"probability >= {WARN_PROBABILITY}; note a DICOM header/image disagreement at >= "
            f"{WARN_PROBABILITY}"
        ),
        export=dict(
            opset=export["opset"],
            graph_rewrites=export["graph_rewrites"],
            probs_max_abs_diff_vs_pytorch=export["probs_max_abs_diff"],
        ),
        metrics=dict(
            scheme=(
                "group-wise 5-fold CV on each data set's `fold` column (test fold k, validation "
                "fold k+1, three folds train); PyTorch fp32; argmax"
            ),
            accuracy=acc,
            sensitivity=sens,
            per_source=per_source,
            external_dicom=dict(accuracy=ext_acc, files=external),
        ),
        training=dict(
            data=f"../shared/data/ct-covid-binary + cxr-3class ({len(ds.labels)} images: {counts})",
            preset=NAME,
            resolution=cfg.size,
            epochs_max=cfg.epochs,
            config={k: v for k, v in asdict(cfg).items() if k != "augment"},
            augmentation=asdict(cfg.augment),
            device=rt.describe(),
            host=platform.processor() or platform.machine(),
            pretrained=False,
            final_model=dict(
                best_epoch=final["best_epoch"],
                epochs_run=final["epochs_run"],
                seconds=final["seconds"],
                val_fold=val,
            ),
            cv_seconds=cv_seconds,
        ),
        intended_use=(
            "Routing and a warning only: tells the app whether an image looks like a chest CT "
            "slice or a chest X-ray. Not a triage model; it says nothing about disease."
        ),
    )
    (out / "manifest.json").write_text(manifest.to_json())
    (out / "MODEL_CARD.md").write_text(card(manifest))
    (workdir / "done.json").write_text(json.dumps({"out": str(out)}))
    return out


def _p_true(f: dict) -> float:
    return f["p_cxr"] if DICOM_MODALITY[f["dicom_modality"]] == Modality.CXR else 1.0 - f["p_cxr"]


def _by_truth(files: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in files:
        out.setdefault(DICOM_MODALITY[f["dicom_modality"]].upper(), []).append(f)
    return out


def card(m: ModelManifest) -> str:
    """The modality check's ``MODEL_CARD.md`` text, from its manifest."""
    met, t = m.metrics or {}, m.training or {}
    acc = met["accuracy"]
    lines = [
        f"# Model card: {m.name} {m.version}",
        "",
        "> Routing aid, not a triage model: it tells CT slices from chest X-rays and nothing else.",
        "",
        "## Model",
        f"- {m.architecture}.",
        f"- Input `image` float32 [N, 1, {t['resolution']}, {t['resolution']}] in [0, 1], the "
        "whole image stretched; output `probs` over `ct`, `cxr`.",
        f"- File `model.onnx`, SHA-256 `{m.sha256}`.",
        f"- Decision: {m.decision_rule}.",
        "",
        "## Training",
        f"- Data: {t['data']}; trained from scratch (no pretrained weights offline).",
        f"- `lunglens-train modality-check`: {t['resolution']} px, up to {t['epochs_max']} epochs, "
        "Adam, label smoothing, class weights, early stopping on validation loss, wide "
        "intensity/geometry augmentation; "
        f"{t['device']}; CV {t['cv_seconds'] / 60:.1f} min.",
        "",
        "## Evaluation",
        f"- {met['scheme']}: accuracy {100 * acc['mean']:.2f}% "
        f"(95% CI {100 * acc['lo']:.2f}-{100 * acc['hi']:.2f}%); sensitivity "
        + ", ".join(f"`{c}` {100 * v['mean']:.2f}%" for c, v in met["sensitivity"].items())
        + ".",
        "",
        "| source | n | accuracy |",
        "|---|---|---|",
        *[f"| {s} | {v['n']} | {100 * v['accuracy']:.1f}% |" for s, v in met["per_source"].items()],
        "",
        f"- External check on the real DICOM files of `../shared/data/dicom` (never trained on, "
        f"rendered by the app's loader with the CT lung window / the X-ray VOI LUT): "
        f"{sum(f['correct'] for f in met['external_dicom']['files'])}/"
        f"{len(met['external_dicom']['files'])} correct; probability of the true label "
        + ", ".join(
            f"{mod} {min(_p_true(f) for f in fs):.2f}-{max(_p_true(f) for f in fs):.2f}"
            for mod, fs in _by_truth(met["external_dicom"]["files"]).items()
        )
        + ". Most CT files are one slice in 16 transfer syntaxes, so they are not independent "
        "evidence; full-field lung-window renderings are less certain than the cropped JPEG "
        "training slices, which is why the check never overrides a DICOM header.",
        "",
        "## Limits",
        "- Only axial chest CT slices and frontal chest X-rays were seen: other body parts, "
        "coronal/sagittal CT reformats, lateral X-rays, photos or screenshots get an arbitrary "
        "answer. So a DICOM header stays in charge of model choice (the check only adds a "
        "note); a plain image has nothing else to say what it is, so there the check decides "
        "the family together with the chest-image gate, and where the two disagree no model "
        "is chosen.",
        "",
        "## Intended use",
        f"- {m.intended_use}",
        "",
    ]
    return "\n".join(lines)
