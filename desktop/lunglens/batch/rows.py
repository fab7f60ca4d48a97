"""The rows of a results CSV: what a scored scan and a failed one write, and the run's counts.

Columns and their meaning: :mod:`lunglens.batch.results_csv` and ``docs/results-csv.md``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

from lunglens.batch.events import BatchEvent, Progress, Row
from lunglens.batch.results_csv import NOTE_SEPARATOR, ResultsWriter, error_code, utc_now
from lunglens.errors import LungLensError
from lunglens.inference.result import ScanResult
from lunglens.inference.wording import format_threshold, slice_numbers
from lunglens.models.registry import ModelInfo


def error_text(exc: BaseException) -> str:
    """``"<ErrorCode>: message"`` for the ``error`` column."""
    code = exc.code if isinstance(exc, LungLensError) else type(exc).__name__
    return f"{code}: {exc}"


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
        # what the reader must know beside the score: slices skipped, series left out, how a
        # plain image was placed
        notes=NOTE_SEPARATOR.join(result.notes),
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


class RowTally:
    """Writes rows, counts them and turns each into its :class:`Row` and :class:`Progress`.

    ``total`` is the number of rows the run will write (for the rate and ETA), ``t0`` the
    ``time.perf_counter()`` the run started at; ``counts`` holds ``done``, ``ok``, ``flagged``
    and ``errors``, ``codes`` the errors per error code.
    """

    def __init__(self, writer: ResultsWriter, total: int, t0: float) -> None:
        self.writer = writer
        self.total = total
        self.t0 = t0
        self.counts: Counter[str] = Counter()
        self.codes: Counter[str] = Counter()

    def emit(self, row: dict[str, str]) -> Iterator[BatchEvent]:
        """Write ``row`` (durably), count it, yield its events."""
        self.writer.write(row)
        counts = self.counts
        counts["done"] += 1
        if row["status"] == "ok":
            counts["ok"] += 1
            counts["flagged"] += row["flagged"] == "true"
        else:
            counts["errors"] += 1
            self.codes[error_code(row["error"])] += 1
        yield Row(row)
        elapsed = time.perf_counter() - self.t0
        rate = counts["done"] / elapsed if elapsed > 0 else 0.0
        eta = (self.total - counts["done"]) / rate if rate > 0 else float("inf")
        yield Progress(counts["done"], self.total, rate, eta)
