"""The main window's size and dock layout: first run on a small laptop, then as the user left it.

Clinic laptops often have 1366x768 screens, so the first window must fit one with every dock
open (the docks scroll, :mod:`lunglens.gui.scroll`); from then on the user's own geometry and dock
layout are restored from the settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QRect, QSize, Qt
from PySide6.QtGui import QGuiApplication

if TYPE_CHECKING:
    from lunglens.gui.main_window import MainWindow

#: Smallest height of the classification dock's content: down to the predicted label, and
#: small enough that viewer + gallery + batch dock fit a 1366x768 screen.
CLASSIFY_MIN_HEIGHT = 160
#: Smallest height of the batch dock's content (its form, buttons and progress; the table and
#: the rest scroll): with every dock open the window fits a 1366x768 screen under a title bar
#: and a taskbar (``MAX_WINDOW_MIN_HEIGHT``).
BATCH_MIN_HEIGHT = 150
#: The batch dock's height the first time it opens (form, progress and 4 table rows: at 290
#: px a 1366x768 screen showed two rows of the ranking); the user's own size is kept from then
#: on (window state in the settings).
BATCH_DEFAULT_HEIGHT = 330
MAX_WINDOW_MIN_HEIGHT = 700
#: The window's size on first run when the screen has room for it.
PREFERRED_SIZE = QSize(1400, 900)
#: Room left for the window frame (title bar, borders), which ``resize`` does not include.
FRAME_MARGIN = QSize(16, 40)


def first_run_size(available: QRect | None) -> QSize:
    """First-run window size: :data:`PREFERRED_SIZE`, shrunk to the screen's work area
    (``available``, without panels and taskbar) minus the frame, so a 1366x768 laptop shows
    the whole window, right panel included."""
    if available is None or available.isEmpty():
        return QSize(PREFERRED_SIZE)
    room = available.size() - FRAME_MARGIN
    return PREFERRED_SIZE.boundedTo(room)


def restore_layout(win: MainWindow) -> None:
    """The user's geometry and dock layout from the settings, or the first-run layout."""
    geometry = win.settings.geometry()
    if geometry is not None:
        win.restoreGeometry(geometry)  # the user's own size and place from last time
    else:
        _first_run_geometry(win)
    state = win.settings.state()
    if state is not None:
        win.restoreState(state)
    else:  # first run: Qt would split the height evenly and shrink the scan to a strip
        _first_batch_dock_height(win)
    last = win.settings.last_folder()
    if last:
        win.batch_panel.set_folder(last)


def _first_run_geometry(win: MainWindow) -> None:
    screen = win.screen() or QGuiApplication.primaryScreen()
    avail = screen.availableGeometry() if screen is not None else None
    size = first_run_size(avail)
    win.resize(size)
    if avail is not None:  # centred on the work area (under any panel or taskbar)
        win.move(
            avail.x() + max(0, (avail.width() - size.width()) // 2),
            avail.y() + max(0, (avail.height() - size.height()) // 2),
        )
    # First run: room for the attribute values and the panel, the image gets the rest.
    side = 260 if size.width() < 1500 else 300
    win.resizeDocks([win.tags_dock, win.classify_dock], [side, 360], Qt.Orientation.Horizontal)


def _first_batch_dock_height(win: MainWindow) -> None:
    """Give the batch dock :data:`BATCH_DEFAULT_HEIGHT` the first time it opens."""

    def on_visible(visible: bool) -> None:
        if visible:
            win.batch_dock.visibilityChanged.disconnect(on_visible)
            win.resizeDocks([win.batch_dock], [BATCH_DEFAULT_HEIGHT], Qt.Orientation.Vertical)

    win.batch_dock.visibilityChanged.connect(on_visible)
