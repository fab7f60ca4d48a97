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
for plain images the modality check where the chest-image gate's nearest training modality agrees
(a ``ModalityUncertain`` error row where they disagree); one results file then holds rows of
several models, each row naming its model, version, hash and threshold.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lunglens import AUTO_MODEL
from lunglens.batch.events import BatchEvent, Finished, Started, Summary
from lunglens.batch.lock import ResultsLock
from lunglens.batch.results_csv import ResultsWriter, open_results
from lunglens.batch.rows import RowTally, error_row, error_text
from lunglens.batch.run_audit import RunAudit
from lunglens.batch.scoring import Decoded as _Decoded
from lunglens.batch.scoring import score_decoded as _score_decoded
from lunglens.batch.units import discover
from lunglens.errors import ModelNotFound
from lunglens.inference.classify import BATCH_SIZE
from lunglens.inference.engine import Engine, batches, get_engine
from lunglens.inference.gate import (
    GateVerdict,
    judge_features,
    pending_features,
    require_chest,
)
from lunglens.inference.gate_feature_check import separate_descriptors
from lunglens.inference.modality import (
    ModalityCheck,
    check_with,
    default_models,
    find_mismatch,
    modality_notes,
    plain_check,
    routing_modality,
    with_gate,
)
from lunglens.inference.slice_filter import (
    fused_output,
    left_out,
)
from lunglens.io.scan import SCORED_MODALITIES, Scan
from lunglens.models.registry import ModelInfo, modality_checker

AUTO = AUTO_MODEL  #: ``--model auto``: each scan is scored by its modality's default model.


def _route(
    key: str,
    scan: Scan,
    routes: dict[str, ModelInfo],
    checker: ModelInfo | None,
    verdict: GateVerdict,
) -> tuple[ModelInfo, ModalityCheck | None]:
    """Automatic mode: the default model of the scan's modality (header, else the pixel check
    where the gate's nearest training modality agrees), and the pixel check of a plain
    image."""
    modality = scan.modality
    how = f"its DICOM modality is {modality.upper()}"
    check = None
    if modality not in SCORED_MODALITIES:
        check = with_gate(check_with(checker, scan), verdict) if checker is not None else None
        if check is None:
            raise ModelNotFound(
                key,
                "plain image without modality information, and no modality check is installed "
                "to tell a CT slice from a chest X-ray",
                "Score it with a chosen model (--model).",
            )
        # the check and the gate disagreeing route nowhere: ModalityUncertain, an error row
        modality, how = routing_modality(scan, check, key), f"the image {check.looks_like()}"
    if modality not in routes:
        raise ModelNotFound(
            key,
            f"{how}, but no {modality.upper()} model is installed",
            "Install one or score it with a chosen model (--model).",
        )
    return routes[modality], check


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
        # not a chest scan: an error row, no score (the CT feature check waits for the model)
        verdict = require_chest(scan, gate_dir, features=False)
        if info is None:
            chosen, check = _route(key, scan, routes or {}, checker, verdict)
        else:
            check = with_gate(plain_check(checker, scan), verdict)
            mismatch = find_mismatch(scan, info, check)
            if mismatch is not None:
                raise mismatch.error(key)
        # the CT feature check, for the family of the model that scores (as in classify_scan)
        owed = pending_features(scan, verdict, chosen, gate_dir) if chosen is not None else None
        pending = chosen is not None and fused_output(owed, chosen) is not None
        single = scan.n_slices == 1
        # one image scored by the check's own model is judged on the scoring pass (as in
        # classify_scan); a series' quorum is judged here, its slices on the scoring pass
        if owed is not None and not (single and pending):
            if not (found := judge_features(scan, verdict, owed)).accepted:
                raise found.error(scan.source)
        unscored: tuple[int, ...] = ()
        if owed is not None and not single and not pending:  # another CT model scores
            desc = [separate_descriptors(scan.image[p], owed) for p in batches(scan.n_slices)]
            unscored = left_out(owed, np.concatenate(desc), scan.source)
        notes = (*scan.notes, *modality_notes(scan, check))
        took = (time.perf_counter() - start) * 1000.0
        return _Decoded(key, scan, "", took, chosen, notes, owed, pending, unscored, verdict)
    except Exception as exc:  # a bad file must never stop the run: it becomes an error row
        return _Decoded(key, None, error_text(exc), (time.perf_counter() - start) * 1000.0, chosen)


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


@dataclass
class _Models:
    """The models of a run, verified before a file is touched.

    ``routes`` maps each modality to its default model in automatic mode (empty with a chosen
    model); ``checker`` is the installed modality check (plain images), if any, found in
    ``gate_dir``, where the chest-image gate also looks.
    """

    info: ModelInfo | None
    routes: dict[str, ModelInfo]
    models: list[ModelInfo]
    engines: dict[str, Engine]
    checker: ModelInfo | None
    gate_dir: str | os.PathLike[str] | None

    @classmethod
    def load(cls, info: ModelInfo | None, models_dir: str | os.PathLike[str] | None) -> _Models:
        """The chosen model, or every default model in automatic mode, and the modality check.

        Every engine is created (and its hash checked) here, so a tampered model stops the run
        before a results file is opened.
        """
        routes = default_models(models_dir) if info is None else {}
        models = list({m.name: m for m in routes.values()}.values()) if info is None else [info]
        engines = {m.name: get_engine(m) for m in models}
        gate_dir = models_dir if info is None else info.path.parent  # where the gate's check lives
        checker = modality_checker(gate_dir)
        if checker is not None:
            get_engine(checker)  # verified like the triage models: a tampered check stops the run
        return cls(info, routes, models, engines, checker, gate_dir)


def _open_locked(
    out_csv: str | os.PathLike[str],
    models: list[ModelInfo],
    *,
    resume: bool,
    overwrite: bool,
    include_ids: bool,
) -> tuple[ResultsLock, ResultsWriter]:
    """Take the results file's lock (one run per file), then open it for appending."""
    lock = ResultsLock(out_csv)  # ResultsLocked names the holder
    lock.acquire()
    try:
        writer = open_results(
            out_csv, models, resume=resume, overwrite=overwrite, include_ids=include_ids
        )
    except BaseException:
        lock.release()
        raise
    return lock, writer


def _plan(
    paths: list[str], recursive: bool, ignored: list[str], done: set[str]
) -> tuple[list[tuple[str, object]], list[tuple[str, str]], int]:
    """The units to score and the failures to write, less those ``done`` already (resume).

    Returns ``(units, failures, skipped)``: :func:`~lunglens.batch.units.discover`'s two lists
    without the keys that have a complete row in the results file, and how many those were.
    """
    units, failures = discover(paths, recursive, ignored)
    skipped = sum(1 for k, _ in units if k in done) + sum(1 for k, _ in failures if k in done)
    units = [(k, s) for k, s in units if k not in done]
    failures = [(k, e) for k, e in failures if k not in done]
    return units, failures, skipped


def _cancelled(cancel: threading.Event | None) -> bool:
    return cancel is not None and cancel.is_set()


class _DecodeQueue:
    """Decoded scans in batches for the inference loop, decoding ahead in the thread pool.

    Iterating yields lists of decoded scans: when they hold ``batch_size`` slices, when nothing
    more is coming, or when ``cancel`` is set (the decoded scans in hand are the "in-flight"
    ones and are finished; no new scan is started). ``cancelled`` says whether it stopped so.
    """

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        units: list[tuple[str, object]],
        models: _Models,
        workers: int,
        batch_size: int,
        cancel: threading.Event | None,
    ) -> None:
        self.pool, self.todo, self.models = pool, iter(units), models
        self.workers, self.batch_size, self.cancel = workers, batch_size, cancel
        self.queue: deque[Future[_Decoded]] = deque()
        self.seen_items = self.seen_slices = 0
        self.exhausted = self.cancelled = False

    def _fill(self) -> None:
        """Submit scans until the look-ahead (:func:`_lookahead`) is reached or none is left."""
        m = self.models
        while not self.exhausted and len(self.queue) < _lookahead(
            self.workers, self.batch_size, self.seen_items, self.seen_slices
        ):
            nxt = next(self.todo, None)
            if nxt is None:
                self.exhausted = True
                break
            key, source = nxt
            self.queue.append(
                self.pool.submit(_decode, source, key, m.info, m.checker, m.routes, m.gate_dir)
            )

    def __iter__(self) -> Iterator[list[_Decoded]]:
        pending: list[_Decoded] = []
        pending_slices = 0
        while True:
            self.cancelled = self.cancelled or _cancelled(self.cancel)
            if not self.cancelled:
                self._fill()
            if self.queue and not self.cancelled:
                item = self.queue.popleft().result()
                pending.append(item)
                n = item.scan.n_slices if item.scan is not None else 0
                pending_slices += n
                self.seen_items, self.seen_slices = self.seen_items + 1, self.seen_slices + n
            if pending and (pending_slices >= self.batch_size or not self.queue or self.cancelled):
                yield pending
                pending, pending_slices = [], 0
            if self.cancelled or (self.exhausted and not self.queue and not pending):
                return


def _summary(
    tally: RowTally,
    models: _Models,
    out_csv: Path,
    skipped: int,
    cancelled: bool,
    ignored: list[str],
) -> Summary:
    info = models.info
    return Summary(
        out_csv=out_csv,
        model=info.name if info is not None else AUTO,
        model_version=info.version if info is not None else "",
        model_sha256=info.sha256 if info is not None else "",
        models=tuple(f"{m.name} {m.version} ({m.short_hash})" for m in models.models),
        total=tally.total,
        done=tally.counts["done"],
        ok=tally.counts["ok"],
        errors=tally.counts["errors"],
        flagged=tally.counts["flagged"],
        skipped=skipped,
        cancelled=cancelled,
        elapsed_s=time.perf_counter() - tally.t0,
        error_codes=dict(tally.codes),
        ignored=tuple(ignored),
    )


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
    resume, overwrite
        Skip scans already in ``out_csv`` (after repairing a torn last row), or replace it;
        without either an existing non-empty file is refused (``ResultsExist``).
    workers
        Decoder threads feeding the single inference session.
    cancel
        When set, no new scans are started; the batch in hand is scored and written, then
        :class:`Finished` is yielded with ``summary.cancelled``.
    include_ids
        Add a ``patient_id`` column (off by default: results files often leave the hospital).
    models_dir
        Where automatic mode looks for models and the modality check (default: the registry's).

    Yields
    ------
    Started, Row, Progress, Finished
        :class:`Started` once, a :class:`Row` and a :class:`Progress` per scan, then
        :class:`Finished`.
    """
    t0 = time.perf_counter()
    path_list = [str(p) for p in paths]
    # a run an error stops, or its caller abandons, is audited too (command line or app)
    run = RunAudit(path_list, str(out_csv), info, resume, t0, audit)
    models = run.guard(_Models.load, info, models_dir)
    opened = dict(resume=resume, overwrite=overwrite, include_ids=include_ids)
    lock, writer = run.guard(_open_locked, out_csv, models.models, **opened)
    ignored: list[str] = []
    tally = run.tally = RowTally(writer, 0, t0)
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="lunglens-decode")
    try:
        units, failures, run.skipped = _plan(path_list, recursive, ignored, writer.done)
        tally.total = len(units) + len(failures)
        yield Started(tally.total, run.skipped, writer.path, in_file=len(writer.done))
        for key, err in failures:
            if _cancelled(cancel):
                break
            yield from tally.emit(error_row(key, info, err))
        decoded = _DecodeQueue(pool, units, models, workers, batch_size, cancel)
        for batch in decoded:
            for row in _score_decoded(models.engines, batch, batch_size, include_ids):
                yield from tally.emit(row)
    except BaseException as exc:  # GeneratorExit: the caller stopped reading (e.g. Ctrl-C)
        run.log(exc)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        writer.close()
        lock.release()
    cancelled = decoded.cancelled or _cancelled(cancel)
    summary = _summary(tally, models, writer.path, run.skipped, cancelled, ignored)
    run.finished(summary, models.models)
    yield Finished(summary)
