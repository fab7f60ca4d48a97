"""The results CSV (**contract**, docs/results-csv.md): columns, appending rows durably, resuming.

Rows are appended with one ``write`` each and ``fsync``-ed one at a time, so a crash or a SIGKILL
loses at most the row being written. That row may be torn; :func:`open_results` detects it on
``--resume`` and cuts the file back to the last complete row, so a rerun writes every scan exactly
once. A CSV is only extended by the model(s) that wrote it: with one chosen model, rows of
another model would mix two rankings; in automatic mode (each scan scored by its modality's
default model) the file holds those default models, each row naming its model, version, hash and
the threshold it was judged by.

Numbers a person reads follow :mod:`lunglens.inference.wording`: the ``prediction`` column holds
the triage headline (``Flagged for review - COVID-19 not ruled out (P 0.327 >= threshold
0.154)`` or ``Not flagged for COVID-19 (P 0.080 < 0.154)``), ``threshold`` the operating
threshold, and
``top_slices`` the most suspicious slices numbered from 1 (slice 1 is the first of the series,
as in the app and the PDF), separated by ``;``.

Any file name survives the round trip, because ``--resume`` matches rows to files by the ``path``
column: a newline stays a newline (the field is quoted, RFC 4180), and bytes that are not UTF-8
(a name like ``a_\\xe9.jpg`` from a Latin-1 system) are written as they are on disk (Python's
``surrogateescape``), so such a cell is the one place the file is not UTF-8. Text cells that a
spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, tab, CR first: a crafted file name
or DICOM PatientID such as ``=HYPERLINK(...)``) get a leading ``'`` as OWASP advises
(:func:`escape_cell`); :func:`read_rows` removes it again.
"""

from __future__ import annotations

import csv
import errno
import io
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from lunglens.errors import LungLensError, OutputError
from lunglens.models.registry import ModelInfo

#: Columns before the per-label probabilities.
HEAD_COLUMNS = ("path", "status", "error", "model", "model_version", "model_sha256", "prediction")
#: Columns after them.
TAIL_COLUMNS = (
    "flagged",
    "threshold",
    "n_slices",
    "top_slices",
    "elapsed_ms",
    "scored_at",
    "notes",
)
#: Separator of the notes in the ``notes`` cell (a note may hold ``;`` or ``,``).
NOTE_SEPARATOR = " | "
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


def error_code(error: str) -> str:
    """The ``<ErrorCode>`` of an ``error`` cell (``"<ErrorCode>: <message>"``), for counts."""
    return error.split(":", 1)[0]


def error_message(error: str) -> str:
    """The ``<message>`` of an ``error`` cell (``"<ErrorCode>: <message>"``): the cell itself
    when it has no code."""
    _code, sep, message = error.partition(": ")
    return message if sep else error


def utc_now() -> str:
    """ISO-8601 UTC timestamp with seconds, e.g. ``2024-05-01T12:00:00+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


#: Encoding of results files: UTF-8, with file-name bytes that are not UTF-8 kept as they are.
ENCODING = "utf-8"
ERRORS = "surrogateescape"

#: First characters that make a spreadsheet evaluate a cell (OWASP "CSV Injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: What follows the ``'`` of an escaped cell: a formula start, or another ``'``.
_ESCAPED_START = (*FORMULA_START, "'")


def escape_cell(value: str) -> str:
    """``value`` with a leading ``'`` when a spreadsheet would read it as a formula (OWASP).

    A value that already looks escaped (``'`` then a formula start or ``'``) gets one more
    ``'``, so :func:`unescape_cell` inverts this exactly and ``--resume`` tells a file called
    ``'=x.png`` from one called ``=x.png``.
    """
    if value.startswith(FORMULA_START) or (value[:1] == "'" and value[1:2] in _ESCAPED_START):
        return "'" + value
    return value


def unescape_cell(value: str) -> str:
    """Inverse of :func:`escape_cell`."""
    if value[:1] == "'" and value[1:2] != "" and value[1:2] in _ESCAPED_START:
        return value[1:]
    return value


def format_record(values: Sequence[str]) -> str:
    """One CSV record ending in ``\\n``, quoted as RFC 4180 says: a field holding a comma, a
    quote, ``\\n`` or ``\\r`` is quoted (``csv.writer`` leaves a lone ``\\r`` unquoted when
    the line terminator is ``\\n``, and readers then split the row there)."""
    out = []
    for value in values:
        if any(c in value for c in ',"\r\n'):
            value = '"' + value.replace('"', '""') + '"'
        out.append(value)
    return ",".join(out) + "\n"


def _unescape_record(record: list[str]) -> list[str]:
    return [unescape_cell(v) for v in record]


def _disk_full(path: Path, exc: OSError) -> OutputError:
    where = exc.filename or path
    return OutputError(
        where,
        f"the disk is full ({exc.strerror}); the results written so far are kept in {path}",
        "Free some space, then rerun the same command with --resume to continue.",
    )


def _is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _append(fh: IO[bytes], data: bytes) -> None:
    """Write all of ``data`` to the unbuffered ``fh`` and ``fsync`` it."""
    view = memoryview(data)
    while view:
        view = view[fh.write(view) or 0 :]
    os.fsync(fh.fileno())


class ResultsWriter:
    """Appends rows to a results CSV, one durable write per row. Use :func:`open_results`."""

    def __init__(self, path: Path, header: list[str], done: set[str]) -> None:
        self.path = path
        self.header = header
        #: Keys (``path`` column) already present with a complete row.
        self.done = done
        # Unbuffered: a row is one write() call, and a failed write leaves nothing behind in a
        # buffer that close() would try (and fail) to flush again.
        self._fh: IO[bytes] = open(path, "ab", buffering=0)

    def write(self, row: Mapping[str, object]) -> None:
        """Append one row (missing columns are empty) and make it durable.

        Raises
        ------
        OutputError
            The disk is full (the message names the file and says ``--resume`` continues).
        """
        line = format_record([escape_cell(str(row.get(col, ""))) for col in self.header])
        try:
            _append(self._fh, line.encode(ENCODING, ERRORS))
        except OSError as exc:
            if _is_disk_full(exc):
                raise _disk_full(self.path, exc) from exc
            raise
        self.done.add(str(row.get("path", "")))

    def close(self) -> None:
        """Close the file (rows are already on disk)."""
        self._fh.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temporary file, fsync, a rename).

    Raises
    ------
    OutputError
        The disk is full.
    OSError
        Any other failure to write (the temporary file is removed).
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding=ENCODING, errors=ERRORS, newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if _is_disk_full(exc):
            raise _disk_full(path, exc) from exc
        raise


def complete_length(data: bytes) -> int:
    """Length of the longest prefix of CSV ``data`` that ends with a complete row.

    A row ends at a ``\\n`` outside quotes. Quotes inside a field are doubled, so a newline is
    outside quotes exactly when the number of ``"`` before it is even; a name with a newline is
    therefore no different from any other.
    """
    end = len(data)
    while end > 0:
        nl = data.rfind(b"\n", 0, end)
        if nl < 0:
            return 0
        if data.count(b'"', 0, nl) % 2 == 0:
            return nl + 1
        end = nl
    return 0


def repair_torn_tail(path: Path) -> int:
    """Cut ``path`` back to its last complete row; return the number of bytes removed.

    A SIGKILL during the ``write`` of a row leaves a partial last row: without its final newline,
    or cut just after a newline inside a quoted file name (:func:`complete_length`).
    """
    data = path.read_bytes()
    keep = complete_length(data)
    if keep == len(data):
        return 0
    with open(path, "rb+") as fh:
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
    return len(data) - keep


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Read complete rows of a results CSV as dicts (rows with a wrong field count skipped).

    Values are as written (:func:`escape_cell` undone); a file name that is not UTF-8 comes back
    as the same ``surrogateescape`` string the scorer used.
    """
    with open(path, encoding=ENCODING, errors=ERRORS, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return []
        return [
            dict(zip(header, _unescape_record(r), strict=True))
            for r in reader
            if len(r) == len(header)
        ]


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
            "Pass --resume to continue it, --overwrite to replace it, or choose another --out.",
        )
    if not has_content or overwrite:
        write_atomic(path, ",".join(header) + "\n")
        return ResultsWriter(path, header, set())
    repair_torn_tail(path)
    with open(path, encoding=ENCODING, errors=ERRORS, newline="") as fh:
        text = fh.read()
    records = list(csv.reader(io.StringIO(text)))
    if not records:  # only a torn header was there
        write_atomic(path, ",".join(header) + "\n")
        return ResultsWriter(path, header, set())
    if records[0] != header:
        older = [c for c in header if c != "notes"] == records[0]  # before the notes column
        raise ResumeConflict(
            path,
            f"cannot resume: the file's columns ({', '.join(records[0])}) differ from those "
            f"of {names} ({', '.join(header)})",
            "It was written by an older LungLens, without the notes column: finish it with "
            "that version, or start again with --overwrite or another --out file."
            if older
            else "Use the model that wrote it (see its 'model' column) or another --out file.",
        )
    good: list[list[str]] = []
    done: set[str] = set()
    for rec in records[1:]:
        if len(rec) != len(header):
            continue  # incomplete row: scored again below
        row = dict(zip(header, _unescape_record(rec), strict=True))
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
        write_atomic(path, "".join(format_record(rec) for rec in [header, *good]))
    return ResultsWriter(path, header, done)
