"""Start the desktop viewer: ``lunglens`` (no subcommand) and ``lunglens demo`` call :func:`run`.

Creates (or reuses) the ``QApplication`` with high-DPI settings suited to hospital laptops with
fractional scaling, shows the main window and opens the given paths. LungLens never uses the
network; nothing here does either.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from PySide6.QtCore import QCoreApplication, Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication

from lunglens import __version__
from lunglens.gui.main_window import MainWindow
from lunglens.gui.settings import APPLICATION, ORGANIZATION, Settings


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
    return app


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
    open_paths(window, list(paths or []))
    return int(app.exec())
