"""Batch scoring of folders into a resumable results CSV."""

from lunglens.batch.events import BatchEvent, Finished, Progress, Row, Started, Summary
from lunglens.batch.results_csv import (
    ResultsExist,
    ResumeConflict,
    columns,
    open_results,
    read_rows,
    repair_torn_tail,
)
from lunglens.batch.rows import error_text
from lunglens.batch.runner import AUTO, score
from lunglens.batch.units import discover

__all__ = [
    "AUTO",
    "BatchEvent",
    "Finished",
    "Progress",
    "ResultsExist",
    "ResumeConflict",
    "Row",
    "Started",
    "Summary",
    "columns",
    "discover",
    "error_text",
    "open_results",
    "read_rows",
    "repair_torn_tail",
    "score",
]
