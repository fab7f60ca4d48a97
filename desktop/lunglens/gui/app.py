"""Start the desktop viewer: ``lunglens`` (no subcommand) and ``lunglens demo`` call :func:`run`.

Creates (or reuses) the ``QApplication`` with high-DPI settings suited to hospital laptops with
fractional scaling, shows the main window and opens the given paths. LungLens never uses the
network; nothing here does either.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from PySide6.QtCore import QCoreApplication, Qt
from PySide6.QtGui import QGuiApplication, QIcon
from PySide6.QtWidgets import QApplication

from lunglens import __version__
from lunglens.gui.main_window import MainWindow
from lunglens.gui.settings import APPLICATION, ORGANIZATION, Settings
from lunglens.models import resources_dir


def create_app(argv: Sequence[str] | None = None) -> QApplication:
    """Return the process's QApplication, creating it with LungLens' identity if needed."""
    existing = QApplication.instance()
    if isinstance(existing, QApplication):
        return existing
    # Fractional scale factors (125 %, 150 %) render crisply instead of being rounded.
    QGuiApplication.setHighDpiScaleFactorRoundingPolicy(
        Qt.HighDpiScaleFactorRoundingPolicy.PassThrough
    )
    QCoreApplication.setOrganizationName(ORGANIZATION)
    QCoreApplication.setApplicationName(APPLICATION)
    QCoreApplication.setApplicationVersion(__version__)
    app = QApplication(list(argv) if argv is not None else [sys.argv[0]])
    app.setApplicationDisplayName("LungLens")
    app.setWindowIcon(app_icon())
    return app


def app_icon() -> QIcon:
    """The LungLens icon (window title bar, task bar, alt-tab); empty if resources are missing."""
    icon = QIcon()
    icons = resources_dir() / "icons"
    for name in ("lunglens.svg", "lunglens-256.png"):
        if (icons / name).is_file():
            icon.addFile(str(icons / name))
    return icon


#: PySide6 releases whose Python wrappers drop references to None/True on every signal emit and
#: model update on Python < 3.12 (measured: -1 refcount of True per ``Signal.emit``), which
#: aborts the interpreter ("deallocating True") after a few thousand emits, i.e. mid-batch.
BROKEN_PYSIDE = {"6.12.0"}


def binding_problem() -> str:
    """A sentence describing a known-bad Qt binding in use, or ``""``."""
    import PySide6

    if PySide6.__version__ in BROKEN_PYSIDE and sys.version_info < (3, 12):
        return (
            f"PySide6 {PySide6.__version__} has a reference-counting bug on Python "
            f"{sys.version_info.major}.{sys.version_info.minor} that can crash long "
            "sessions (batch scoring). Install another PySide6 version, e.g. 6.11.3."
        )
    return ""


def open_paths(window: MainWindow, paths: Sequence[str]) -> None:
    """Open the first path in the viewer; the others go to the recent files menu."""
    if not paths:
        return
    for extra in reversed(list(paths)[1:]):
        window.settings.add_recent(str(extra))
    window.open_path(str(paths[0]))


def run(paths: list[str] | None = None) -> int:
    """Show the viewer, open ``paths`` (first one displayed) and run the event loop.

    Parameters
    ----------
    paths
        Files or folders from the command line (``lunglens demo`` passes the bundled samples).

    Returns
    -------
    int
        The event loop's exit code (0 on a normal close).
    """
    app = create_app()
    window = MainWindow(Settings())
    window.show()
    problem = binding_problem()
    if problem:
        window.show_error(problem)
    open_paths(window, list(paths or []))
    return int(app.exec())
