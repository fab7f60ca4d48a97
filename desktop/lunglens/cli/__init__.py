"""``lunglens`` command line: classify a scan, score folders, list models, run the demo.

Commands (one module each; :mod:`lunglens.cli.parser` assembles them)
--------------------------------------------------------------------
``lunglens``                       open the desktop app (same as ``lunglens gui``; :mod:`.desktop`)
``lunglens classify FILE``         one scan: probabilities, optional CAM PNG / PDF / JSON
``lunglens score PATH... --out X`` folders -> resumable results CSV + HTML summary
``lunglens models [--verify]``     installed models (and their integrity)
``lunglens demo``                  the bundled samples (app when a display exists, else a table)
``lunglens selftest``              installation check (:mod:`lunglens.selftest`)

Exit codes
----------
0   success
1   ``score``: some scans could not be read (see their error rows); any command: an output could
    not be written (disk full: rerun with --resume once space is freed) or an unexpected error
2   usage error (bad option, --resume with --overwrite, existing results file without --resume
    or --overwrite, resume conflict, results file in use by another run)
3   ``classify``: the input file cannot be read as a scan, or is not a chest scan (refused by
    the chest-image gate), or is of the other modality than the named model, or (automatic
    model choice) is a plain image whose family the pixels cannot tell (``ModalityUncertain``):
    the reason is printed as ``refused:`` (``"status": "refused"`` with --json), no score
4   model refused (integrity check failed) or not found
130 cancelled with Ctrl-C (rows written so far are kept; rerun ``score`` with --resume)
143 ``score`` stopped by SIGTERM (POSIX; a service stopped, a shutdown): the rows in hand are
    written and the lock released (no HTML report); rerun with --resume

User errors are reported as one line on stderr, never as a traceback (``--debug`` shows one).
"""

from __future__ import annotations

import argparse
import errno
import sys
import traceback
from collections.abc import Sequence

from lunglens.cli.common import (
    AUTO,
    EXIT_BAD_INPUT,
    EXIT_CANCELLED,
    EXIT_ERRORS,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    UsageError,
    err,
)
from lunglens.cli.desktop import run_gui
from lunglens.cli.parser import build_parser

__all__ = [
    "AUTO",
    "EXIT_BAD_INPUT",
    "EXIT_CANCELLED",
    "EXIT_ERRORS",
    "EXIT_MODEL",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "main",
]


def _tolerant_output() -> None:
    """Print any file name: bytes that are not valid in the terminal's encoding (a Latin-1 name
    read with surrogateescape) are shown as ``\\xNN``/``\\udcNN`` instead of raising."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a closed or foreign stream: leave it as it is
                pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (see the module docstring)."""
    _tolerant_output()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (argparse printed it)
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        return run_gui([])
    from lunglens.errors import LungLensError, ModelError, OutputError, ScanError

    try:
        return int(args.func(args))
    except OutputError as exc:
        err(f"{exc.code}: {exc}")
        return EXIT_ERRORS
    except ModelError as exc:
        err(f"{exc.code}: {exc}")
        return EXIT_MODEL
    except ScanError as exc:
        err(f"{exc.code}: {exc}")
        return EXIT_BAD_INPUT
    except LungLensError as exc:  # ResultsExist, ResumeConflict, ResultsLocked: a usage error
        err(f"{exc.code}: {exc}")
        return EXIT_USAGE
    except UsageError as exc:
        err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        err("cancelled")
        return EXIT_CANCELLED
    except BrokenPipeError:  # e.g. `lunglens models | head`
        return EXIT_OK
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return _unexpected(args, exc)
        where = exc.filename or "an output file"
        err(
            f"{where}: the disk is full ({exc.strerror}). Free some space and rerun the same "
            "command (score: with --resume, which keeps the rows already written)."
        )
        return EXIT_ERRORS
    except Exception as exc:
        return _unexpected(args, exc)


def _unexpected(args: argparse.Namespace, exc: BaseException) -> int:
    if args.debug:
        traceback.print_exception(exc)
    err(f"unexpected error: {type(exc).__name__}: {exc} (rerun with --debug for details)")
    return EXIT_ERRORS
