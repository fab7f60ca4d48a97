"""The scoring side of batch scoring: decoded scans in, one results row per scan out.

Decoding workers (:mod:`lunglens.batch.runner`) hand over :class:`Decoded` scans, each with the
model that scores it; :func:`score_decoded` runs all their slices through each model's engine in
batches on the main thread and turns the probabilities into rows. A CT series is scored from its
slices that pass the chest-image gate's CT feature check, and one image the check's own model
scores is judged on that same pass, as in ``classify_scan``
(:mod:`lunglens.inference.slice_filter`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from lunglens.batch.rows import error_row, error_text, result_row
from lunglens.errors import NotChestImage
from lunglens.inference.classify import result_from_probs
from lunglens.inference.engine import Engine
from lunglens.inference.gate import GateVerdict, judge_features
from lunglens.inference.gate_feature_check import FeatureCheck
from lunglens.inference.gate_features import feature_descriptor
from lunglens.inference.slice_filter import left_out, left_out_note
from lunglens.io.scan import Scan
from lunglens.models.registry import ModelInfo
from lunglens.preprocess import to_model_input


@dataclass
class Decoded:
    """One scan as a decoding worker hands it over: loaded, gated and routed (``scan`` is
    ``None`` and ``error`` says why when any of that failed: an error row)."""

    key: str
    scan: Scan | None
    error: str
    decode_ms: float
    #: The model that scores it (``None`` when the model could not be decided).
    info: ModelInfo | None = None
    #: What the row's reader must know (loading and modality notes), as ``classify`` gives.
    notes: tuple[str, ...] = ()
    #: The CT feature check the scan owes, and whether the scoring pass judges it on its own
    #: layer output (``pending``: the check's model scores; one image is refused there, a
    #: series loses the slices that fail) or decoding did (``unscored``: the series' slices
    #: that failed, found by a pass of the check's model). ``verdict``: the gate's, for it.
    check: FeatureCheck | None = None
    pending: bool = False
    unscored: tuple[int, ...] = ()
    verdict: GateVerdict | None = None


def run_group(
    engine: Engine, group: list[Decoded], batch_size: int
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """All slices of ``group`` (scans of one model) in batches: ``[S, C]`` probabilities, the
    feature descriptors when a scan of the group owes the CT feature check to this very pass
    (pending: the check's own model scores them), and ms per slice."""
    info = engine.info
    check = next((it.check for it in group if it.pending), None)
    # pending means the check's own model scores (decided on the scan's chosen model: the
    # engine's info may be the same folder reached by another path)
    outputs = ("probs",) if check is None else ("probs", check.output)
    slices = [im for it in group if it.scan is not None for im in it.scan.image]
    start = time.perf_counter()
    probs = np.empty((len(slices), len(info.labels)), np.float32)
    desc: list[np.ndarray] = []
    for lo in range(0, len(slices), batch_size):
        chunk = to_model_input(slices[lo : lo + batch_size], info.input_size, info.preprocessing)
        got = engine.predict(chunk, outputs, exact=check is not None)
        probs[lo : lo + len(chunk)] = got["probs"]
        if check is not None:
            desc.append(feature_descriptor(got[check.output]))
    per_slice = (time.perf_counter() - start) * 1000.0 / max(1, len(slices))
    return probs, (np.concatenate(desc) if desc else None), per_slice


def judged(it: Decoded, desc: np.ndarray | None) -> tuple[int, ...]:
    """The slices of ``it`` left out of its score, after the CT feature check it owes to the
    scoring pass (``desc``: its slices' descriptors from that pass): one image refused, or a
    series' slices that fail.

    Raises
    ------
    NotChestImage
        The image, or every slice of the series, fails the check.
    """
    if not it.pending or it.scan is None:
        return it.unscored
    if it.check is None or desc is None:  # never judged: fail closed, never score unchecked
        raise RuntimeError(f"{it.key}: the CT feature check owed to the scoring pass did not run")
    if it.scan.n_slices > 1:
        return left_out(it.check, desc, it.key)
    found = judge_features(it.scan, it.verdict or GateVerdict(True), it.check, descriptors=desc)
    if not found.accepted:
        raise found.error(it.scan.source)
    return ()


def score_decoded(
    engines: dict[str, Engine], items: list[Decoded], batch_size: int, include_ids: bool
) -> list[dict[str, str]]:
    """Run all slices of ``items`` through their model's engine in batches; one row per item,
    in the order of ``items``. A series is scored from its slices that pass the CT feature
    check (:mod:`lunglens.inference.slice_filter`), as in ``classify_scan``."""
    rows: dict[int, dict[str, str]] = {}
    by_model: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        if it.scan is None or it.info is None:
            rows[i] = error_row(it.key, it.info, it.error, it.decode_ms)
        else:
            by_model.setdefault(it.info.name, []).append(i)
    for name, idx in by_model.items():
        info = engines[name].info
        group = [items[i] for i in idx]
        probs, desc, per_slice = run_group(engines[name], group, batch_size)
        offset = 0
        for i, it in zip(idx, group, strict=True):
            assert it.scan is not None
            n, part = it.scan.n_slices, slice(offset, offset + it.scan.n_slices)
            offset += n
            took = it.decode_ms + per_slice * n
            try:
                unscored = judged(it, desc[part] if desc is not None else None)
            except (NotChestImage, RuntimeError) as exc:  # refused, or not checked: an error row
                rows[i] = error_row(it.key, info, error_text(exc), took)
                continue
            result = result_from_probs(
                info, it.key, probs[part], modality=it.scan.modality, unscored=unscored
            )
            if it.check is not None and (note := left_out_note(it.check, unscored, n)):
                result.notes.append(note)
            result.notes.extend(it.notes)
            pid = it.scan.metadata.get("patient_id", "") if include_ids else None
            rows[i] = result_row(result, it.key, info, took, pid)
    return [rows[i] for i in range(len(items))]
