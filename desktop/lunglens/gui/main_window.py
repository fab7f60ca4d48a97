"""The LungLens main window: viewer, classification, CAM, gallery, batch, reports.

The window binds widgets to a :class:`~lunglens.viewer.ViewerState`, which holds the open scan,
its result, the slice, the window and the CAM cache without Qt. Everything that takes time
(loading, classification, a slice's CAM, the gallery, batch scoring, the PDF) runs in the
:class:`~lunglens.gui.workers.WorkerPool`; slots only copy results into the state and widgets.
Each job carries the id of the scan it was started for, so a result arriving after the user
opened another scan is dropped instead of being shown on the wrong image. The central area is
:mod:`~lunglens.gui.viewer_pane`, the CAM overlay :mod:`~lunglens.gui.cam_overlay`, the menus
:mod:`~lunglens.gui.menus`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PySide6.QtCore import QByteArray, Qt, Signal
from PySide6.QtGui import QCloseEvent, QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QDockWidget, QLabel, QMainWindow, QVBoxLayout, QWidget

from lunglens import DISCLAIMER
from lunglens.errors import ModalityUncertain, ModelError, ModelRefused
from lunglens.gui.banner import user_message
from lunglens.gui.batch_panel import BatchPanel
from lunglens.gui.cam_controls import CamControls
from lunglens.gui.cam_overlay import CamOverlay
from lunglens.gui.classify_panel import AUTO, ClassifyPanel
from lunglens.gui.classify_runner import ClassifyRunner
from lunglens.gui.gallery_dock import GalleryDock
from lunglens.gui.menus import build_menus, fill_recent_menu
from lunglens.gui.opening import ScanOpener
from lunglens.gui.scroll import scrollable
from lunglens.gui.settings import Settings
from lunglens.gui.tags_panel import TagsPanel
from lunglens.gui.viewer_pane import ViewerPane
from lunglens.gui.window_layout import BATCH_MIN_HEIGHT, CLASSIFY_MIN_HEIGHT, restore_layout
from lunglens.gui.workers import Worker, WorkerPool
from lunglens.inference import (
    GateVerdict,
    ModalityCheck,
    ScanResult,
    routing_modality,
)
from lunglens.io import SCORED_MODALITIES, Modality, Scan, SourceKey
from lunglens.models import ModelInfo, default_model_for, discover_models
from lunglens.models.manifest import TRIAGE
from lunglens.preprocess import Window
from lunglens.viewer import ViewerState, write_pdf


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
        The CAM of the current slice is on screen.
    reportSaved(str)
        The PDF report was written (its path).
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
        self.state = ViewerState()
        self.refusal_banner = ""  #: the core's last refusal banner, put back after a failed open
        self.models: list[ModelInfo] = []
        self.opener = ScanOpener(self)

        self.setWindowTitle("LungLens")
        self.setAcceptDrops(True)
        self.setDockNestingEnabled(True)
        self._build_central()
        self._build_docks()
        self._build_status()
        self.menu_actions = build_menus(self)
        self.anonymize_action = self.menu_actions.anonymize
        self.recent_menu = self.menu_actions.recent_menu
        self.reload_models()
        restore_layout(self)

    # the open scan, as tests and benchmarks read it ----------------------------------------
    @property
    def scan(self) -> Scan | None:
        return self.state.scan

    @property
    def result(self) -> ScanResult | None:
        return self.state.result

    @property
    def gate(self) -> GateVerdict | None:
        return self.state.gate

    @gate.setter
    def gate(self, verdict: GateVerdict | None) -> None:
        self.state.gate = verdict

    @property
    def slice_index(self) -> int:
        return self.state.slice_index

    @property
    def display_window(self) -> Window | None:
        return self.state.display_window

    @property
    def raw_cams(self) -> dict[int, np.ndarray]:
        return self.state.cams.raw

    @property
    def heat_cache(self) -> dict[tuple[int, str, str], np.ndarray]:
        return self.state.cams.heats

    # construction -------------------------------------------------------------------------
    def _build_central(self) -> None:
        self.pane = ViewerPane(self.state)
        self.banner, self.view, self.placeholder = (
            self.pane.banner,
            self.pane.view,
            self.pane.placeholder,
        )
        self.slider, self.slice_label = self.pane.slider, self.pane.slice_label
        self.window_combo, self.window_label = self.pane.window_combo, self.pane.window_label
        self.view.hovered.connect(self._on_hover)
        self.view.zoomChanged.connect(lambda s: self.zoom_label.setText(f"{s * 100:.0f}%"))
        self.pane.rendered.connect(lambda: self.cam.update())
        self.pane.sliceChanged.connect(lambda _i: self._update_gallery_context())
        self.pane.message.connect(self.show_status)
        self.setCentralWidget(self.pane)

    def _build_docks(self) -> None:
        self.classify_panel = ClassifyPanel()
        self.classify_panel.classifyRequested.connect(self.classify)
        self.classify_panel.cancelRequested.connect(self.cancel_classification)
        self.classify_panel.modelChanged.connect(self._on_model_changed)
        self.classify_panel.sliceRequested.connect(self.set_slice)
        self.classifier = ClassifyRunner(self.pool, self.classify_panel, self)
        self.classifier.classified.connect(self._on_classified)
        self.classifier.failed.connect(self.show_error)
        self.classifier.refused.connect(self._on_refused)
        self.cam_controls = CamControls()
        self.cam = CamOverlay(self.state, self.cam_controls, self.view, self.pool, self.settings)
        self.cam.ready.connect(self.camReady)
        self.cam.failed.connect(self.show_error)
        self.cam.message.connect(self.show_status)
        side = QWidget()
        sv = QVBoxLayout(side)
        sv.addWidget(self.classify_panel, 1)
        sv.addWidget(self.cam_controls)
        # The prediction and probability bars must stay in view when the gallery and batch
        # docks take their share of the screen (seen squeezed to the model chooser at 1400x900).
        scroll = scrollable(side, CLASSIFY_MIN_HEIGHT, min_width=300)
        self.classify_dock = self._add_dock("Classification", "classify_dock", scroll, right=True)
        self.tags_panel = TagsPanel()
        self.tags_dock = self._add_dock("Scan information", "tags_dock", self.tags_panel)

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

    def _add_dock(self, title: str, name: str, widget: QWidget, right: bool = False) -> QDockWidget:
        dock = QDockWidget(title)
        dock.setObjectName(name)  # the key of its place in the saved window state
        dock.setWidget(widget)
        area = (
            Qt.DockWidgetArea.RightDockWidgetArea if right else Qt.DockWidgetArea.LeftDockWidgetArea
        )
        self.addDockWidget(area, dock)
        return dock

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

    def reload_models(self) -> None:
        """Re-read the model registry (manifests only; hashing happens in the worker); the
        banner names refused model folders (e.g. a manifest edited after its seal)."""
        problems: list[ModelError] = []
        try:
            found, problems = discover_models(self.models_dir)
            self.models = [m for m in found if m.task == TRIAGE]
        except Exception as exc:  # a broken models folder must not stop the viewer
            self.models = []
            self.show_error(f"Could not list models: {exc}")
        self.classify_panel.set_models(self.models)
        self.batch_panel.set_models(self.models)
        refused = (
            f"{len(problems)} model folder(s) refused and not offered: "
            + "; ".join(str(p) for p in problems)
            if problems
            else ""
        )
        if not self.models:
            self.show_error(
                "No usable model is installed, so scans cannot be classified. "
                + (refused or "Reinstall LungLens or set LUNGLENS_MODELS_DIR.")
            )
        elif refused:
            self.show_error(refused)

    # messages -----------------------------------------------------------------------------
    def show_error(self, message: str) -> None:
        """Non-blocking error: banner above the image plus the status bar."""
        self.banner.show_message(message)
        self.statusBar().showMessage(message, 15000)
        self.errorShown.emit(message)

    def show_status(self, message: str, msecs: int = 8000) -> None:
        self.statusBar().showMessage(message, msecs)

    # opening ------------------------------------------------------------------------------
    def _fill_recent_menu(self) -> None:
        fill_recent_menu(self.recent_menu, self.settings, self.open_path)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            self.open_path(paths[0])
            event.acceptProposedAction()

    def open_path(self, path: str) -> None:
        """Load ``path`` (file, folder or batch results key) in a worker; shows it when done
        (:class:`~lunglens.gui.opening.ScanOpener`)."""
        self.opener.open(path)

    def set_scan(
        self, scan: Scan, check: ModalityCheck | None = None, verdict: GateVerdict | None = None
    ) -> None:
        """Display ``scan`` and reset everything derived from the previous one.

        ``check`` is the image-level modality check of a plain image (computed by the loading
        worker); it picks the default model family. ``verdict`` is the chest-image gate's
        (``None``: not run yet; :meth:`classify` still refuses through the core).
        """
        self.cancel_classification()
        self.state.open(scan, verdict)
        self.gallery.clear_cache()
        self.pane.show_scan()
        self.tags_panel.show_scan(scan)
        self._choose_model_for(scan, check)
        self.classify_panel.clear_result("Not classified yet")
        if verdict is not None and not verdict.accepted:
            self.classify_panel.show_refusal(verdict.error(scan.source))
        self.cam.reset(self.unscored_reason())
        self.setWindowTitle(f"LungLens — {SourceKey.parse(scan.source).name}")
        self.pane.show_slice()
        self._update_gallery_context()
        for note in scan.notes:
            self.show_status(note)
        self.scanLoaded.emit(scan)

    def _choose_model_for(self, scan: Scan, check: ModalityCheck | None = None) -> None:
        """Each opened scan starts in automatic mode (its modality's default model); a model
        picked by hand applies to the scan it was picked for."""
        if self.models:
            self.classify_panel.select_model(AUTO)
        try:
            info = default_model_for(routing_modality(scan, check), self.models_dir)
        except ModalityUncertain as exc:  # the check and the gate disagree: no model, no score
            self.state.unrouted = exc.reason
            self.show_status(f"No model chosen: {exc.reason}. Pick one in the list.", 15000)
            return
        except ModelRefused as exc:  # the model automatic mode uses is refused: not another
            self.state.unrouted = exc.reason
            self.show_error(str(exc))
            return
        except ModelError:
            if scan.modality == Modality.UNKNOWN and self.models:
                self.show_status(
                    "Plain image without modality and no modality check installed: choose "
                    "the model (CT or X-ray) that fits it.",
                    15000,
                )
            return
        self.state.auto_model = info
        if scan.modality not in SCORED_MODALITIES and check is not None:
            self.show_status(
                f"Plain image: it {check.looks_like()}, so {info.name} was chosen; "
                "pick another model in the list if that is wrong.",
                15000,
            )

    def chosen_model(self) -> ModelInfo | None:
        """The model the next classification uses: the one picked, or in automatic mode the
        default of the open scan's modality (``None`` when it cannot be decided)."""
        if self.classify_panel.is_auto():
            return self.state.auto_model
        return self.classify_panel.current_model()

    # display ------------------------------------------------------------------------------
    def set_slice(self, index: int) -> None:
        """Show slice ``index`` (clamped) of the series."""
        self.pane.set_slice(index)

    def set_window(self, window: Window | str | None) -> None:
        """Apply a CT preset name, a :class:`Window`, or ``None`` (as loaded)."""
        self.pane.set_window(window)

    def _on_window_drag(self, dx: int, dy: int) -> None:
        self.pane.drag_window(dx, dy)

    def _on_hover(self, x: int, y: int) -> None:
        self.pixel_label.setText(self.state.pixel_text(x, y))

    # classification -----------------------------------------------------------------------
    def classify(self) -> None:
        """Classify the open scan with the chosen model in a worker."""
        if self.scan is None:
            self.show_status("Open a scan first.")
            return
        gate = self.state.gate
        if gate is not None and not gate.accepted:
            self.classify_panel.show_refusal(gate.error(self.scan.source))
            self.show_status(f"Not scored: {gate.error(self.scan.source).reason}.")
            return
        info = self.chosen_model()
        if info is None:
            if self.state.unrouted:  # automatic mode chose no model: refused, as the core does
                self.cancel_classification()  # a late result of the model picked before: dropped
                self.classify_panel.show_unrouted(self.state.unrouted)
                self._on_refused(self.state.unrouted)  # and no earlier result stays live
            elif not self.models:
                self.show_error("No model is installed, so the scan cannot be classified.")
            else:
                self.show_error(
                    "The scan's modality is unknown (plain image) and no modality check is "
                    "installed: choose a CT or X-ray model in the list."
                )
            return
        self.classifier.start(self.scan, info, self.state.scan_id)

    def cancel_classification(self) -> None:
        """Stop the running classification."""
        self.classifier.cancel()

    def _on_classified(self, sid: int, info: ModelInfo, result: ScanResult) -> None:
        scan = self.scan
        if sid != self.state.scan_id or scan is None:
            return
        self.state.set_result(result, info)
        self.classify_panel.show_result(result, scan.slice_positions)
        self.cam.show_result(result)
        if scan.n_slices > 1:
            self.set_slice(result.representative_slice)
        self.cam.update()
        self._update_gallery_context()
        self.show_status(
            f"{SourceKey.parse(result.source).name}: {result.headline}, "
            f"with {info.name} v{info.version}"
        )
        self.resultReady.emit(result)

    def _on_refused(self, reason: str) -> None:
        """The core refused the scan for the chosen model: no result and no CAM stay shown,
        nor the previous result's status line."""
        self.state.clear_result()
        self.state.refusal, self.refusal_banner = reason, self.classify_panel.refusal()
        self.cam.reset(self.unscored_reason())
        self._update_gallery_context()
        self.show_status(f"Not scored: {reason}.")

    def _on_model_changed(self, _name: str) -> None:
        self.state.refusal = None  # that refusal was of the model chosen before
        if self.result is None:  # the CAM panel's "not scored" may no longer hold either
            self.cam.reset(self.unscored_reason())
        self._update_gallery_context()
        if self.scan is not None and (
            self.result is not None or self.classifier.running() or self.settings.auto_classify()
        ):
            self.classify()

    # CAM ----------------------------------------------------------------------------------
    def toggle_cam(self) -> None:
        """C: show or hide the overlay."""
        if not self.cam.toggle():
            reason = self.cam.unscored
            self.show_status(
                f"No CAM: the scan was not scored ({reason})."
                if reason
                else "No CAM yet: classify the scan first."
            )

    def current_heat(self) -> np.ndarray | None:
        """Colored heat map (RGBA uint8, transparent low end) of the current slice and class,
        if computed."""
        return self.state.current_heat()

    def export_cam_png(self, path: str) -> Path:
        """Write the displayed slice with the CAM blended at the chosen opacity (core overlay)."""
        return self.cam.export_png(path)

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
            self.state.cam.colormap,
        )
        worker.signals.result.connect(self._on_report_saved)
        worker.signals.error.connect(
            lambda exc: self.show_error(f"Report failed: {user_message(exc)}")
        )
        self.status_progress_label.setText("Writing PDF…")
        worker.signals.finished.connect(lambda: self.status_progress_label.setText(""))
        self.pool.start(worker)
        return worker

    def _on_report_saved(self, path: Path) -> None:
        self.show_status(f"Report saved: {path}")
        self.reportSaved.emit(str(path))

    # gallery ------------------------------------------------------------------------------
    def _on_gallery_visible(self, visible: bool) -> None:
        """Give the gallery half of the right column's height when it is opened (more left the
        classification panel too short for its model line at 1366x768)."""
        if visible and not self.gallery.isFloating():
            self.resizeDocks([self.classify_dock, self.gallery], [1, 1], Qt.Orientation.Vertical)

    def unscored_reason(self) -> str | None:
        """:meth:`ViewerState.unscored_reason` under the model choice on screen."""
        return self.state.unscored_reason(self.classify_panel.is_auto())

    def _update_gallery_context(self) -> None:
        info = self.state.result_info or self.chosen_model()
        scan, i = self.scan, self.slice_index
        image = scan.image[i] if scan is not None else None
        reason = self.unscored_reason() or self.state.unscored_slice_reason()
        if reason is not None:
            info = None  # a refused scan (or slice) gets no model output, maps included
        self.gallery.set_context(self.state.scan_id, i, image, info, reason)

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
