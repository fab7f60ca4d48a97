"""Audit log: one JSON line per classify/score run in the user data folder.

Answers "which model scored what, when, and where did the results go" after the fact. Lines carry
paths, counts and the model hash, never patient names or ids.

A module of its own below every layer (it imports nothing of LungLens), so the batch runner, the
command line and the app all append to it without importing each other.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Environment override for the user data folder (tests point it at a temporary folder).
DATA_ENV = "LUNGLENS_DATA_DIR"
AUDIT_FILE = "audit.log"


def data_dir() -> Path:
    """``$LUNGLENS_DATA_DIR`` or ``platformdirs.user_data_dir("LungLens")``."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("LungLens", appauthor=False))


def audit_path() -> Path:
    """Path of the audit log."""
    return data_dir() / AUDIT_FILE


def append_audit(event: str, record: Mapping[str, Any]) -> Path | None:
    """Append ``{"event": event, "at": <UTC>, **record}`` as one JSON line.

    Returns the log path, or ``None`` when it could not be written: a read-only home folder
    must not stop a triage run, so the failure is logged as a warning instead of raised.
    """
    line = {"event": event, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    line.update(record)
    path = audit_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A path that is not UTF-8 holds surrogates (surrogateescape); "backslashreplace" writes
        # them as \udcXX, which is the JSON escape of the same string, so the line stays JSON.
        with open(path, "a", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write(json.dumps(line, default=str, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        log.warning("could not write the audit log %s: %s", path, exc)
        return None
    return path


def failure_fields(exc: BaseException) -> dict[str, str]:
    """The audit fields of a run that ``exc`` stopped: ``outcome`` (``cancelled`` for Ctrl-C,
    else ``error``) and ``error``, the error's code (a LungLens error's ``code``, e.g.
    ``OutputError``) or its type name.

    Only the code, never the message: an unexpected error's message may quote a DICOM value,
    and the audit log must never hold patient names or ids.
    """
    if isinstance(exc, KeyboardInterrupt):
        return {"outcome": "cancelled", "error": "KeyboardInterrupt"}
    code = getattr(exc, "code", None)
    return {"outcome": "error", "error": code if isinstance(code, str) else type(exc).__name__}
