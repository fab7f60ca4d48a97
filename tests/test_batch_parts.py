"""The parts :func:`lunglens.batch.score` is built from, each on its own, without a model."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from lunglens.batch import Progress, Row, runner
from lunglens.batch.rows import RowTally, error_row
from lunglens.io.scan import Scan


class _ListWriter:
    """Stands in for :class:`~lunglens.batch.results_csv.ResultsWriter`: keeps rows in a list."""

    def __init__(self) -> None:
        self.rows: list[dict[str, str]] = []

    def write(self, row: dict[str, str]) -> None:
        self.rows.append(row)


def test_row_tally_writes_counts_and_reports_progress() -> None:
    writer = _ListWriter()
    tally = RowTally(writer, total=3, t0=0.0)  # type: ignore[arg-type]
    ok = {"path": "a.png", "status": "ok", "flagged": "true"}
    events = [*tally.emit(ok), *tally.emit(error_row("b.png", None, "CorruptFile: b.png: bad"))]
    events += tally.emit({"path": "c.png", "status": "ok", "flagged": "false"})
    assert [type(e) for e in events] == [Row, Progress] * 3
    assert writer.rows[0] is ok and [r["path"] for r in writer.rows] == ["a.png", "b.png", "c.png"]
    assert dict(tally.counts) == {"done": 3, "ok": 2, "flagged": 1, "errors": 1}
    assert dict(tally.codes) == {"CorruptFile": 1}
    last = events[-1]
    assert isinstance(last, Progress) and (last.done, last.total, last.eta_s) == (3, 3, 0.0)


def _fake_decode(source: object, key: str, *args: object) -> runner._Decoded:
    """A decoded scan of ``source`` slices (an int), without reading anything."""
    n = int(source)  # type: ignore[call-overload]
    return runner._Decoded(key, Scan(key, np.zeros((n, 4, 4), np.float32)), "", 0.0)


def _queue(
    units: list[tuple[str, object]], batch_size: int, cancel: threading.Event | None = None
) -> tuple[runner._DecodeQueue, ThreadPoolExecutor]:
    models = runner._Models(None, {}, [], {}, None, None)
    pool = ThreadPoolExecutor(max_workers=2)
    return runner._DecodeQueue(pool, units, models, 2, batch_size, cancel), pool


def test_decode_queue_yields_full_batches_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "_decode", _fake_decode)
    units: list[tuple[str, object]] = [(f"s{i}", 1) for i in range(10)]
    units.append(("series", 5))
    queue, pool = _queue(units, batch_size=4)
    with pool:
        batches = [[d.key for d in batch] for batch in queue]
    assert [k for b in batches for k in b] == [k for k, _ in units]  # every scan, once, in order
    assert [len(b) for b in batches[:2]] == [4, 4]  # full batches of single images
    assert batches[-1][-1] == "series" and not queue.cancelled


def test_decode_queue_finishes_the_scans_in_hand_when_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "_decode", _fake_decode)
    cancel = threading.Event()
    units: list[tuple[str, object]] = [(f"s{i}", 1) for i in range(100)]
    queue, pool = _queue(units, batch_size=4, cancel=cancel)
    seen: list[str] = []
    with pool:
        for batch in queue:
            seen += [d.key for d in batch]
            cancel.set()  # after the first batch
    assert seen == ["s0", "s1", "s2", "s3"] and queue.cancelled


def test_plan_leaves_out_what_a_resumed_file_has(tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"\x89PNG\r\n\x1a\n")  # sniffed as PNG, not decoded here
    done = {str(tmp_path / "a.png"), str(tmp_path / "missing.png")}
    units, failures, skipped = runner._plan(
        [str(tmp_path), str(tmp_path / "missing.png")], True, [], done
    )
    assert [k for k, _ in units] == [str(tmp_path / "b.png")]
    assert failures == [] and skipped == 2
