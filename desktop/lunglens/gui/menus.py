"""The main window's actions, keyboard shortcuts and menus (File, View, Analysis, Help), and the
file dialogs the File menu opens.

Every action is also added to the window itself, so its shortcut works while the menu bar is
hidden (full screen, or a platform that hides it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QFileDialog, QMenu

from lunglens import DISCLAIMER, __version__
from lunglens.gui.settings import Settings
from lunglens.preprocess import WINDOW_PRESETS

if TYPE_CHECKING:
    from lunglens.gui.main_window import MainWindow

IMAGE_FILTER = "Scans (*.dcm *.dicom *.ima *.png *.jpg *.jpeg *.tif *.tiff *.bmp);;All files (*)"
#: "Last slice": any index past the end (the viewer clamps it).
LAST_SLICE = 10**9


@dataclass
class WindowActions:
    """The actions the window (and tests) use again after building the menus."""

    open: QAction
    open_folder: QAction
    recent_menu: QMenu
    pdf: QAction
    anonymize: QAction
    export: QAction


def _adder(win: MainWindow) -> Callable[..., QAction]:
    def add(
        text: str,
        slot: Callable[..., Any],
        shortcut: QKeySequence | QKeySequence.StandardKey | str | None = None,
        tip: str = "",
    ) -> QAction:
        act = QAction(text, win)
        if shortcut is not None:
            act.setShortcut(QKeySequence(shortcut))
        if tip:
            act.setStatusTip(tip)
        act.triggered.connect(slot)
        win.addAction(act)  # shortcuts work even when the menu bar is hidden
        return act

    return add


def build_menus(win: MainWindow) -> WindowActions:
    """Create the window's actions and fill its menu bar."""
    a = _adder(win)
    actions = _file_menu(win, a)
    _view_menu(win, a)
    analysis = win.menuBar().addMenu("&Analysis")
    analysis.addAction(a("&Classify", win.classify, "Ctrl+Return"))
    analysis.addAction(win.gallery.toggleViewAction())
    analysis.addAction(win.batch_dock.toggleViewAction())
    help_menu = win.menuBar().addMenu("&Help")
    help_menu.addAction(a("&About LungLens", lambda: show_about(win)))
    return actions


def _file_menu(win: MainWindow, a: Callable[..., QAction]) -> WindowActions:
    recent_menu = QMenu("Open &recent", win)
    recent_menu.aboutToShow.connect(win._fill_recent_menu)
    anonymize = QAction("&Anonymize PDF reports", win)
    anonymize.setCheckable(True)
    anonymize.setChecked(win.settings.anonymize_reports())
    anonymize.setStatusTip(
        "Leave patient ID and name, study date and accession number out of PDF reports"
    )
    anonymize.toggled.connect(win.settings.set_anonymize_reports)
    actions = WindowActions(
        open=a("&Open scan…", lambda: ask_open_scan(win), QKeySequence.StandardKey.Open),
        open_folder=a("Open &folder (DICOM series)…", lambda: ask_open_folder(win), "Ctrl+Shift+O"),
        recent_menu=recent_menu,
        pdf=a(
            "Save &report PDF…",
            lambda: ask_save_report(win),
            "Ctrl+P",
            "One-page PDF of the current result",
        ),
        anonymize=anonymize,
        export=a("&Export CAM overlay PNG…", win.cam.export_dialog, "Ctrl+E"),
    )
    quit_action = a("&Quit", win.close, QKeySequence.StandardKey.Quit)
    file_menu = win.menuBar().addMenu("&File")
    file_menu.addAction(actions.open)
    file_menu.addAction(actions.open_folder)
    file_menu.addMenu(recent_menu)
    file_menu.addSeparator()
    file_menu.addAction(actions.pdf)
    file_menu.addAction(anonymize)
    file_menu.addAction(actions.export)
    file_menu.addSeparator()
    file_menu.addAction(quit_action)
    return actions


def _view_menu(win: MainWindow, a: Callable[..., QAction]) -> None:
    view, pane = win.view, win.pane
    view_menu = win.menuBar().addMenu("&View")
    for act in (
        a("&Fit", view.fit, "F"),
        a("&1:1", view.actual_size, "1"),
        a("Zoom &in", lambda: view.zoom(1.25), QKeySequence.StandardKey.ZoomIn),
        a("Zoom &out", lambda: view.zoom(0.8), QKeySequence.StandardKey.ZoomOut),
        a("Toggle &CAM overlay", win.toggle_cam, "C"),
        a("&Next slice", lambda: pane.set_slice(win.slice_index + 1), "PgDown"),
        a("&Previous slice", lambda: pane.set_slice(win.slice_index - 1), "PgUp"),
    ):
        view_menu.addAction(act)
    a("First slice", lambda: pane.set_slice(0), "Home")
    a("Last slice", lambda: pane.set_slice(LAST_SLICE), "End")
    wl_menu = view_menu.addMenu("&Window (CT)")
    for i, name in enumerate(WINDOW_PRESETS):
        wl_menu.addAction(
            a(name.capitalize(), lambda _c=False, n=name: pane.set_window(n), f"Ctrl+{i + 1}")
        )
    wl_menu.addAction(a("As loaded", lambda: pane.set_window(None), "Ctrl+0"))
    view_menu.addSeparator()
    for dock in (win.classify_dock, win.tags_dock, win.gallery, win.batch_dock):
        view_menu.addAction(dock.toggleViewAction())
    win.gallery.toggleViewAction().setShortcut(QKeySequence("G"))
    win.batch_dock.toggleViewAction().setShortcut(QKeySequence("Ctrl+B"))


def fill_recent_menu(menu: QMenu, settings: Settings, open_path: Callable[[str], Any]) -> None:
    """Fill *Open recent* with the remembered scans (most recent first) and *Clear*."""
    menu.clear()
    recent = settings.recent_files()
    for path in recent:
        act = menu.addAction(path)
        act.triggered.connect(lambda _c=False, p=path: open_path(p))
    if not recent:
        menu.addAction("(none)").setEnabled(False)
    else:
        menu.addSeparator()
        menu.addAction("Clear", settings.clear_recent)


def ask_open_scan(win: MainWindow) -> None:
    """File ▸ Open: a scan file, from the last folder."""
    path, _ = QFileDialog.getOpenFileName(
        win, "Open scan", win.settings.last_folder(), IMAGE_FILTER
    )
    if path:
        win.open_path(path)


def ask_open_folder(win: MainWindow) -> None:
    """File ▸ Open folder: a DICOM series folder."""
    folder = QFileDialog.getExistingDirectory(
        win, "Open DICOM series folder", win.settings.last_folder()
    )
    if folder:
        win.open_path(folder)


def ask_save_report(win: MainWindow) -> None:
    """File ▸ Save report PDF: where to write the one-page PDF of the result."""
    if win.result is None:
        win.show_status("Classify the scan before saving a report.")
        return
    default = Path(win.settings.last_folder() or ".") / win.state.output_name("_lunglens.pdf")
    path, _ = QFileDialog.getSaveFileName(win, "Save report", str(default), "PDF (*.pdf)")
    if path:
        win.save_report(path)


def show_about(win: MainWindow) -> None:
    """Help ▸ About: version and the triage-aid notice, in the status bar."""
    win.show_status(f"LungLens {__version__} — offline, no network use. {DISCLAIMER}", 15000)
