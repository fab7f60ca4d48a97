"""``lunglens`` / ``lunglens gui [PATH...]``: start the desktop app, or say why it cannot start."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from lunglens.cli.common import EXIT_ERRORS, AddCommand, err


def _has_display() -> bool:
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


#: Creates a QApplication and exits: Qt aborts the whole process (SIGABRT, exit 134) when its
#: platform plugin cannot load (no X server, or libxcb-cursor0 etc. missing), so this runs in
#: a child process before the app is started in this one.
_QT_PROBE = "from PySide6.QtWidgets import QApplication; QApplication([]); print('ok')"


def qt_problem(timeout: float = 60.0) -> str:
    """Why the desktop app cannot start here, or ``""`` when it can.

    Checks for a display first (Linux without ``DISPLAY``/``WAYLAND_DISPLAY``), then starts Qt
    in a child process and reads its complaint (e.g. "could not load the Qt platform plugin
    xcb": the system libraries listed in the README are missing).
    """
    if not _has_display():
        return "no display (DISPLAY / WAYLAND_DISPLAY are not set)"
    if sys.platform in ("win32", "darwin"):
        return ""
    import subprocess

    try:
        proc = subprocess.run(
            [sys.executable, "-c", _QT_PROBE],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=os.environ.copy(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"Qt could not be started ({exc})"
    if proc.returncode == 0 and "ok" in proc.stdout:
        return ""
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    why = next((ln for ln in lines if "plugin" in ln.lower()), lines[-1] if lines else "")
    how = (
        f"aborted by signal {-proc.returncode}"
        if proc.returncode < 0
        else f"exit {proc.returncode}"
    )
    return f"Qt could not be started ({how}: {why})"


def run_gui(paths: Sequence[str], problem: str | None = None) -> int:
    """Start the app with ``paths`` open; ``problem`` is :func:`qt_problem`'s answer if known."""
    if problem is None:
        problem = qt_problem()
    if problem:
        err(
            f"the desktop app cannot start: {problem}. On Linux, install the Qt system "
            "libraries listed in the README (section 'Linux system libraries'). The command "
            "line still works: see 'lunglens --help'."
        )
        return EXIT_ERRORS
    try:
        from lunglens.gui.app import run  # lazy: Qt is only loaded for the app
    except ImportError as exc:
        err(
            f"the desktop app cannot start ({exc}). The command line still works: "
            "see 'lunglens --help'."
        )
        return EXIT_ERRORS
    return int(run(list(paths)) or 0)


def cmd_gui(args: argparse.Namespace) -> int:
    """``lunglens gui [PATH...]``."""
    return run_gui(getattr(args, "paths", []) or [])


def add_parser(add: AddCommand) -> None:
    """Register ``gui``."""
    p = add("gui", cmd_gui, "open the desktop app (optionally with scans)")
    p.add_argument("paths", nargs="*")
