"""The audit line of a batch run (:mod:`lunglens.audit`): the counts of a run that finished,
or, for one that did not (an error, a caller that stopped reading), what it knew when it
stopped. Written by the runner, so a run from the command line and one from the app's batch
dock leave the same trace."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from lunglens import AUTO_MODEL
from lunglens.audit import append_audit, failure_fields
from lunglens.batch.events import Summary
from lunglens.batch.rows import RowTally
from lunglens.models.registry import ModelInfo

_T = TypeVar("_T")


@dataclass
class RunAudit:
    """The audit line of one run: its counts once it finishes (:meth:`finished`), or, when it
    does not (:meth:`log`), its inputs, output and model and the counts of the rows written so
    far (:class:`RowTally`, once the file is open). ``audit`` False writes nothing."""

    inputs: list[str]
    out_csv: str
    info: ModelInfo | None
    resume: bool
    t0: float
    audit: bool
    tally: RowTally | None = None
    skipped: int = 0

    def guard(self, step: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``step(*args, **kwargs)``, logged as this run's end if it raises."""
        try:
            return step(*args, **kwargs)
        except BaseException as exc:
            self.log(exc)
            raise

    def finished(self, summary: Summary, models: list[ModelInfo]) -> None:
        """The line of a run that finished (Ctrl-C once included: ``cancelled``): inputs,
        output, models and counts, never patient ids."""
        if not self.audit:
            return
        append_audit(
            "score",
            {
                "inputs": self.inputs,
                "out_csv": str(summary.out_csv),
                "model": summary.model,
                "model_version": summary.model_version,
                "model_sha256": summary.model_sha256,
                "models": [
                    {"name": m.name, "version": m.version, "sha256": m.sha256} for m in models
                ],
                "total": summary.total,
                "done": summary.done,
                "ok": summary.ok,
                "errors": summary.errors,
                "flagged": summary.flagged,
                "skipped": summary.skipped,
                "cancelled": summary.cancelled,
                "ignored": len(summary.ignored),
                "resume": self.resume,
                "elapsed_s": round(summary.elapsed_s, 3),
            },
        )

    def log(self, exc: BaseException) -> None:
        """The line of a run that ``exc`` stopped (``GeneratorExit``: its caller stopped
        reading)."""
        if not self.audit:
            return
        counts = self.tally.counts if self.tally is not None else {}
        fields = (
            {"outcome": "abandoned", "error": "GeneratorExit"}
            if isinstance(exc, GeneratorExit)
            else failure_fields(exc)
        )
        info = self.info
        append_audit(
            "score",
            {
                "inputs": self.inputs,
                "out_csv": self.out_csv,
                "model": info.name if info is not None else AUTO_MODEL,
                "model_version": info.version if info is not None else "",
                "model_sha256": info.sha256 if info is not None else "",
                "total": self.tally.total if self.tally is not None else 0,
                **{k: int(counts.get(k, 0)) for k in ("done", "ok", "errors", "flagged")},
                "skipped": self.skipped,
                "resume": self.resume,
                "elapsed_s": round(time.perf_counter() - self.t0, 3),
                **fields,
            },
        )
