"""``lunglens score PATH... --out X``: folders into a resumable results CSV and its HTML summary."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from lunglens.cli.common import (
    AUTO,
    EXIT_CANCELLED,
    EXIT_ERRORS,
    EXIT_OK,
    EXIT_TERMINATED,
    AddCommand,
    UsageError,
    err,
)

if TYPE_CHECKING:
    from lunglens.batch import Summary
    from lunglens.models.registry import ModelInfo


class ProgressLine:
    """A tqdm-like progress line on stderr (redrawn in place on a terminal, else every 10 %)."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last = 0.0
        self._last_decile = -1

    def update(self, done: int, total: int, rate: float, eta: float) -> None:
        now = time.monotonic()
        frac = done / total if total else 1.0
        if self.tty:
            if now - self._last < 0.1 and done < total:
                return
            width = 30
            bar = "#" * int(frac * width)
            eta_txt = f"{int(eta // 60)}:{int(eta % 60):02d}" if eta != float("inf") else "?"
            self.stream.write(
                f"\r[{bar:<{width}}] {done}/{total} {rate:5.1f} scans/s ETA {eta_txt}  "
            )
            if done >= total:
                self.stream.write("\n")
        else:
            decile = int(frac * 10)
            if decile == self._last_decile and done < total:
                return
            self._last_decile = decile
            self.stream.write(f"{done}/{total} scans ({frac:.0%}), {rate:.1f}/s\n")
        self._last = now
        self.stream.flush()


@dataclass
class _Stop:
    """How a run was stopped: ``terminated`` by SIGTERM (exit 143, no HTML report: a service
    manager waits only so long)."""

    terminated: bool = False


def _run(args: argparse.Namespace, info: ModelInfo | None, stop: _Stop) -> Summary:
    """Drive :func:`lunglens.batch.score` with a progress line; the first Ctrl-C asks it to
    stop after the scans in hand, a second one aborts (the runner audits either way).
    SIGTERM (a service stopped, a machine shutting down) stops the same way as the first
    Ctrl-C: the rows in hand are written and the lock released."""
    from lunglens.batch import Finished, Progress, Started, score
    from lunglens.inference.wording import counted

    cancel = threading.Event()

    def say(message: str) -> None:  # stderr may be gone (a closed pipe): the stop goes on
        try:
            err(message)
        except OSError:
            pass

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        say("stopping after the scans in hand (Ctrl-C again to abort now)")

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        cancel.set()
        stop.terminated = True
        say("terminate signal: stopping after the scans in hand")

    previous: dict[int, Callable[..., Any] | int | None] = {}
    if threading.current_thread() is threading.main_thread():
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, on_sigint)
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_sigterm)
    bar = ProgressLine()
    summary = None
    try:
        events = score(
            args.paths,
            info,
            args.out,
            resume=args.resume,
            overwrite=args.overwrite,
            workers=args.workers,
            cancel=cancel,
            include_ids=args.include_ids,
            models_dir=args.models_dir,
        )
        for ev in events:
            if isinstance(ev, Started):
                skipped = f", {ev.skipped} already done" if ev.skipped else ""
                how = (
                    f"with {info.name} {info.version}"
                    if info is not None
                    else "each with its modality's default model"
                )
                err(f"scoring {counted(ev.total, 'scan')} {how}{skipped}")
                if unmatched := ev.in_file - ev.skipped:  # e.g. `mix` then `/data/mix`
                    err(
                        f"note: {counted(unmatched, 'row')} already in {ev.out_csv} "
                        "match none of these inputs (paths are compared as written: give "
                        "the same PATH arguments as the run that wrote them)"
                    )
            elif isinstance(ev, Progress):
                bar.update(ev.done, ev.total, ev.rate, ev.eta_s)
            elif isinstance(ev, Finished):
                summary = ev.summary
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: installed outside Python, cannot be put back
                signal.signal(signum, handler)
    assert summary is not None
    return summary


def _print_summary(summary: Summary, automatic: bool) -> None:
    from lunglens.inference.wording import counted

    if automatic:
        print("models: " + ", ".join(summary.models))
    # "scored" only for what got a score: a refused scan is processed, not scored
    print(
        f"{summary.done} processed: {summary.ok} scored ({summary.flagged} flagged for review), "
        f"{summary.errors} not scored ({summary.skipped} skipped as already done) "
        f"in {summary.elapsed_s:.1f} s -> {summary.out_csv}"
    )
    if summary.ignored:
        ignored = counted(len(summary.ignored), "file")
        print(f"{ignored} ignored (not scans), e.g. {summary.ignored[0]}")
    if summary.error_codes:
        print("errors: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.error_codes.items())))


def _auto_models(models_dir: str | None) -> list[ModelInfo]:
    from lunglens.inference.modality import default_models

    return list({m.name: m for m in default_models(models_dir).values()}.values())


def cmd_score(args: argparse.Namespace) -> int:
    """Score ``args.paths`` into ``args.out``; print the summary and write ``results.html``."""
    from lunglens import DISCLAIMER
    from lunglens.audit import append_audit, failure_fields
    from lunglens.report.html import write_html_report  # before scoring: fails fast if broken

    if args.workers < 1:  # a usage error, not a run: nothing to audit
        raise UsageError("--workers must be at least 1")
    info: ModelInfo | None = None  # automatic: each scan by its modality's default model
    stop = _Stop()
    try:
        if args.model != AUTO:
            from lunglens.models import get_model

            info = get_model(args.model, args.models_dir)
    except BaseException as exc:  # refused or missing model: no run started, audited here
        append_audit(
            "score",
            {
                "inputs": [str(p) for p in args.paths],
                "out_csv": str(args.out),
                "model": args.model,
                "resume": args.resume,
                **failure_fields(exc),
            },
        )
        raise
    summary = _run(args, info, stop)  # a run stopped by an error is audited by the runner
    _print_summary(summary, automatic=info is None)
    if stop.terminated:
        err("terminated; rerun with --resume to finish (no HTML report written)")
        return EXIT_TERMINATED
    if not args.no_report:
        models = [info] if info is not None else _auto_models(args.models_dir)
        print(f"report: {write_html_report(summary.out_csv, models)}")
    print(DISCLAIMER)
    if summary.cancelled:
        err("cancelled; rerun with --resume to finish")
        return EXIT_CANCELLED
    return EXIT_ERRORS if summary.errors else EXIT_OK


def add_parser(add: AddCommand) -> None:
    """Register ``score`` and its options."""
    p = add("score", cmd_score, "score files and folders into a results CSV")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument(
        "--model",
        default=AUTO,
        help="model name, or 'auto' (default): each scan by its modality's default model",
    )
    p.add_argument("--out", required=True, type=Path, metavar="results.csv")
    # One or the other: both at once would silently drop the rows --resume was meant to keep.
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="skip scans already in --out")
    existing.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--workers", type=int, default=2, help="decoder threads (default 2)")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML summary")
    p.add_argument("--include-ids", action="store_true", help="add a patient_id column")
