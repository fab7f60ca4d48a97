"""Batch scoring: folders in, one durable results row per scan out.

Decoding (PNG/JPEG/DICOM, often the slow part) runs in a pool of ``workers`` threads while the main
thread feeds batches to the single onnxruntime session, so the CPU is never idle waiting for I/O.
Threads rather than processes: the decoders (Pillow, OpenCV, pydicom's pixel handlers) release the
GIL for the heavy work and threads start instantly on Windows laptops. Only a bounded number of
decoded scans is held at a time (see :func:`_lookahead`), so memory does not grow with the size of
the folder.

With a model chosen, every scan is scored by it (a scan of the other modality becomes a
``ModalityMismatch`` error row). In automatic mode (``info=None``, ``lunglens score --model auto``,
the default) each scan goes to its modality's default model
(:func:`lunglens.inference.modality.default_models`): the DICOM Modality (0008,0060) decides, and
for plain images the modality check; one results file then holds rows of several models, each
row naming its model, version, hash and threshold.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lunglens.audit import append_audit
from lunglens.batch.events import BatchEvent, Finished, Progress, Row, Started, Summary
from lunglens.batch.lock import ResultsLock
from lunglens.batch.results_csv import error_code, open_results, utc_now
from lunglens.errors import LungLensError, ModelNotFound, ScanError
from lunglens.inference.classify import result_from_probs
from lunglens.inference.engine import Engine, get_engine
from lunglens.inference.gate import require_chest
from lunglens.inference.modality import check_with, default_models, find_mismatch, plain_check
from lunglens.inference.result import ScanResult
from lunglens.inference.wording import format_threshold, slice_numbers
from lunglens.io.scan import Scan
from lunglens.models.registry import ModelInfo, modality_checker
from lunglens.preprocess import to_model_input

#: ``--model auto``: each scan is scored by its modality's default model.
AUTO = "auto"

#: Slices per onnxruntime call in batch mode.
BATCH_SIZE = 16


@dataclass
class _Decoded:
    key: str
    scan: Scan | None
    error: str
    decode_ms: float
    #: The model that scores it (``None`` when the model could not be decided).
    info: ModelInfo | None = None


def error_text(exc: BaseException) -> str:
    """``"<ErrorCode>: message"`` for the ``error`` column."""
    code = exc.code if isinstance(exc, LungLensError) else type(exc).__name__
    return f"{code}: {exc}"


def _route(
    key: str, scan: Scan, routes: dict[str, ModelInfo], checker: ModelInfo | None
) -> ModelInfo:
    """Automatic mode: the default model of the scan's modality (header, else the pixels)."""
    modality = scan.modality
    how = f"its DICOM modality is {modality.upper()}"
    if modality not in ("ct", "cxr"):
        check = check_with(checker, scan) if checker is not None else None
        if check is None:
            raise ModelNotFound(
                key,
                "plain image without modality information, and no modality check is installed "
                "to tell a CT slice from a chest X-ray",
                "Score it with a chosen model (--model).",
            )
        modality, how = check.modality, f"the image {check.looks_like()}"
    if modality not in routes:
        raise ModelNotFound(
            key,
            f"{how}, but no {modality.upper()} model is installed",
            "Install one or score it with a chosen model (--model).",
        )
    return routes[modality]


def _decode(
    source: object,
    key: str,
    info: ModelInfo | None,
    checker: ModelInfo | None,
    routes: dict[str, ModelInfo] | None = None,
    gate_dir: str | os.PathLike[str] | None = None,
) -> _Decoded:
    from lunglens.io import load_source

    start = time.perf_counter()
    chosen: ModelInfo | None = info
    try:
        scan = load_source(source)  # type: ignore[arg-type]
        require_chest(scan, gate_dir)  # not a chest scan: an error row, no score
        if info is None:
            chosen = _route(key, scan, routes or {}, checker)
        else:
            mismatch = find_mismatch(scan, info, plain_check(checker, scan))
            if mismatch is not None:
                raise mismatch.error(key)
        return _Decoded(key, scan, "", (time.perf_counter() - start) * 1000.0, chosen)
    except Exception as exc:  # a bad file must never stop the run: it becomes an error row
        return _Decoded(key, None, error_text(exc), (time.perf_counter() - start) * 1000.0, chosen)


def _base_row(key: str, info: ModelInfo | None) -> dict[str, str]:
    if info is None:  # automatic mode, and the scan's model could not be decided
        return {"path": key}
    return {
        "path": key,
        "model": info.name,
        "model_version": info.version,
        "model_sha256": info.sha256,
        "threshold": format_threshold(info.threshold),
    }


def result_row(
    result: ScanResult, key: str, info: ModelInfo, elapsed_ms: float, patient_id: str | None = None
) -> dict[str, str]:
    """The CSV row of a successful scan (the ``path`` column is the source key)."""
    row = _base_row(key, info)
    row.update(
        status="ok",
        error="",
        prediction=result.headline,
        flagged="true" if result.flagged else "false",
        threshold=format_threshold(result.threshold),  # a series' own threshold, if calibrated
        n_slices=str(result.n_slices),
        top_slices=";".join(str(n) for n in slice_numbers(result.top_slices)),
        elapsed_ms=f"{elapsed_ms:.1f}",
        scored_at=utc_now(),
    )
    for label in info.labels:
        row[f"p_{label}"] = f"{result.probs[label]:.6f}"
    if patient_id is not None:
        row["patient_id"] = patient_id
    return row


def error_row(
    key: str, info: ModelInfo | None, error: str, elapsed_ms: float = 0.0
) -> dict[str, str]:
    """The CSV row of a scan that could not be scored (model columns empty when unknown)."""
    row = _base_row(key, info)
    row.update(status="error", error=error, elapsed_ms=f"{elapsed_ms:.1f}", scored_at=utc_now())
    return row


def _score_decoded(
    engines: dict[str, Engine], items: list[_Decoded], batch_size: int, include_ids: bool
) -> list[dict[str, str]]:
    """Run all slices of ``items`` through their model's engine in batches; one row per item,
    in the order of ``items``."""
    rows: dict[int, dict[str, str]] = {}
    by_model: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        if it.scan is None or it.info is None:
            rows[i] = error_row(it.key, it.info, it.error, it.decode_ms)
        else:
            by_model.setdefault(it.info.name, []).append(i)
    for name, idx in by_model.items():
        engine = engines[name]
        info = engine.info
        group = [items[i] for i in idx]
        slices = [im for it in group if it.scan is not None for im in it.scan.image]
        start = time.perf_counter()
        probs = np.empty((len(slices), len(info.labels)), np.float32)
        for lo in range(0, len(slices), batch_size):
            chunk = to_model_input(
                slices[lo : lo + batch_size], info.input_size, info.preprocessing
            )
            probs[lo : lo + len(chunk)] = engine.predict(chunk, ("probs",))["probs"]
        per_slice = (time.perf_counter() - start) * 1000.0 / max(1, len(slices))
        offset = 0
        for i, it in zip(idx, group, strict=True):
            assert it.scan is not None
            n = it.scan.n_slices
            result = result_from_probs(
                info, it.key, probs[offset : offset + n], modality=it.scan.modality
            )
            offset += n
            pid = it.scan.metadata.get("patient_id", "") if include_ids else None
            rows[i] = result_row(result, it.key, info, it.decode_ms + per_slice * n, pid)
    return [rows[i] for i in range(len(items))]


def _lookahead(workers: int, batch_size: int, items: int, slices: int) -> int:
    """How many scans may be submitted for decoding ahead of the inference loop.

    Enough single images to decode the next batch while the current one runs
    (``batch_size + 2 * workers``), but only ``workers + 1`` when scans turn out to be series
    (hundreds of slices each), so a folder of CT series never holds more than a few decoded
    series in memory.
    """
    per_item = slices / items if items else 1.0
    wanted = int(np.ceil(batch_size / max(per_item, 1.0))) + 2 * workers
    return max(workers + 1, min(batch_size + 2 * workers, wanted))


def discover(
    paths: Iterable[str | os.PathLike[str]],
    recursive: bool = True,
    ignored: list[str] | None = None,
) -> tuple[list[tuple[str, object]], list[tuple[str, str]]]:
    """Expand ``paths`` into ``(key, source)`` scoring units and ``(key, error text)`` failures.

    Keys are unique: a file reached through two overlapping paths is scored once. Files found
    in folders that hold no image (DICOM SR/KO/DICOMDIR, text files) are not scans: they get no
    row (a study folder with a dose report is not an error) and are described in ``ignored``.
    """
    from lunglens.io import discover_sources

    units: dict[str, object] = {}
    failures: dict[str, str] = {}
    for p in paths:
        notes: list[str] = []
        try:
            sources, errors = discover_sources(Path(p), recursive=recursive, ignored=notes)
        except ScanError as exc:
            failures.setdefault(str(p), error_text(exc))
            continue
        if Path(p).is_file() and not sources and not errors:
            # A file the user named explicitly is never silently skipped (e.g. a DICOM SR):
            # loading it gives the typed reason for its error row.
            failures.setdefault(str(p), _load_error(Path(p)))
        elif ignored is not None:
            ignored.extend(notes)
        for src in sources:
            units.setdefault(src.key, src)
        for key, err in errors:
            failures.setdefault(str(key), error_text(err))
    return list(units.items()), [(k, v) for k, v in failures.items() if k not in units]


def _load_error(path: Path) -> str:
    from lunglens.errors import UnsupportedFile
    from lunglens.io import load_scan

    try:
        load_scan(path)
    except Exception as exc:
        return error_text(exc)
    return error_text(UnsupportedFile(path, "not a scan LungLens can score"))


def score(
    paths: Iterable[str | os.PathLike[str]],
    info: ModelInfo | None,
    out_csv: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    workers: int = 2,
    cancel: threading.Event | None = None,
    batch_size: int = BATCH_SIZE,
    include_ids: bool = False,
    recursive: bool = True,
    audit: bool = True,
    models_dir: str | os.PathLike[str] | None = None,
) -> Iterator[BatchEvent]:
    """Score every scan under ``paths`` into ``out_csv``; yield events as it goes.

    Parameters
    ----------
    paths
        Files and folders; folders are searched recursively and DICOM series grouped
        (:func:`lunglens.io.discover_sources`).
    info
        The model (verified before anything is written), or ``None`` for automatic mode:
        each scan goes to its modality's default model (all verified up front).
    out_csv
        Results CSV (contract columns, see :mod:`lunglens.batch.results_csv`).
    resume
        Skip scans already in ``out_csv`` (after repairing a torn last row).
    overwrite
        Replace an existing ``out_csv``. Without ``resume`` or ``overwrite`` an existing
        non-empty file is refused (:class:`~lunglens.batch.results_csv.ResultsExist`).
    workers
        Decoder threads feeding the single inference session.
    cancel
        When set, no new scans are started; the decoded batch in hand is scored and written,
        then :class:`Finished` is yielded with ``summary.cancelled``.
    include_ids
        Add a ``patient_id`` column (off by default: results files often leave the hospital).
    models_dir
        Where automatic mode looks for models and the modality check (default: the registry's
        search order); with a chosen model, its own folder's parent.

    Yields
    ------
    Started, Row, Progress, Finished
        :class:`Started` once, a :class:`Row` and a :class:`Progress` per scan, and
        :class:`Finished` last.
    """
    t0 = time.perf_counter()
    routes = default_models(models_dir) if info is None else {}
    models = list({m.name: m for m in routes.values()}.values()) if info is None else [info]
    # Every engine is created (and its hash checked) before a file is touched.
    engines = {m.name: get_engine(m) for m in models}
    # The image check for plain images, if any.
    gate_dir = models_dir if info is None else info.path.parent  # where the gate's check lives
    checker = modality_checker(gate_dir)
    if checker is not None:
        get_engine(checker)  # verified like the triage models: a tampered check stops the run
    lock = ResultsLock(out_csv)  # one run per results file (ResultsLocked names the holder)
    lock.acquire()
    try:
        writer = open_results(
            out_csv, models, resume=resume, overwrite=overwrite, include_ids=include_ids
        )
    except BaseException:
        lock.release()
        raise
    path_list = [str(p) for p in paths]
    counts: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    skipped = 0
    ignored_notes: list[str] = []
    cancelled = False
    total = 0
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="lunglens-decode")
    try:
        units, failures = discover(path_list, recursive, ignored_notes)
        skipped = sum(1 for k, _ in units if k in writer.done)
        skipped += sum(1 for k, _ in failures if k in writer.done)
        units = [(k, s) for k, s in units if k not in writer.done]
        failures = [(k, e) for k, e in failures if k not in writer.done]
        total = len(units) + len(failures)
        yield Started(total=total, skipped=skipped, out_csv=writer.path)

        def emit(row: dict[str, str]) -> Iterator[BatchEvent]:
            writer.write(row)
            counts["done"] += 1
            if row["status"] == "ok":
                counts["ok"] += 1
                counts["flagged"] += row["flagged"] == "true"
            else:
                counts["errors"] += 1
                codes[error_code(row["error"])] += 1
            yield Row(row)
            elapsed = time.perf_counter() - t0
            rate = counts["done"] / elapsed if elapsed > 0 else 0.0
            eta = (total - counts["done"]) / rate if rate > 0 else float("inf")
            yield Progress(counts["done"], total, rate, eta)

        for key, err in failures:
            if cancel is not None and cancel.is_set():
                break
            yield from emit(error_row(key, info, err))

        seen_items = seen_slices = 0
        queue: deque[Future[_Decoded]] = deque()
        todo = iter(units)
        pending: list[_Decoded] = []
        pending_slices = 0
        exhausted = False
        while True:
            if cancel is not None and cancel.is_set():
                cancelled = True
            while (
                not cancelled
                and not exhausted
                and len(queue) < _lookahead(workers, batch_size, seen_items, seen_slices)
            ):
                nxt = next(todo, None)
                if nxt is None:
                    exhausted = True
                    break
                queue.append(pool.submit(_decode, nxt[1], nxt[0], info, checker, routes, gate_dir))
            if queue and not cancelled:
                item = queue.popleft().result()
                pending.append(item)
                n = item.scan.n_slices if item.scan is not None else 0
                pending_slices += n
                seen_items, seen_slices = seen_items + 1, seen_slices + n
            # Score when a batch is full, when nothing more is coming, or when cancelling
            # (the decoded scans in hand are the "in-flight" ones and are finished).
            if pending and (pending_slices >= batch_size or not queue or cancelled):
                for row in _score_decoded(engines, pending, batch_size, include_ids):
                    yield from emit(row)
                pending, pending_slices = [], 0
            if cancelled or (exhausted and not queue and not pending):
                break
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        writer.close()
        lock.release()
    if cancel is not None and cancel.is_set():
        cancelled = True
    summary = Summary(
        out_csv=writer.path,
        model=info.name if info is not None else AUTO,
        model_version=info.version if info is not None else "",
        model_sha256=info.sha256 if info is not None else "",
        models=tuple(f"{m.name} {m.version} ({m.short_hash})" for m in models),
        total=total,
        done=counts["done"],
        ok=counts["ok"],
        errors=counts["errors"],
        flagged=counts["flagged"],
        skipped=skipped,
        cancelled=cancelled,
        elapsed_s=time.perf_counter() - t0,
        error_codes=dict(codes),
        ignored=tuple(ignored_notes),
    )
    if audit:
        append_audit(
            "score",
            {
                "inputs": path_list,
                "out_csv": str(writer.path),
                "model": summary.model,
                "model_version": summary.model_version,
                "model_sha256": summary.model_sha256,
                "models": [
                    {"name": m.name, "version": m.version, "sha256": m.sha256} for m in models
                ],
                "total": total,
                "done": summary.done,
                "ok": summary.ok,
                "errors": summary.errors,
                "flagged": summary.flagged,
                "skipped": skipped,
                "cancelled": cancelled,
                "ignored": len(ignored_notes),
                "resume": resume,
                "elapsed_s": round(summary.elapsed_s, 3),
            },
        )
    yield Finished(summary)
