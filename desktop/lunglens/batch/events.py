"""Events yielded by :func:`lunglens.batch.score` (a GUI worker forwards them as signals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Started:
    """Discovery done: ``total`` scans will be scored now, ``skipped`` were already in the CSV;
    ``in_file`` complete rows were in it before the run (``--resume``), so ``in_file - skipped``
    of them match none of this run's inputs (keys are compared as written)."""

    total: int
    skipped: int
    out_csv: Path
    in_file: int = 0


@dataclass(frozen=True)
class Row:
    """One results row was written (keys are the CSV columns)."""

    row: dict[str, str]


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` scans written; ``rate`` in scans/s; ``eta_s`` seconds left."""

    done: int
    total: int
    rate: float
    eta_s: float


@dataclass(frozen=True)
class Summary:
    """What a run did (also appended to the audit log).

    ``model`` is the chosen model's name, or ``"auto"`` when each scan went to its modality's
    default model (``model_version`` and ``model_sha256`` are then empty); ``models`` lists
    every model the run could use as ``"name version (hash)"``.
    """

    out_csv: Path
    model: str
    model_version: str
    model_sha256: str
    total: int
    done: int = 0
    ok: int = 0
    errors: int = 0
    flagged: int = 0
    skipped: int = 0
    cancelled: bool = False
    elapsed_s: float = 0.0
    error_codes: dict[str, int] = field(default_factory=dict)
    #: Files in the folders that are not scans (DICOM SR/KO, text), one note each; no rows.
    ignored: tuple[str, ...] = ()
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class Finished:
    """The run ended (normally or cancelled); rows written so far are valid."""

    summary: Summary


BatchEvent = Started | Row | Progress | Finished
