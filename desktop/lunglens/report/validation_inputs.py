"""The two files local validation reads: the site's labels and the results CSV of ``score``.

Both come from people and spreadsheets, not only from LungLens: a labels file exported from a
worklist, a results file opened and saved again. Each way such a file commonly goes wrong
(semicolons, a second header pasted in, a column twice, the HTML report given instead of the
CSV) is refused with what to do, never read into numbers that look valid. The contract is
``docs/local-validation.md``.
"""

from __future__ import annotations

import csv
import posixpath
from collections.abc import Mapping, Sequence
from pathlib import Path

from lunglens.batch.results_csv import (
    ENCODING,
    ERRORS,
    complete_length,
    read_rows,
    unescape_cell,
)
from lunglens.errors import ValidationInputError

#: The labels file's columns (header names compared case-insensitively; others are ignored).
PATH_COLUMN = "path"
LABEL_COLUMN = "label"
#: Optional: who the scan is of, so that intervals count patients, not scans (several slices or
#: series of one patient are not independent evidence).
PATIENT_COLUMN = "patient"
#: The label the triage flags: every shipped triage model's manifest ``positive_label``.
POSITIVE = "covid"
#: What a results row must have to be compared (docs/results-csv.md).
REQUIRED_COLUMNS = (
    "path",
    "status",
    "model",
    "model_version",
    "model_sha256",
    "flagged",
    "threshold",
    f"p_{POSITIVE}",
)
RESULTS_HINT = "Give the results CSV that 'lunglens score --out' wrote, as it wrote it."
LABELS_HINT = (
    "Expected a comma-separated CSV with a header 'path,label' and one row per scan: its 'path' "
    "as in the results file (e.g. 'scans/a.dcm', or 'folder#SeriesInstanceUID' for a series) "
    "and its true label."
)


def scan_key(path: str) -> str:
    """A scan key as compared: ``./a/b.png``, ``a/b.png`` and ``a\\b.png`` are one scan (a
    results file written on Windows validated elsewhere, or the other way round), and a key
    spreadsheet-escaped as the results file writes it (``'=x.png``) is the file ``=x.png``; a
    series key's ``#SeriesInstanceUID`` is kept as it is."""
    return posixpath.normpath(unescape_cell(path.strip()).replace("\\", "/"))


#: Other spellings of the patient column in worklist and spreadsheet exports.
PATIENT_ALIASES = frozenset({"patient id", "patient_id", "patientid", "patient-id"})


def _column(name: str) -> str:
    """A labels header cell as compared: case and surrounding spaces ignored, the patient
    column's usual spellings (``Patient ID``, ``patient_id``...) read as ``patient``."""
    name = name.strip().lower()
    return PATIENT_COLUMN if name in PATIENT_ALIASES else name


def _not_comma_separated(header: list[str]) -> str:
    """A hint when a one-column header is really another delimiter's."""
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        sep = "semicolons" if ";" in header[0] else "tabs"
        return f"; it is separated by {sep}: save it as CSV with commas"
    return ""


def read_labels(path: str | Path) -> dict[str, str]:
    """The labels file: ``{scan key: label}`` (:func:`read_labels_and_patients`)."""
    return read_labels_and_patients(path)[0]


def read_labels_and_patients(path: str | Path) -> tuple[dict[str, str], dict[str, str] | None]:
    """The labels file: ``{scan key: label}``, and ``{scan key: patient}`` when it has a
    ``patient`` column with at least one cell filled (else ``None``).

    A CSV with a header holding ``path`` and ``label``; ``path`` is the results file's ``path``
    cell of the scan (a file, or ``folder#SeriesInstanceUID`` for a series), ``label`` a class
    name of the models (``covid``, ``non-covid``, ``normal``, ``pneumonia``); a row with an empty
    label is a scan not labelled yet, left out (it is then counted among the results rows
    without a label, never as a negative). UTF-8 (a BOM is
    allowed); bytes that are not UTF-8 are kept as the results file keeps them
    (``surrogateescape``), so a file name that is not UTF-8 on disk still matches, and an
    accented byte in another column of a spreadsheet export does not stop the reading. An
    optional ``patient`` column names whose scan it is (any identifier; an empty cell: a patient
    of its own).

    Raises
    ------
    ValidationInputError
        The file cannot be read, lacks a column or has one twice, has a row without a path,
        or names one scan twice with different labels.
    """
    if Path(path).is_dir():
        raise ValidationInputError(path, "the labels file is a folder", LABELS_HINT)
    try:
        with open(path, encoding="utf-8-sig", errors=ERRORS, newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, csv.Error) as exc:
        raise ValidationInputError(path, f"the labels file cannot be read: {exc}") from exc
    if not rows:
        raise ValidationInputError(path, "the labels file is empty", LABELS_HINT)
    header = [_column(h) for h in rows[0]]
    missing = [c for c in (PATH_COLUMN, LABEL_COLUMN) if c not in header]
    if missing:
        shown = ", ".join(rows[0])[:120] or "empty"
        raise ValidationInputError(
            path,
            f"the labels file has no {' or '.join(repr(c) for c in missing)} column "
            f"(its header: {shown}){_not_comma_separated(rows[0])}",
            LABELS_HINT,
        )
    twice = [c for c in (PATH_COLUMN, LABEL_COLUMN, PATIENT_COLUMN) if header.count(c) > 1]
    if twice:
        raise ValidationInputError(
            path, f"the labels file has {' and '.join(repr(c) for c in twice)} twice in its header"
        )
    ip, il = header.index(PATH_COLUMN), header.index(LABEL_COLUMN)
    ipat = header.index(PATIENT_COLUMN) if PATIENT_COLUMN in header else None
    labels: dict[str, str] = {}
    patients: dict[str, str] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        cells = [*row, *[""] * (len(header) - len(row))]  # a short row: its last cells empty
        if not cells[ip].strip():
            raise ValidationInputError(path, f"line {line} of the labels file has no path")
        if not cells[il].strip():
            continue  # not labelled yet (a filled-in template): listed as without a label
        row = cells
        key, where = scan_key(row[ip]), (path, row[ip].strip(), line)
        _set_once(labels, key, row[il].strip(), "label", where)
        patient = row[ipat].strip() if ipat is not None else ""
        if patient:
            _set_once(patients, key, patient, "patient", where)
    if not labels:
        raise ValidationInputError(path, "the labels file holds no labelled scan", LABELS_HINT)
    return labels, patients or None


def _set_once(
    table: dict[str, str], key: str, value: str, what: str, where: tuple[str | Path, str, int]
) -> None:
    """``table[key] = value``, refused when the labels file gave that scan another ``what``
    (``where``: the file, the scan's path as written and the line)."""
    path, shown, line = where
    if table.get(key, value) != value:
        raise ValidationInputError(
            path,
            f"the labels file gives {shown!r} two {what}s: {table[key]!r} and {value!r} "
            f"(line {line})",
        )
    table[key] = value


def _torn(path: str | Path) -> bool:
    """Whether the file ends in an incomplete row (``results_csv.complete_length``)."""
    data = Path(path).read_bytes()
    return complete_length(data) < len(data)


def _check_records(path: str | Path) -> None:
    """Refuse a results file whose rows do not fit its header: re-saved with semicolons or
    decimal commas, or a row damaged by hand. ``read_rows`` skips such rows, which here would
    silently drop scans from the numbers. A torn last row (a run stopped while writing it) is
    named as such: ``score --resume`` repairs it."""
    with open(path, encoding=ENCODING, errors=ERRORS, newline="") as fh:
        records = csv.reader(fh)
        header = next(records, [])
        extra = _not_comma_separated(header)
        if extra:
            raise ValidationInputError(
                path, f"the results file is not comma-separated{extra}", RESULTS_HINT
            )
        bad, last = [], 1
        for last, r in enumerate(records, start=2):
            if r and len(r) != len(header):
                bad.append(last)
    if bad == [last] and _torn(path):  # the app's own torn last row
        raise ValidationInputError(
            path,
            "its last row is incomplete: the run was stopped while writing it",
            "Finish it with the same 'lunglens score ... --out FILE --resume' (that repairs the "
            "last row and scores what is left), then validate.",
        )
    if bad:
        raise ValidationInputError(
            path,
            f"{len(bad)} row(s) of the results file do not have its header's {len(header)} "
            f"fields (first at line {bad[0]}): it was edited, or saved again by a spreadsheet",
            RESULTS_HINT,
        )


def read_results(path: str | Path) -> list[dict[str, str]]:
    """The results file's rows, as :func:`lunglens.batch.read_rows` reads them, after checking
    that it is one: a CSV of ``score`` with the columns validation needs, every row as long as
    the header. A header row repeated inside (two results files pasted together) is skipped.

    Raises
    ------
    ValidationInputError
        The path is a folder or missing, the file cannot be read, is not a results CSV (the
        HTML report, another CSV), or a row does not fit the header.
    """
    where = Path(path)
    if where.is_dir():
        raise ValidationInputError(path, "the results file is a folder", RESULTS_HINT)
    if not where.is_file():
        raise ValidationInputError(path, "the results file does not exist", RESULTS_HINT)
    if where.suffix.lower() in (".html", ".htm"):
        raise ValidationInputError(
            path, "this is the HTML report of a run; give the CSV beside it", RESULTS_HINT
        )
    try:
        _check_records(path)
        rows = read_rows(path)
    except (OSError, csv.Error, ValueError) as exc:
        raise ValidationInputError(path, f"the results file cannot be read: {exc}") from exc
    repeated = [r for r in rows if r.get("path") == "path" and r.get("status") == "status"]
    if any(list(r.values()) != list(r) for r in repeated):
        raise ValidationInputError(
            path,
            "a second results file with other columns was pasted into this one",
            "Validate each results file on its own.",
        )
    rows = [r for r in rows if r not in repeated]
    require_columns(rows, path)
    return rows


def require_columns(rows: Sequence[Mapping[str, str]], path: str | Path | None = None) -> None:
    """Refuse rows that are not a results file's: none, or without a column validation needs.

    Raises
    ------
    ValidationInputError
        No rows, or a column of :data:`REQUIRED_COLUMNS` missing.
    """
    if not rows:
        raise ValidationInputError(path, "the results file holds no rows", RESULTS_HINT)
    missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
    if missing:
        raise ValidationInputError(
            path,
            f"the results file has no {', '.join(repr(c) for c in missing)} column, so it is not "
            "a results CSV written by 'lunglens score' (docs/results-csv.md)",
            RESULTS_HINT,
        )
