"""Fit the chest-image gate's statistics (``models/modality-check/ood.npz``).

``lunglens-train ood`` loads every training image of ``ct-covid-binary`` and ``cxr-3class`` with
the app's own scan loader, computes :func:`lunglens.inference.gate.descriptor` with the shipped
``modality-check`` model, fits one Gaussian per modality and sets each modality's threshold on
held-out folds (the data sets' group-wise ``fold`` column) so that >= 99.5 % of real chest images
are accepted. It writes ``ood.npz`` next to the model and records its SHA-256, the settings and
the measured acceptance in the model's ``manifest.json`` (``ood``); the app verifies that hash
before it uses the file. Needs numpy and onnxruntime only (no torch): run it again whenever the
modality-check model or :mod:`lunglens.preprocess` changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from lunglens.inference.engine import get_engine
from lunglens.inference.gate import DESCRIPTOR_VERSION, descriptor, fit_stats
from lunglens.io import Modality
from lunglens.models.hashing import sha256_bytes
from lunglens.models.manifest import MODALITY_CHECK, ModelManifest
from lunglens.models.registry import MANIFEST, get_model, load_manifest
from lunglens.preprocess import to_model_input
from lunglens.training import feature_check
from lunglens.training.data import load_unit_image, read_manifest

#: Data set folder -> modality label of the gate.
DATASETS = {"ct-covid-binary": Modality.CT.value, "cxr-3class": Modality.CXR.value}
STATS_FILE = "ood.npz"


def _rates(ok: np.ndarray, groups: np.ndarray) -> dict[str, dict[str, float | int]]:
    return {
        str(g): {"n": int((groups == g).sum()), "accepted": float(ok[groups == g].mean())}
        for g in sorted(set(groups.tolist()))
    }


#: Share of held-out chest images each modality's threshold accepts. Raising CT's to 99.8% or
#: 99.9%, with the CT feature check after it, accepts more chest CT from a source left out of
#: fitting but scores a grey photograph (scikit-image's "camera") that 99.5% refuses
#: (docs/measurements.md): the feature check adds refusals on top of this one, it replaces none.
ACCEPTANCE = {Modality.CT.value: 0.995, Modality.CXR.value: 0.995}
#: The CT model whose features the CT feature check compares.
FEATURE_MODEL = "efficientnet-lite-ct"


def run(
    data_root: Path,
    models_dir: Path,
    *,
    acceptance: Mapping[str, float] = ACCEPTANCE,
    shrink: float = 0.01,
    feature_model: str | None = FEATURE_MODEL,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fit, write ``ood.npz`` (and ``ct_features.npz`` when ``feature_model`` is set) and
    update the modality-check manifest; return the ``ood`` entry."""
    folder = models_dir / MODALITY_CHECK
    info = load_manifest(folder)
    engine = get_engine(info)
    records, modality, dataset = [], [], []
    for name, label in DATASETS.items():
        rows = read_manifest(data_root / name / "manifest.csv")
        records += rows
        modality += [label] * len(rows)
        dataset += [name] * len(rows)
    log(f"{len(records)} training images")
    t0 = time.perf_counter()
    prep = info.preprocessing
    batch = np.stack(
        [to_model_input(load_unit_image(r.path), info.input_size, prep)[0] for r in records]
    )
    desc = np.concatenate(
        [descriptor(engine, batch[i : i + 256]) for i in range(0, len(batch), 256)]
    )
    log(f"descriptors {desc.shape} in {time.perf_counter() - t0:.1f} s")
    mod = np.array(modality)
    folds = np.array([r.fold for r in records])
    labels = tuple(DATASETS.values())
    stats, heldout = fit_stats(
        desc, mod, folds, labels=labels, acceptance=dict(acceptance), shrink=shrink
    )
    data = stats.to_bytes()
    (folder / STATS_FILE).write_bytes(data)
    ok = heldout <= 1.0
    sources = np.array([f"{d}/{r.source}" for d, r in zip(dataset, records, strict=True)])
    shares = ", ".join(f"{acceptance[lab]:.1%} ({lab})" for lab in labels)
    entry: dict[str, Any] = {
        "file": STATS_FILE,
        "sha256": sha256_bytes(data),
        "descriptor_version": DESCRIPTOR_VERSION,
        "method": "Mahalanobis distance per modality (shrunk covariance, "
        f"shrink {shrink}) of lunglens.inference.gate.descriptor; threshold = "
        f"{shares} quantile of held-out distances (group-wise folds)",
        "thresholds": {
            lab: round(float(t), 3) for lab, t in zip(stats.labels, stats.threshold, strict=True)
        },
        "heldout_acceptance": {
            "all": float(ok.mean()),
            "per_dataset": _rates(ok, np.array(dataset)),
            "per_source": _rates(ok, sources),
        },
    }
    check: dict[str, Any] | None = None
    if feature_model is not None:
        ct = mod == Modality.CT.value
        model = get_model(feature_model, models_dir)
        ct_records = [r for r, m in zip(records, ct, strict=True) if m]
        fdesc = feature_check.descriptors(model, ct_records, feature_check.OUTPUT)
        stats_bytes, fitted, ratio = feature_check.fit(
            model, fdesc, folds[ct], sources[ct], log=log
        )
        both = (heldout[ct] <= 1.0) & (ratio <= 1.0)
        fitted["gate_and_check_heldout_acceptance"] = feature_check.accepted_by_group(
            both, sources[ct]
        )
        log(f"chest CT accepted by both checks, held out by fold: {both.mean():.4f}")
        fitted["gate_and_check_new_source_acceptance"] = feature_check.joint_new_source(
            desc[ct],
            fdesc,
            folds[ct],
            sources[ct],
            (acceptance[Modality.CT.value], feature_check.ACCEPTANCE),
        )
        check = feature_check.write(folder, stats_bytes, fitted)
    record_stats(folder, ood=entry, feature_check=check)
    log(f"wrote {folder / STATS_FILE}; held-out acceptance {ok.mean():.4f}")
    for name, r in entry["heldout_acceptance"]["per_dataset"].items():
        log(f"  {name}: {r['accepted']:.4f} of {r['n']}")
    return entry


def _next_version(version: str) -> str:
    """``1.0.0`` -> ``1.0.1``; a version whose last part is not a number gets ``.1``."""
    head, _, last = version.rpartition(".")
    if last.isdigit():
        return f"{head}.{int(last) + 1}" if head else str(int(last) + 1)
    return f"{version}.1"


def record_stats(
    folder: Path, *, ood: dict[str, Any], feature_check: dict[str, Any] | None = None
) -> None:
    """Set the gate's blocks (``ood``, ``feature_check``) of ``folder``'s manifest; every other
    key is written back as read, except the version: new gate statistics decide which images
    are refused, so a changed block raises the last part of the version (``1.0.0`` ->
    ``1.0.1``), and the same name and version always mean the same decisions (the seal covers
    both)."""
    path = folder / MANIFEST
    current = ModelManifest.read(path)
    check = current.feature_check if feature_check is None else feature_check
    changed = current.ood != ood or current.feature_check != check
    version = _next_version(current.version) if changed else current.version
    manifest = replace(current, ood=ood, feature_check=check, version=version)
    path.write_text(manifest.to_json() + "\n", encoding="utf-8")
