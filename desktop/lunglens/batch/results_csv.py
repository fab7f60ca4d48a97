"""The results CSV (**contract**, docs/results-csv.md): columns, appending rows durably, resuming.

Rows are appended, flushed and ``fsync``-ed one at a time, so a crash or a SIGKILL loses at most the
row being written. That row may be torn (no final newline); :func:`open_results` detects it on
``--resume`` and cuts the file back to the last complete row, so a rerun writes every scan exactly
once. A CSV is only extended by the model(s) that wrote it: with one chosen model, rows of
another model would mix two rankings; in automatic mode (each scan scored by its modality's
default model) the file holds those default models, each row naming its model, version, hash and
the threshold it was judged by.

Numbers a person reads follow :mod:`lunglens.inference.wording`: the ``prediction`` column holds
the triage headline (``Flagged for review - COVID-19 not ruled out (P 0.327 >= threshold
0.154)`` or ``Not flagged (P 0.080 < 0.154)``), ``threshold`` the operating threshold, and
``top_slices`` the most suspicious slices numbered from 1 (slice 1 is the first of the series,
as in the app and the PDF), separated by ``;``.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from lunglens.errors import LungLensError
from lunglens.models.registry import ModelInfo

#: Columns before the per-label probabilities.
HEAD_COLUMNS = ("path", "status", "error", "model", "model_version", "model_sha256", "prediction")
#: Columns after them.
TAIL_COLUMNS = ("flagged", "threshold", "n_slices", "top_slices", "elapsed_ms", "scored_at")
#: Opt-in identifier column (``--include-ids``).
ID_COLUMNS = ("patient_id",)


class ResultsExist(LungLensError):
    """The output CSV already has rows and neither resume nor overwrite was asked for."""


class ResumeConflict(LungLensError):
    """The existing CSV was written with another model, other labels or other columns."""


def union_labels(models: Sequence[ModelInfo]) -> list[str]:
    """Labels of ``models`` in first-seen order (one ``p_<label>`` column each)."""
    labels: list[str] = []
    for m in models:
        labels += [label for label in m.labels if label not in labels]
    return labels


def columns(labels: Sequence[str], include_ids: bool = False) -> list[str]:
    """Header of a results CSV for a model with ``labels``."""
    cols = [*HEAD_COLUMNS, *(f"p_{label}" for label in labels), *TAIL_COLUMNS]
    if include_ids:
        cols += ID_COLUMNS
    return cols


def utc_now() -> str:
    """ISO-8601 UTC timestamp with seconds, e.g. ``2024-05-01T12:00:00+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _clean(value: object) -> str:
    # One physical line per row is what makes torn-row repair safe: no newlines inside fields.
    return str(value).replace("\r", " ").replace("\n", " ")


class ResultsWriter:
    """Appends rows to a results CSV, one durable write per row. Use :func:`open_results`."""

    def __init__(self, path: Path, header: list[str], done: set[str]) -> None:
        self.path = path
        self.header = header
        #: Keys (``path`` column) already present with a complete row.
        self.done = done
        self._fh: IO[str] = open(path, "a", encoding="utf-8", newline="")

    def write(self, row: Mapping[str, object]) -> None:
        """Append one row (missing columns are empty) and make it durable."""
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(
            [_clean(row.get(col, "")) for col in self.header]
        )
        self._fh.write(buf.getvalue())
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.done.add(str(row.get("path", "")))

    def close(self) -> None:
        """Close the file (rows are already on disk)."""
        self._fh.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def repair_torn_tail(path: Path) -> int:
    """Cut ``path`` back to its last newline; return the number of bytes removed.

    A SIGKILL between ``write`` and the end of a row leaves a partial last line; everything up
    to the last ``\\n`` is complete because rows never contain newlines.
    """
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return 0
        # Scan backwards in chunks for the last newline.
        pos = size
        keep = 0
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            fh.seek(pos)
            chunk = fh.read(step)
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                keep = pos + idx + 1
                break
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    return size - keep


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Read complete rows of a results CSV as dicts (rows with a wrong field count skipped)."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return []
        return [dict(zip(header, r, strict=True)) for r in reader if len(r) == len(header)]


def open_results(
    path: str | os.PathLike[str],
    info: ModelInfo | Sequence[ModelInfo],
    *,
    resume: bool = False,
    overwrite: bool = False,
    include_ids: bool = False,
) -> ResultsWriter:
    """Open (create, overwrite or resume) a results CSV for ``info``.

    ``info`` is the model, or the models of automatic mode (their labels' union gives the
    ``p_`` columns; a resumed file may hold rows of any of them).

    Raises
    ------
    ResultsExist
        The file has content and neither ``resume`` nor ``overwrite`` is set.
    ResumeConflict
        Resuming a file written with another model, version, labels or columns.
    """
    path = Path(path)
    models = [info] if isinstance(info, ModelInfo) else list(info)
    header = columns(union_labels(models), include_ids)
    allowed = {(m.name, m.sha256) for m in models}
    names = " / ".join(f"{m.name} {m.version} ({m.short_hash})" for m in models)
    path.parent.mkdir(parents=True, exist_ok=True)
    has_content = path.exists() and path.stat().st_size > 0
    if has_content and not (resume or overwrite):
        raise ResultsExist(
            path,
            "the results file already exists",
            "Pass --resume to continue it or choose another --out.",
        )
    if not has_content or overwrite:
        _write_atomic(path, ",".join(header) + "\n")
        return ResultsWriter(path, header, set())
    repair_torn_tail(path)
    with open(path, encoding="utf-8", newline="") as fh:
        text = fh.read()
    records = list(csv.reader(io.StringIO(text)))
    if not records:  # only a torn header was there
        _write_atomic(path, ",".join(header) + "\n")
        return ResultsWriter(path, header, set())
    if records[0] != header:
        raise ResumeConflict(
            path,
            f"cannot resume: the file's columns ({', '.join(records[0])}) differ from those "
            f"of {names} ({', '.join(header)})",
            "Use the model that wrote it (see its 'model' column) or another --out file.",
        )
    good: list[list[str]] = []
    done: set[str] = set()
    for rec in records[1:]:
        if len(rec) != len(header):
            continue  # incomplete row: scored again below
        row = dict(zip(header, rec, strict=True))
        if row["model"] and (row["model"], row["model_sha256"]) not in allowed:
            raise ResumeConflict(
                path,
                f"cannot resume: rows were scored with model {row['model']} "
                f"{row['model_version']} ({row['model_sha256'][:12]}), not {names}",
                "Mixing two models in one ranking is meaningless; use another --out file.",
            )
        if row["path"] in done:
            continue
        done.add(row["path"])
        good.append(rec)
    if len(good) != len(records) - 1:  # drop broken or duplicate rows so each key appears once
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(good)
        _write_atomic(path, buf.getvalue())
    return ResultsWriter(path, header, done)
