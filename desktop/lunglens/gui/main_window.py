"""The LungLens main window: viewer, classification, CAM, gallery, batch, reports.

The window wires widgets to core functions and owns the state of the open scan. Everything that
takes time (loading, classification, a slice's CAM, the gallery, batch scoring, the PDF) runs in
the :class:`~lunglens.gui.workers.WorkerPool`; slots only copy results into widgets. Each job
carries the id of the scan it was started for, so a result arriving after the user opened another
scan is dropped instead of being shown on the wrong image.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QByteArray, QRect, QSize, Qt, Signal
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QGuiApplication,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QComboBox,
    QDockWidget,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMenu,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from lunglens import DISCLAIMER, __version__
from lunglens.errors import LungLensError, ModelError, NotChestImage
from lunglens.explain import cam_map, colorize, overlay, raw_cam, save_png
from lunglens.explain.overlay import to_uint8
from lunglens.gui.banner import ErrorBanner
from lunglens.gui.batch_panel import BatchPanel
from lunglens.gui.cam_controls import CamControls
from lunglens.gui.classify_panel import AUTO, ClassifyPanel
from lunglens.gui.gallery_dock import GalleryDock
from lunglens.gui.image_view import ImageView
from lunglens.gui.scroll import scrollable
from lunglens.gui.settings import Settings
from lunglens.gui.tags_panel import TagsPanel
from lunglens.gui.workers import Worker, WorkerPool
from lunglens.inference import (
    Cancelled,
    GateVerdict,
    ModalityCheck,
    ScanResult,
    check_chest,
    check_modality,
    classify_scan,
    get_engine,
    label_index,
    routing_modality,
)
from lunglens.io import Scan, discover_sources, load_scan, load_source
from lunglens.io.dicom_file import percentile_window
from lunglens.models import ModelInfo, default_model_for, list_models
from lunglens.preprocess import WINDOW_PRESETS, Window

_scan_ids = itertools.count(1)

IMAGE_FILTER = "Scans (*.dcm *.dicom *.ima *.png *.jpg *.jpeg *.tif *.tiff *.bmp);;All files (*)"


def load_target(target: str) -> Scan:
    """Worker body: open a path or a batch results key (``folder#SeriesInstanceUID``)."""
    if "#" in target and not os.path.exists(target):
        folder = target.rsplit("#", 1)[0]
        sources, _errors = discover_sources(Path(folder), recursive=False)
        for src in sources:
            if src.key == target:
                return load_source(src)
        return load_scan(folder)
    return load_scan(target)


def load_and_check(
    target: str, models_dir: Any = None
) -> tuple[Scan, ModalityCheck | None, GateVerdict]:
    """Worker body: :func:`load_target`, the chest-image gate (a refused scan is shown, with
    the reason, but never scored) and the image-level modality check for plain images (they
    carry no DICOM Modality, so the check picks the default model family)."""
    scan = load_target(target)
    verdict = check_chest(scan, models_dir)
    check = None
    if verdict.accepted and scan.modality not in ("ct", "cxr"):
        check = check_modality(scan, models_dir)
    return scan, check, verdict


def slice_cam(info: ModelInfo, image2d: np.ndarray) -> np.ndarray:
    """Worker body: raw ``[C, h, w]`` CAM of one slice with the cached engine."""
    return raw_cam(get_engine(info), image2d)


def write_pdf(
    scan: Scan, result: ScanResult, out_pdf: str, anonymize: bool = False, colormap: str = "jet"
) -> Path:
    """Worker body: the core one-page PDF (matplotlib takes a moment)."""
    from lunglens.report import scan_pdf

    return Path(scan_pdf(scan, result, out_pdf, anonymize=anonymize, colormap=colormap))


#: Smallest height of the classification dock's content: down to the predicted label, and
#: small enough that viewer + gallery + batch dock fit a 1366x768 screen.
CLASSIFY_MIN_HEIGHT = 160
#: Smallest height of the batch dock's content (its form, buttons and progress; the table and
#: the rest scroll): with every dock open the window fits a 1366x768 screen under a title bar
#: and a taskbar (``MAX_WINDOW_MIN_HEIGHT``).
BATCH_MIN_HEIGHT = 150
#: The batch dock's height the first time it opens (form, progress and 2-3 table rows); the
#: user's own size is kept from then on (window state in the settings).
BATCH_DEFAULT_HEIGHT = 290
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


class MainWindow(QMainWindow):
    """The viewer.

    Parameters
    ----------
    settings
        Persistent settings; tests pass one backed by a temporary INI file.
    models_dir
        Folder of models (default: the registry's search order).

    Signals
    -------
    scanLoaded(object)
        A scan is displayed (the :class:`~lunglens.io.Scan`).
    resultReady(object)
        A classification finished for the open scan (:class:`ScanResult`).
    errorShown(str)
        A message went to the error banner.
    camReady()
        The CAM of the current slice is on screen (or ready to be).
    """

    scanLoaded = Signal(object)
    resultReady = Signal(object)
    errorShown = Signal(str)
    camReady = Signal()
    reportSaved = Signal(str)

    def __init__(
        self, settings: Settings | None = None, models_dir: str | os.PathLike[str] | None = None
    ) -> None:
        super().__init__()
        self.settings = settings or Settings()
        self.models_dir = models_dir
        self.pool = WorkerPool(self)
        self.scan: Scan | None = None
        self.gate: GateVerdict | None = None
        self.scan_id = 0
        self.slice_index = 0
        self.display_window: Window | None = None
        self.result: ScanResult | None = None
        self.result_info: ModelInfo | None = None
        self.raw_cams: dict[int, np.ndarray] = {}
        self.heat_cache: dict[tuple[int, str, str], np.ndarray] = {}
        self.models: list[ModelInfo] = []
        #: Default model of the open scan's modality (used in automatic mode).
        self.auto_info: ModelInfo | None = None
        self._load_worker: Worker | None = None
        self._classify_worker: Worker | None = None
        self._cam_worker: Worker | None = None
        self._cam_pending: int | None = None

        self.setWindowTitle("LungLens")
        self.setAcceptDrops(True)
        self.setDockNestingEnabled(True)
        self._build_central()
        self._build_docks()
        self._build_status()
        self._build_actions()
        self.reload_models()
        self._restore()

    # construction -------------------------------------------------------------------------
    def _build_central(self) -> None:
        self.banner = ErrorBanner()
        self.view = ImageView()
        self.view.hovered.connect(self._on_hover)
        self.view.windowDragged.connect(self._on_window_drag)
        self.view.sliceStep.connect(lambda step: self.set_slice(self.slice_index + step))
        self.view.zoomChanged.connect(lambda s: self.zoom_label.setText(f"{s * 100:.0f}%"))
        self.placeholder = QLabel(
            "Open a chest CT or X-ray: File ▸ Open (Ctrl+O), a DICOM folder (Ctrl+Shift+O), "
            "or drop a file here."
        )
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setWordWrap(True)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, 0)
        self.slider.setToolTip("Slice (wheel, PgUp/PgDn)")
        self.slider.valueChanged.connect(self.set_slice)
        self.slice_label = QLabel("")
        self.slice_label.setMinimumWidth(110)
        self.window_combo = QComboBox()
        self.window_combo.addItem("Window: as loaded", "")
        for name, w in WINDOW_PRESETS.items():
            self.window_combo.addItem(f"{name.capitalize()} (W{w.width:g} L{w.center:g})", name)
        self.window_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.window_combo.setMinimumContentsLength(12)
        self.window_combo.setToolTip("CT window presets; right-drag on the image adjusts W/L")
        self.window_combo.activated.connect(self._on_window_combo)
        self.window_label = QLabel("")
        self.window_label.setMinimumWidth(90)
        self.fit_button = QPushButton("Fit")
        self.fit_button.setToolTip("Fit the image (F)")
        self.fit_button.clicked.connect(self.view.fit)
        self.one_button = QPushButton("1:1")
        self.one_button.setToolTip("One image pixel per screen pixel (1)")
        self.one_button.clicked.connect(self.view.actual_size)

        bar = QHBoxLayout()
        bar.addWidget(self.slider, 1)
        bar.addWidget(self.slice_label)
        bar.addWidget(self.window_combo)
        bar.addWidget(self.window_label)
        bar.addWidget(self.fit_button)
        bar.addWidget(self.one_button)
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.banner)
        layout.addWidget(self.placeholder, 1)
        layout.addWidget(self.view, 1)
        layout.addLayout(bar)
        self.view.hide()
        self.setCentralWidget(central)
        self._set_viewer_enabled(False)

    def _build_docks(self) -> None:
        self.classify_panel = ClassifyPanel()
        self.classify_panel.classifyRequested.connect(self.classify)
        self.classify_panel.cancelRequested.connect(self.cancel_classification)
        self.classify_panel.modelChanged.connect(self._on_model_changed)
        self.classify_panel.sliceRequested.connect(self.set_slice)
        self.cam_controls = CamControls()
        self.cam_controls.set_opacity(self.settings.opacity())
        self.cam_controls.set_colormap(self.settings.colormap())
        self.view.set_overlay_opacity(self.cam_controls.alpha())
        self.cam_controls.toggled.connect(self._on_cam_toggled)
        self.cam_controls.opacityChanged.connect(self._on_opacity)
        self.cam_controls.classChanged.connect(lambda _c: self.update_cam())
        self.cam_controls.colormapChanged.connect(self._on_colormap)
        self.cam_controls.exportRequested.connect(self._export_png_dialog)
        side = QWidget()
        sv = QVBoxLayout(side)
        sv.addWidget(self.classify_panel, 1)
        sv.addWidget(self.cam_controls)
        # The prediction and probability bars must stay in view when the gallery and batch
        # docks take their share of the screen (seen squeezed to the model chooser at 1400x900).
        scroll = scrollable(side, CLASSIFY_MIN_HEIGHT, min_width=300)
        self.classify_dock = QDockWidget("Classification")
        self.classify_dock.setObjectName("classify_dock")
        self.classify_dock.setWidget(scroll)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.classify_dock)

        self.tags_panel = TagsPanel()
        self.tags_dock = QDockWidget("Scan information")
        self.tags_dock.setObjectName("tags_dock")
        self.tags_dock.setWidget(self.tags_panel)
        self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, self.tags_dock)

        self.gallery = GalleryDock(self.pool)
        self.gallery.visibilityChanged.connect(self._on_gallery_visible)
        self.gallery.failed.connect(lambda m: self.show_error(f"Activation gallery: {m}"))
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.gallery)
        self.gallery.hide()

        self.batch_panel = BatchPanel(self.pool)
        self.batch_panel.openRequested.connect(self.open_path)
        self.batch_panel.errorOccurred.connect(self.show_error)
        self.batch_dock = QDockWidget("Batch scoring")
        self.batch_dock.setObjectName("batch_dock")
        self.batch_dock.setWidget(scrollable(self.batch_panel, BATCH_MIN_HEIGHT))
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.batch_dock)
        self.batch_dock.hide()

    def _build_status(self) -> None:
        self.pixel_label = QLabel("")
        self.pixel_label.setMinimumWidth(150)
        self.zoom_label = QLabel("")
        self.status_progress_label = QLabel("")
        sb = self.statusBar()
        sb.addPermanentWidget(self.status_progress_label)
        sb.addPermanentWidget(self.pixel_label)
        sb.addPermanentWidget(self.zoom_label)
        disclaimer = QLabel("Triage aid only")  # full text in the panel; keeps the bar narrow
        disclaimer.setToolTip(DISCLAIMER)
        disclaimer.setStyleSheet("color: #8a6d00;")
        sb.addPermanentWidget(disclaimer)

    def _action(
        self,
        text: str,
        slot: Any,
        shortcut: QKeySequence | QKeySequence.StandardKey | str | None = None,
        tip: str = "",
    ) -> QAction:
        act = QAction(text, self)
        if shortcut is not None:
            act.setShortcut(QKeySequence(shortcut))
        if tip:
            act.setStatusTip(tip)
        act.triggered.connect(slot)
        self.addAction(act)  # shortcuts work even when the menu bar is hidden
        return act

    def _build_actions(self) -> None:
        a = self._action
        self.open_action = a("&Open scan…", self._open_file_dialog, QKeySequence.StandardKey.Open)
        self.open_folder_action = a(
            "Open &folder (DICOM series)…", self._open_folder_dialog, "Ctrl+Shift+O"
        )
        self.recent_menu = QMenu("Open &recent", self)
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        self.pdf_action = a(
            "Save &report PDF…",
            self._save_pdf_dialog,
            "Ctrl+P",
            "One-page PDF of the current result",
        )
        self.anonymize_action = QAction("&Anonymize PDF reports", self)
        self.anonymize_action.setCheckable(True)
        self.anonymize_action.setChecked(self.settings.anonymize_reports())
        self.anonymize_action.setStatusTip(
            "Leave patient ID and name, study date and accession number out of PDF reports"
        )
        self.anonymize_action.toggled.connect(self.settings.set_anonymize_reports)
        self.export_action = a("&Export CAM overlay PNG…", self._export_png_dialog, "Ctrl+E")
        quit_action = a("&Quit", self.close, QKeySequence.StandardKey.Quit)
        file_menu = self.menuBar().addMenu("&File")
        file_menu.addAction(self.open_action)
        file_menu.addAction(self.open_folder_action)
        file_menu.addMenu(self.recent_menu)
        file_menu.addSeparator()
        file_menu.addAction(self.pdf_action)
        file_menu.addAction(self.anonymize_action)
        file_menu.addAction(self.export_action)
        file_menu.addSeparator()
        file_menu.addAction(quit_action)

        self.fit_action = a("&Fit", self.view.fit, "F")
        self.actual_action = a("&1:1", self.view.actual_size, "1")
        self.zoom_in_action = a(
            "Zoom &in", lambda: self.view.zoom(1.25), QKeySequence.StandardKey.ZoomIn
        )
        self.zoom_out_action = a(
            "Zoom &out", lambda: self.view.zoom(0.8), QKeySequence.StandardKey.ZoomOut
        )
        self.cam_action = a("Toggle &CAM overlay", self.toggle_cam, "C")
        self.next_action = a("&Next slice", lambda: self.set_slice(self.slice_index + 1), "PgDown")
        self.prev_action = a(
            "&Previous slice", lambda: self.set_slice(self.slice_index - 1), "PgUp"
        )
        self.first_action = a("First slice", lambda: self.set_slice(0), "Home")
        self.last_action = a("Last slice", lambda: self.set_slice(10**9), "End")
        view_menu = self.menuBar().addMenu("&View")
        for act in (
            self.fit_action,
            self.actual_action,
            self.zoom_in_action,
            self.zoom_out_action,
            self.cam_action,
            self.next_action,
            self.prev_action,
        ):
            view_menu.addAction(act)
        wl_menu = view_menu.addMenu("&Window (CT)")
        for i, name in enumerate(WINDOW_PRESETS):
            wl_menu.addAction(
                a(name.capitalize(), lambda _c=False, n=name: self.set_window(n), f"Ctrl+{i + 1}")
            )
        wl_menu.addAction(a("As loaded", lambda: self.set_window(None), "Ctrl+0"))
        view_menu.addSeparator()
        for dock in (self.classify_dock, self.tags_dock, self.gallery, self.batch_dock):
            view_menu.addAction(dock.toggleViewAction())
        self.gallery.toggleViewAction().setShortcut(QKeySequence("G"))
        self.batch_dock.toggleViewAction().setShortcut(QKeySequence("Ctrl+B"))

        self.classify_action = a("&Classify", self.classify, "Ctrl+Return")
        analysis = self.menuBar().addMenu("&Analysis")
        analysis.addAction(self.classify_action)
        analysis.addAction(self.gallery.toggleViewAction())
        analysis.addAction(self.batch_dock.toggleViewAction())
        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction(a("&About LungLens", self._about))

    def _restore(self) -> None:
        geometry = self.settings.geometry()
        if geometry is not None:
            self.restoreGeometry(geometry)  # the user's own size and place from last time
        else:
            screen = self.screen() or QGuiApplication.primaryScreen()
            avail = screen.availableGeometry() if screen is not None else None
            size = first_run_size(avail)
            self.resize(size)
            if avail is not None:  # centred on the work area (under any panel or taskbar)
                self.move(
                    avail.x() + max(0, (avail.width() - size.width()) // 2),
                    avail.y() + max(0, (avail.height() - size.height()) // 2),
                )
            # First run: room for the attribute values and the panel, the image gets the rest.
            side = 260 if size.width() < 1500 else 300
            self.resizeDocks(
                [self.tags_dock, self.classify_dock], [side, 360], Qt.Orientation.Horizontal
            )
        state = self.settings.state()
        if state is not None:
            self.restoreState(state)
        else:  # first run: Qt would split the height evenly and shrink the scan to a strip
            self.batch_dock.visibilityChanged.connect(self._first_batch_dock_height)
        last = self.settings.last_folder()
        if last:
            self.batch_panel.set_folder(last)

    def _first_batch_dock_height(self, visible: bool) -> None:
        if visible:
            self.batch_dock.visibilityChanged.disconnect(self._first_batch_dock_height)
            self.resizeDocks([self.batch_dock], [BATCH_DEFAULT_HEIGHT], Qt.Orientation.Vertical)

    def reload_models(self) -> None:
        """Re-read the model registry (manifests only; hashing happens in the worker)."""
        try:
            self.models = list_models(self.models_dir)
        except Exception as exc:  # a broken models folder must not stop the viewer
            self.models = []
            self.show_error(f"Could not list models: {exc}")
        self.classify_panel.set_models(self.models)
        self.batch_panel.set_models(self.models)
        if not self.models:
            self.show_error(
                "No model is installed, so scans cannot be classified. "
                "Reinstall LungLens or set LUNGLENS_MODELS_DIR."
            )

    # messages -----------------------------------------------------------------------------
    def show_error(self, message: str) -> None:
        """Non-blocking error: banner above the image plus the status bar."""
        self.banner.show_message(message)
        self.statusBar().showMessage(message, 15000)
        self.errorShown.emit(message)

    def show_status(self, message: str, msecs: int = 8000) -> None:
        self.statusBar().showMessage(message, msecs)

    def _about(self) -> None:
        self.show_status(f"LungLens {__version__} — offline, no network use. {DISCLAIMER}", 15000)

    # opening ------------------------------------------------------------------------------
    def _open_file_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open scan", self.settings.last_folder(), IMAGE_FILTER
        )
        if path:
            self.open_path(path)

    def _open_folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Open DICOM series folder", self.settings.last_folder()
        )
        if folder:
            self.open_path(folder)

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = self.settings.recent_files()
        for path in recent:
            act = self.recent_menu.addAction(path)
            act.triggered.connect(lambda _c=False, p=path: self.open_path(p))
        if not recent:
            self.recent_menu.addAction("(none)").setEnabled(False)
        else:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear", self.settings.clear_recent)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            self.open_path(paths[0])
            event.acceptProposedAction()

    def open_path(self, path: str) -> None:
        """Load ``path`` (file, folder or batch results key) in a worker; shows it when done."""
        if self._load_worker is not None:
            self._load_worker.cancel()  # its result will be ignored
        worker = Worker(load_and_check, str(path), self.models_dir)
        worker.signals.result.connect(
            lambda res, w=worker, p=str(path): self._on_loaded(w, p, *res)
        )
        worker.signals.error.connect(
            lambda exc, w=worker: None if w.cancelled else self.show_error(_message(exc))
        )
        worker.signals.finished.connect(lambda w=worker: self._on_load_finished(w))
        self._load_worker = worker
        self.status_progress_label.setText(f"Loading {Path(str(path).split('#')[0]).name}…")
        self.pool.start(worker)

    def _on_load_finished(self, worker: Worker) -> None:
        if worker is self._load_worker:
            self._load_worker = None
            self.status_progress_label.setText("")

    def _on_loaded(
        self,
        worker: Worker,
        path: str,
        scan: Scan,
        check: ModalityCheck | None = None,
        verdict: GateVerdict | None = None,
    ) -> None:
        if worker.cancelled:
            return
        self.banner.dismiss()
        self.set_scan(scan, check, verdict)
        real = path.split("#")[0] if "#" in path and not os.path.exists(path) else path
        self.settings.add_recent(real)
        folder = real if os.path.isdir(real) else str(Path(real).parent)
        self.settings.set_last_folder(folder)
        if self.settings.auto_classify() and self.models:
            self.classify()

    def set_scan(
        self, scan: Scan, check: ModalityCheck | None = None, verdict: GateVerdict | None = None
    ) -> None:
        """Display ``scan`` and reset everything derived from the previous one.

        ``check`` is the image-level modality check of a plain image (computed by the loading
        worker); it picks the default model family. ``verdict`` is the chest-image gate's
        (``None``: not run yet; :meth:`classify` still refuses through the core).
        """
        self.cancel_classification()
        self.scan = scan
        self.gate = verdict
        self.scan_id = next(_scan_ids)
        self.result = None
        self.result_info = None
        self.raw_cams.clear()
        self.heat_cache.clear()
        self.gallery.clear_cache()
        self.display_window = scan.window if scan.raw is not None else None
        self.window_combo.setCurrentIndex(0)
        self.view.series_mode = scan.n_slices > 1
        self.slider.blockSignals(True)
        self.slider.setRange(0, scan.n_slices - 1)
        self.slider.setValue(0)
        self.slider.blockSignals(False)
        self.slider.setVisible(scan.n_slices > 1)
        self._set_viewer_enabled(True)
        self.window_combo.setEnabled(scan.raw is not None and scan.modality == "ct")
        self.placeholder.hide()
        self.view.show()
        self.view.fit_mode = True
        self.slice_index = 0
        self.tags_panel.show_scan(scan)
        self._choose_model_for(scan, check)
        self.classify_panel.clear_result("Not classified yet")
        if verdict is not None and not verdict.accepted:
            self.classify_panel.show_refusal(verdict.reason)
        self.cam_controls.set_available(False)
        self.view.set_overlay(None)
        self.setWindowTitle(f"LungLens — {Path(scan.source.split('#')[0]).name}")
        self._render()
        self._update_gallery_context()
        for note in scan.notes:
            self.show_status(note)
        self.scanLoaded.emit(scan)

    def _choose_model_for(self, scan: Scan, check: ModalityCheck | None = None) -> None:
        """Each opened scan starts in automatic mode (its modality's default model); a model
        picked by hand applies to the scan it was picked for."""
        self.auto_info = None
        if self.models:
            self.classify_panel.select_model(AUTO)
        try:
            info = default_model_for(routing_modality(scan, check), self.models_dir)
        except ModelError:
            if scan.modality == "unknown" and self.models:
                self.show_status(
                    "Plain image without modality and no modality check installed: choose "
                    "the model (CT or X-ray) that fits it.",
                    15000,
                )
            return
        self.auto_info = info
        if scan.modality not in ("ct", "cxr") and check is not None:
            self.show_status(
                f"Plain image: it {check.looks_like()}, so {info.name} was chosen; "
                "pick another model in the list if that is wrong.",
                15000,
            )

    def chosen_model(self) -> ModelInfo | None:
        """The model the next classification uses: the one picked, or in automatic mode the
        default of the open scan's modality (``None`` when it cannot be decided)."""
        if self.classify_panel.is_auto():
            return self.auto_info
        return self.classify_panel.current_model()

    def _set_viewer_enabled(self, on: bool) -> None:
        for w in (self.slider, self.window_combo, self.fit_button, self.one_button):
            w.setEnabled(on)

    # display ------------------------------------------------------------------------------
    def display_image(self, index: int | None = None) -> np.ndarray:
        """Float [0, 1] slice as displayed: re-windowed by the core when W/L was changed."""
        assert self.scan is not None
        i = self.slice_index if index is None else index
        if (
            self.display_window is not None
            and self.scan.raw is not None
            and self.display_window != self.scan.window
        ):
            return self.display_window.apply(self.scan.raw[i], invert=self.scan.inverted)
        return self.scan.image[i]

    def _render(self) -> None:
        if self.scan is None:
            return
        self.view.set_image(to_uint8(self.display_image()))
        self._update_slice_label()
        self._update_window_label()
        self.update_cam()

    def set_slice(self, index: int) -> None:
        """Show slice ``index`` (clamped) of the series."""
        if self.scan is None:
            return
        index = int(min(max(index, 0), self.scan.n_slices - 1))
        if index == self.slice_index and self.view.has_image():
            if self.slider.value() != index:
                self.slider.setValue(index)
            return
        self.slice_index = index
        if self.slider.value() != index:
            self.slider.blockSignals(True)
            self.slider.setValue(index)
            self.slider.blockSignals(False)
        self._render()
        self._update_gallery_context()

    def _update_slice_label(self) -> None:
        scan = self.scan
        if scan is None or scan.n_slices <= 1:
            self.slice_label.setText("")
            return
        text = f"Slice {self.slice_index + 1}/{scan.n_slices}"
        if scan.slice_positions is not None and self.slice_index < len(scan.slice_positions):
            text += f" · {scan.slice_positions[self.slice_index]:.1f} mm"
        self.slice_label.setText(text)

    def _update_window_label(self) -> None:
        w = self.display_window
        self.window_label.setText(f"W {w.width:.0f}  L {w.center:.0f}" if w is not None else "")

    def set_window(self, window: Window | str | None) -> None:
        """Apply a CT preset name, a :class:`Window`, or ``None`` (as loaded)."""
        if self.scan is None or self.scan.raw is None:
            self.show_status("Window/level needs modality values (DICOM); plain images have none.")
            return
        if isinstance(window, str):
            if self.scan.modality != "ct":
                self.show_status("Window presets are in Hounsfield units (CT only).")
                return
            window = WINDOW_PRESETS[window]
            self.window_combo.setCurrentIndex(self.window_combo.findData(window.name))
        elif window is None:
            self.window_combo.setCurrentIndex(0)
        self.display_window = window if window is not None else self.scan.window
        self._render()

    def _on_window_combo(self, index: int) -> None:
        name = self.window_combo.itemData(index)
        self.set_window(str(name) if name else None)

    def _on_window_drag(self, dx: int, dy: int) -> None:
        """Right-drag: horizontal changes width, vertical changes level (as most viewers)."""
        if self.scan is None or self.scan.raw is None:
            return
        w = self.display_window
        if w is None:  # a VOI LUT was applied at load: start from the slice's own range
            w = percentile_window(self.scan.raw[self.slice_index])
        step = max(1.0, w.width / 256.0)
        self.display_window = Window(w.center + dy * step, max(1.0, w.width + dx * step), "custom")
        self.window_combo.setCurrentIndex(0)
        self.window_combo.setItemText(0, "Window: custom")
        self._render()

    def _on_hover(self, x: int, y: int) -> None:
        scan = self.scan
        if scan is None or x < 0:
            self.pixel_label.setText("")
            return
        i = self.slice_index
        if scan.raw is not None:
            value = float(scan.raw[i, y, x])
            unit = "HU" if scan.modality == "ct" else "value"
            self.pixel_label.setText(f"({x}, {y})  {unit} {value:.0f}")
        else:
            self.pixel_label.setText(f"({x}, {y})  gray {float(scan.image[i, y, x]):.3f}")

    # classification -----------------------------------------------------------------------
    def classify(self) -> None:
        """Classify the open scan with the chosen model in a worker."""
        if self.scan is None:
            self.show_status("Open a scan first.")
            return
        if self.gate is not None and not self.gate.accepted:
            self.classify_panel.show_refusal(self.gate.reason)
            self.show_status(f"Not scored: not a chest scan ({self.gate.reason}).")
            return
        info = self.chosen_model()
        if info is None:
            if not self.models:
                self.show_error("No model is installed, so the scan cannot be classified.")
            else:
                self.show_error(
                    "The scan's modality is unknown (plain image) and no modality check is "
                    "installed: choose a CT or X-ray model in the list."
                )
            return
        self.cancel_classification()
        worker = Worker(
            classify_scan,
            self.scan,
            info,
            with_cam=True,
            cam_class=None,
            pass_progress=True,
            pass_cancel=True,
        )
        sid = self.scan_id
        worker.signals.progress.connect(self.classify_panel.set_progress)
        worker.signals.result.connect(
            lambda res, w=worker, i=info: self._on_classified(w, sid, i, res)
        )
        worker.signals.error.connect(lambda exc, w=worker: self._on_classify_error(w, exc))
        worker.signals.finished.connect(lambda w=worker: self._on_classify_finished(w))
        self._classify_worker = worker
        self.classify_panel.set_running(True)
        self.pool.start(worker)

    def cancel_classification(self) -> None:
        if self._classify_worker is not None:
            self._classify_worker.cancel()
            self._classify_worker = None
            self.classify_panel.set_running(False)
            self.classify_panel.clear_result("Cancelled")

    def _on_classify_finished(self, worker: Worker) -> None:
        if worker is self._classify_worker:
            self._classify_worker = None
            self.classify_panel.set_running(False)

    def _on_classify_error(self, worker: Worker, exc: BaseException) -> None:
        if worker.cancelled or isinstance(exc, Cancelled):
            return
        if isinstance(exc, NotChestImage):
            self.classify_panel.show_refusal(exc.reason.removeprefix("not a chest scan: "))
            return
        self.classify_panel.clear_result("Classification failed")
        self.show_error(f"Classification failed: {_message(exc)}")

    def _on_classified(self, worker: Worker, sid: int, info: ModelInfo, result: ScanResult) -> None:
        if worker.cancelled or sid != self.scan_id or self.scan is None:
            return
        self.result = result
        self.result_info = info
        self.raw_cams.clear()
        self.heat_cache.clear()
        if result.cam is not None:
            self.raw_cams[result.representative_slice] = result.cam
        self.classify_panel.show_result(result, self.scan.slice_positions)
        self.cam_controls.set_classes(result.labels, result.cam_class)
        self.cam_controls.set_available(result.cam is not None)
        self.batch_panel.set_models(self.models, self.classify_panel.current_model_name())
        if self.scan.n_slices > 1:
            self.set_slice(result.representative_slice)
        self.update_cam()
        self._update_gallery_context()
        self.show_status(
            f"{Path(result.source.split('#')[0]).name}: {result.headline}, "
            f"with {info.name} v{info.version}"
        )
        self.resultReady.emit(result)

    def _on_model_changed(self, _name: str) -> None:
        self._update_gallery_context()
        if self.scan is not None and (
            self.result is not None or self._classify_worker or self.settings.auto_classify()
        ):
            self.classify()

    # CAM ----------------------------------------------------------------------------------
    def toggle_cam(self) -> None:
        """C: show or hide the overlay."""
        if self.cam_controls.show_box.isEnabled():
            self.cam_controls.show_box.toggle()
        else:
            self.show_status("No CAM yet: classify the scan first.")

    def _on_cam_toggled(self, on: bool) -> None:
        self.view.set_overlay_visible(on)
        self.update_cam()

    def _on_opacity(self, alpha: float) -> None:
        self.view.set_overlay_opacity(alpha)
        self.settings.set_opacity(alpha)

    def _on_colormap(self, name: str) -> None:
        self.settings.set_colormap(name)
        self.update_cam()

    def current_heat(self) -> np.ndarray | None:
        """Colored heat map (RGBA uint8, transparent low end) of the current slice and class,
        if computed."""
        if self.scan is None or self.result is None:
            return None
        raw = self.raw_cams.get(self.slice_index)
        if raw is None:
            return None
        cls = self.cam_controls.current_class() or self.result.cam_class
        cmap = self.cam_controls.colormap()
        key = (self.slice_index, cls, cmap)
        heat = self.heat_cache.get(key)
        if heat is None:
            image = self.scan.image[self.slice_index]
            info = self.result_info
            idx = label_index(info, cls) if info is not None else self.result.labels.index(cls)
            heat = colorize(cam_map(raw, idx, image.shape), cmap)
            self.heat_cache = {k: v for k, v in self.heat_cache.items() if k[0] == key[0]}
            self.heat_cache[key] = heat
        return heat

    def update_cam(self) -> None:
        """Show the CAM of the current slice, computing it in a worker when missing."""
        if not self.cam_controls.is_shown() or self.result is None or self.scan is None:
            self.view.set_overlay_visible(False)
            return
        if self.slice_index not in self.raw_cams:
            self.view.set_overlay_visible(False)
            self._request_slice_cam(self.slice_index)
            return
        heat = self.current_heat()
        self.view.set_overlay(heat)
        self.view.set_overlay_visible(heat is not None)
        self.cam_controls.status_label.setText(
            f"CAM of slice {self.slice_index + 1}" if self.scan.n_slices > 1 else ""
        )
        self.camReady.emit()

    def _request_slice_cam(self, index: int) -> None:
        info = self.result_info
        if info is None or self.scan is None or self._cam_pending == index:
            return
        if self._cam_worker is not None:
            self._cam_worker.cancel()
        worker = Worker(slice_cam, info, self.scan.image[index])
        sid = self.scan_id
        worker.signals.result.connect(
            lambda cam, w=worker, i=index: self._on_slice_cam(w, sid, i, cam)
        )
        worker.signals.error.connect(lambda exc: self.show_error(f"CAM failed: {_message(exc)}"))
        worker.signals.finished.connect(lambda w=worker: self._on_cam_finished(w))
        self._cam_worker, self._cam_pending = worker, index
        self.cam_controls.status_label.setText(f"Computing the CAM of slice {index + 1}…")
        self.pool.start(worker)

    def _on_slice_cam(self, worker: Worker, sid: int, index: int, cam: np.ndarray) -> None:
        if sid != self.scan_id:
            return
        self.raw_cams[index] = cam
        if len(self.raw_cams) > 64:  # bound memory on long series: keep the latest maps
            for k in list(self.raw_cams)[:-64]:
                if self.result is None or k != self.result.representative_slice:
                    self.raw_cams.pop(k, None)
        if index == self.slice_index:
            self.update_cam()

    def _on_cam_finished(self, worker: Worker) -> None:
        if worker is self._cam_worker:
            self._cam_worker = None
            self._cam_pending = None

    def export_cam_png(self, path: str) -> Path:
        """Write the displayed slice with the CAM blended at the chosen opacity (core overlay)."""
        if self.scan is None or self.result is None:
            raise RuntimeError("classify a scan before exporting its CAM")
        raw = self.raw_cams.get(self.slice_index)
        if raw is None:
            raise RuntimeError("the CAM of this slice is still being computed")
        info = self.result_info
        cls = self.cam_controls.current_class() or self.result.cam_class
        idx = label_index(info, cls) if info is not None else self.result.labels.index(cls)
        image = self.display_image()
        rgb = overlay(
            image,
            cam_map(raw, idx, image.shape),
            alpha=self.cam_controls.alpha(),
            colormap=self.cam_controls.colormap(),
        )
        save_png(rgb, path)
        return Path(path)

    def _export_png_dialog(self) -> None:
        if self.result is None:
            self.show_status("Classify the scan before exporting its CAM.")
            return
        stem = Path(self.result.source.split("#")[0]).stem
        default = str(Path(self.settings.last_folder() or ".") / f"{stem}_cam.png")
        path, _ = QFileDialog.getSaveFileName(self, "Export CAM overlay", default, "PNG (*.png)")
        if path:
            try:
                self.show_status(f"Saved {self.export_cam_png(path)}")
            except (OSError, RuntimeError, ValueError) as exc:
                self.show_error(f"Could not export the PNG: {exc}")

    # report -------------------------------------------------------------------------------
    def save_report(self, path: str) -> Worker | None:
        """Write the one-page PDF of the current result in a worker."""
        if self.scan is None or self.result is None:
            self.show_status("Classify the scan before saving a report.")
            return None
        worker = Worker(
            write_pdf,
            self.scan,
            self.result,
            path,
            self.anonymize_action.isChecked(),
            self.cam_controls.colormap(),
        )
        worker.signals.result.connect(self._on_report_saved)
        worker.signals.error.connect(lambda exc: self.show_error(f"Report failed: {_message(exc)}"))
        self.status_progress_label.setText("Writing PDF…")
        worker.signals.finished.connect(lambda: self.status_progress_label.setText(""))
        self.pool.start(worker)
        return worker

    def _on_report_saved(self, path: Path) -> None:
        self.show_status(f"Report saved: {path}")
        self.reportSaved.emit(str(path))

    def _save_pdf_dialog(self) -> None:
        if self.result is None:
            self.show_status("Classify the scan before saving a report.")
            return
        stem = Path(self.result.source.split("#")[0]).stem
        default = str(Path(self.settings.last_folder() or ".") / f"{stem}_lunglens.pdf")
        path, _ = QFileDialog.getSaveFileName(self, "Save report", default, "PDF (*.pdf)")
        if path:
            self.save_report(path)

    def _on_gallery_visible(self, visible: bool) -> None:
        """Give the gallery most of the right column's height when it is opened."""
        if visible and not self.gallery.isFloating():
            self.resizeDocks([self.classify_dock, self.gallery], [2, 3], Qt.Orientation.Vertical)

    # gallery ------------------------------------------------------------------------------
    def _update_gallery_context(self) -> None:
        info = self.result_info or self.chosen_model()
        image = self.scan.image[self.slice_index] if self.scan is not None else None
        self.gallery.set_context(self.scan_id, self.slice_index, image, info)

    # lifetime -----------------------------------------------------------------------------
    def closeEvent(self, event: QCloseEvent) -> None:
        self.settings.save_window(QByteArray(self.saveGeometry()), QByteArray(self.saveState()))
        self.settings.sync()
        self.pool.cancel_all()
        self.pool.wait(5000)
        super().closeEvent(event)

    def busy(self) -> bool:
        """True while any worker is queued or running (tests wait for idle)."""
        return not self.pool.idle()


def _message(exc: BaseException) -> str:
    """User-facing text of an exception (typed LungLens errors are already sentences)."""
    if isinstance(exc, LungLensError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
