"""The scoring units of a run: files and folders expanded into scans, each named by its key."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from lunglens.batch.rows import error_text
from lunglens.errors import ScanError


def discover(
    paths: Iterable[str | os.PathLike[str]],
    recursive: bool = True,
    ignored: list[str] | None = None,
) -> tuple[list[tuple[str, object]], list[tuple[str, str]]]:
    """Expand ``paths`` into ``(key, source)`` scoring units and ``(key, error text)`` failures.

    Keys are unique: a file reached through two overlapping paths is scored once. Files found
    in folders that hold no image (DICOM SR/KO/DICOMDIR, text files) are not scans: they get no
    row (a study folder with a dose report is not an error) and are described in ``ignored``.
    """
    from lunglens.io import discover_sources

    units: dict[str, object] = {}
    failures: dict[str, str] = {}
    for p in paths:
        notes: list[str] = []
        try:
            sources, errors = discover_sources(Path(p), recursive=recursive, ignored=notes)
        except ScanError as exc:
            failures.setdefault(str(p), error_text(exc))
            continue
        if Path(p).is_file() and not sources and not errors:
            # A file the user named explicitly is never silently skipped (e.g. a DICOM SR):
            # loading it gives the typed reason for its error row.
            failures.setdefault(str(p), _load_error(Path(p)))
        elif ignored is not None:
            ignored.extend(notes)
        for src in sources:
            units.setdefault(src.key, src)
        for key, err in errors:
            failures.setdefault(str(key), error_text(err))
    return list(units.items()), [(k, v) for k, v in failures.items() if k not in units]


def _load_error(path: Path) -> str:
    from lunglens.errors import UnsupportedFile
    from lunglens.io import load_scan

    try:
        load_scan(path)
    except Exception as exc:
        return error_text(exc)
    return error_text(UnsupportedFile(path, "not a scan LungLens can score"))
