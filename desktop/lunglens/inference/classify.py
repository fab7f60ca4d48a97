"""Classify one scan: every slice scored, series aggregated, CAM for the most suspicious slice."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from lunglens.inference.aggregate import aggregate, top_slices
from lunglens.inference.decision import decide
from lunglens.inference.engine import BATCH_SIZE, Engine, batches, get_engine
from lunglens.inference.gate import (
    GateVerdict,
    judge_features,
    pending_features,
    require_chest,
)
from lunglens.inference.gate_feature_check import FeatureCheck, separate_descriptors
from lunglens.inference.gate_features import feature_descriptor
from lunglens.inference.modality import (
    ModalityCheck,
    check_modality,
    choose_model,
    find_mismatch,
    modality_notes,
    with_gate,
)
from lunglens.inference.result import ScanResult
from lunglens.inference.slice_filter import (
    left_out,
    left_out_note,
    scoring_outputs,
)
from lunglens.inference.view import predict_image
from lunglens.io.scan import Modality, Scan
from lunglens.models.registry import ModelInfo
from lunglens.preprocess import to_model_input

#: ``progress(done_slices, total_slices)``, called after each batch.
Progress = Callable[[int, int], None]


class Cancelled(Exception):
    """Raised by :func:`classify_scan` when its ``cancel`` event is set."""


def label_index(info: ModelInfo, label: str | int | None) -> int:
    """Index of ``label`` (name or index); ``None`` -> the positive label."""
    if label is None:
        return info.positive_index
    if isinstance(label, int):
        if not 0 <= label < len(info.labels):
            raise ValueError(f"class index {label} out of range for {list(info.labels)}")
        return label
    if label not in info.labels:
        raise ValueError(f"unknown class {label!r}; model {info.name} has {list(info.labels)}")
    return info.labels.index(label)


def slice_probabilities(
    engine: Engine,
    images: np.ndarray,
    *,
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """``[S, C]`` probabilities of every slice of an ``[S, H, W]`` stack, in batches."""
    return _score_slices(engine, images, None, batch_size, progress, cancel)[0]


def _score_slices(
    engine: Engine,
    images: np.ndarray,
    check: FeatureCheck | None,
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`slice_probabilities` and, with a CT feature ``check`` owed, every slice's feature
    descriptor (from the same pass when ``engine`` is the check's model, else from a pass of
    that model on the same batch: :mod:`lunglens.inference.slice_filter`)."""
    info = engine.info
    outputs, exact = scoring_outputs(check, info)
    out = np.empty((images.shape[0], len(info.labels)), np.float32)
    desc: list[np.ndarray] = []
    for part in batches(images.shape[0], batch_size):
        if cancel is not None and cancel.is_set():
            raise Cancelled("classification cancelled")
        batch = to_model_input(images[part], info.input_size, info.preprocessing)
        got = engine.predict(batch, outputs, exact=exact)
        out[part] = got["probs"]
        if check is not None:
            fused = got.get(check.output) if len(outputs) > 1 else None
            desc.append(
                feature_descriptor(fused)
                if fused is not None
                else separate_descriptors(images[part], check)
            )
        if progress is not None:
            progress(part.stop, images.shape[0])
    return out, (np.concatenate(desc) if desc else None)


def result_from_probs(
    info: ModelInfo,
    source: str,
    slice_probs: np.ndarray,
    *,
    modality: str = Modality.UNKNOWN,
    cam_class: str | int | None = None,
    unscored: tuple[int, ...] = (),
) -> ScanResult:
    """Build a :class:`ScanResult` (without CAM) from per-slice probabilities; the slices
    ``unscored`` (0-based, not all of them) are left out of the aggregate, the most suspicious
    slices and the representative one (:mod:`lunglens.inference.slice_filter`)."""
    method, k = info.series_aggregation
    kept = np.setdiff1d(np.arange(slice_probs.shape[0]), np.asarray(unscored, int))
    probs = aggregate(slice_probs[kept], info.positive_index, method, k)
    # a series is judged by the threshold calibrated on patients (groups of 1-40 slices), a
    # slice by the slice one; a series stays a series however few of its slices are scored
    threshold = info.series_threshold if slice_probs.shape[0] > 1 else info.threshold
    prediction, flagged = decide(probs, info, threshold)
    cam_idx = label_index(info, cam_class)
    return ScanResult(
        source=source,
        model=info.name,
        model_version=info.version,
        model_sha256=info.sha256,
        labels=info.labels,
        probs={label: float(p) for label, p in zip(info.labels, probs, strict=True)},
        prediction=prediction,
        positive_label=info.positive_label,
        positive_prob=float(probs[info.positive_index]),
        flagged=flagged,
        threshold=threshold,
        n_slices=int(slice_probs.shape[0]),
        slice_probs=slice_probs,
        top_slices=[int(kept[i]) for i in top_slices(slice_probs[kept], info.positive_index, 3)],
        representative_slice=int(kept[top_slices(slice_probs[kept], cam_idx, 1)[0]]),
        cam_class=info.labels[cam_idx],
        cam_reference=info.cam_reference,
        slice_threshold=info.threshold,
        modality=modality,
        model_modality=info.modality,
        unscored_slices=tuple(unscored),
    )


def _score_and_explain(
    scan: Scan,
    engine: Engine,
    with_cam: bool,
    cam_class: str | int | None,
    progress: Progress | None,
    cancel: threading.Event | None,
    batch_size: int,
    owed: FeatureCheck | None = None,
    judged: bool = True,
) -> ScanResult:
    """The scoring part of :func:`classify_scan`: every slice, then the representative
    slice's CAM (for a single image both come from one call). ``owed``: the gate's CT feature
    check for the chosen model; not yet ``judged`` (one image, CAM wanted, scored by the
    check's model), it is judged on the layer output of that same call. A series is scored
    from its slices that pass it (:mod:`lunglens.inference.slice_filter`)."""
    info = engine.info
    single_cam = None
    unscored: tuple[int, ...] = ()
    fused = None if judged else owed
    if scan.n_slices == 1 and with_cam:  # one call for both outputs: the common case
        extra = (fused.output,) if fused is not None else ()
        out = predict_image(engine, scan.image[0], ("probs", "cam", *extra), exact=bool(extra))
        if fused is not None:  # the gate's last check, from this very pass: refuse, or go on
            found = judge_features(scan, GateVerdict(True), fused, out[fused.output])
            if not found.accepted:
                raise found.error(scan.source)
        probs, single_cam = out["probs"], out["cam"][0].astype(np.float32)
        if progress is not None:
            progress(1, 1)
    else:
        series = owed if scan.n_slices > 1 else None
        probs, desc = _score_slices(engine, scan.image, series, batch_size, progress, cancel)
        if series is not None and desc is not None:
            unscored = left_out(series, desc, scan.source)
    result = result_from_probs(
        info, scan.source, probs, modality=scan.modality, cam_class=cam_class, unscored=unscored
    )
    if owed is not None and (note := left_out_note(owed, unscored, scan.n_slices)):
        result.notes.append(note)
    if single_cam is not None:
        result.cam = single_cam
    elif with_cam:
        rep = scan.image[result.representative_slice]
        result.cam = predict_image(engine, rep, ("cam",))["cam"][0].astype(np.float32)
    return result


def _gate_and_route(
    scan: Scan, info: ModelInfo | None, gate: bool, modality_check: bool, with_cam: bool
) -> tuple[ModelInfo, ModalityCheck | None, FeatureCheck | None, bool]:
    """The gate, the modality check and the model choice of :func:`classify_scan`: the model,
    the check, the CT feature check owed (``None``: not owed) and whether it was judged here
    (else the scoring pass judges it on its own layer output)."""
    models_dir = info.path.parent if info is not None else None
    # the CT feature check waits for the model choice: it is judged for the family the chosen
    # model scores, and for one image scored by the CT model itself, from the scoring pass
    verdict = require_chest(scan, models_dir, features=False) if gate else None
    check = None
    if modality_check:  # the gate's nearest training modality is its second opinion
        check = with_gate(check_modality(scan, models_dir), verdict)
    if info is None:
        info = choose_model(scan, check=check)
    elif (mismatch := find_mismatch(scan, info, check)) is not None:
        # a scan of the other modality gets no score from a model it was not trained on: a
        # "flagged" headline from it would read as a triage decision (batch: an error row)
        raise mismatch.error(scan.source)
    if verdict is not None and (owed := pending_features(scan, verdict, info, models_dir)):
        if scan.n_slices == 1 and with_cam and owed.model.path == info.path:
            return info, check, owed, False  # judged on the scoring pass's own layer output
        if not (found := judge_features(scan, verdict, owed)).accepted:
            raise found.error(scan.source)
        return info, check, owed, True
    return info, check, None, True


def classify_scan(
    scan: Scan,
    info: ModelInfo | None = None,
    *,
    with_cam: bool = True,
    cam_class: str | int | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    batch_size: int = BATCH_SIZE,
    modality_check: bool = True,
    gate: bool = True,
) -> ScanResult:
    """Score every slice of ``scan`` and explain the most suspicious one.

    Parameters
    ----------
    scan
        A loaded scan (:func:`lunglens.io.load_scan`).
    info
        The model; default: :func:`lunglens.inference.modality.choose_model` (the DICOM
        modality, else the image-level check for plain images).
    with_cam
        Also compute the class activation maps of the representative slice (one extra call
        on one slice; batch scoring turns this off).
    cam_class
        Label (or index) whose most probable slice is the representative one; default: the
        positive label.
    progress, cancel
        ``progress(done, total)`` after each batch of slices (GUI progress bar); setting
        ``cancel`` stops between batches with :class:`Cancelled`.
    modality_check
        Run the image-level modality check (:mod:`lunglens.inference.modality`) from the
        model's folder, joined with the gate's nearest training modality: it routes plain
        images when ``info`` is None, refuses a plain image of the other family than ``info``'s
        and notes a DICOM header the pixels contradict.
    gate
        Refuse a scan that is not a chest CT slice or chest X-ray before any model runs
        (:mod:`lunglens.inference.gate`); only tests of the scoring itself turn it off.

    Raises
    ------
    NotChestImage
        The gate refused the scan (the message gives the reason); no score exists.
    ModalityMismatch
        ``info`` is a model for the other modality than the scan's (its DICOM header, or for a
        plain image the pixel check with the gate agreeing:
        :func:`~lunglens.inference.modality.find_mismatch`); no score exists.
    ModalityUncertain
        No ``info`` given, and the check and the gate disagree on what a plain image is
        (:func:`~lunglens.inference.modality.routing_modality`); no score exists.
    ModelNotFound
        No model given and none fits the scan's modality.
    ModelRefused
        The model failed its integrity check.
    """
    info, check, owed, judged = _gate_and_route(scan, info, gate, modality_check, with_cam)
    label_index(info, cam_class)  # fail fast on a bad label, before any work
    start = time.perf_counter()
    result = _score_and_explain(
        scan,
        get_engine(info),
        with_cam,
        cam_class,
        progress,
        cancel,
        batch_size,
        owed,
        judged,
    )
    # what loading noticed (a slice that could not be read, a series left out) belongs to the
    # result as much as how the modality was decided: every output shows the result's notes
    result.notes.extend([*scan.notes, *modality_notes(scan, check)])
    result.elapsed_ms = (time.perf_counter() - start) * 1000.0
    return result
