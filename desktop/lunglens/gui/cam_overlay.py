"""Binds the CAM controls and the image view's overlay layer to the viewer state's CAM.

The controls write :class:`~lunglens.viewer.CamSettings`; the overlay shows the state's cached
heat map of the slice on screen, and when it is missing, :func:`lunglens.viewer.compute_heat`
runs in the worker pool (raw CAM when unknown, then the heat map of every class) and the overlay
appears when it is done. Opacity is the view layer's opacity, so the slider never recomputes.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QFileDialog

from lunglens.gui.banner import user_message
from lunglens.gui.cam_controls import CamControls
from lunglens.gui.image_view import ImageView
from lunglens.gui.settings import Settings
from lunglens.gui.workers import Worker, WorkerPool
from lunglens.inference import ScanResult
from lunglens.viewer import SliceHeat, ViewerState, compute_heat


class CamOverlay(QObject):
    """The CAM overlay of one window.

    Parameters
    ----------
    state
        The window's viewer state (its ``cam`` settings are initialized from ``controls``).
    controls, view
        The CAM controls and the image view the overlay is drawn in.
    pool
        The window's worker pool.
    settings
        Where opacity and colormap are remembered.

    Signals
    -------
    ready()
        The CAM of the slice on screen is shown.
    failed(str)
        Computing or exporting a CAM failed (the message for the banner).
    message(str)
        A status-bar message (an export written, or why there is nothing to export).
    """

    ready = Signal()
    failed = Signal(str)
    message = Signal(str)

    def __init__(
        self,
        state: ViewerState,
        controls: CamControls,
        view: ImageView,
        pool: WorkerPool,
        settings: Settings,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.state, self.controls, self.view = state, controls, view
        self.pool, self.settings = pool, settings
        self._worker: Worker | None = None
        self._pending: tuple[int, int, str, str] | None = None
        #: why the open scan gets no CAM (the window's reason at the last :meth:`reset`)
        self.unscored: str | None = None
        controls.set_opacity(settings.opacity())
        controls.set_colormap(settings.colormap())
        state.cam.visible = controls.is_shown()
        state.cam.opacity = controls.alpha()
        state.cam.colormap = controls.colormap()
        view.set_overlay_opacity(controls.alpha())
        controls.toggled.connect(self._on_toggled)
        controls.opacityChanged.connect(self._on_opacity)
        controls.classChanged.connect(self._on_class)
        controls.colormapChanged.connect(self._on_colormap)
        controls.exportRequested.connect(self.export_dialog)

    # binding ------------------------------------------------------------------------------
    def show_result(self, result: ScanResult) -> None:
        """A new classification: its classes in the chooser, the controls enabled if it has
        a CAM (call :meth:`update` after)."""
        self.controls.set_classes(result.labels, result.cam_class)
        self.controls.set_available(result.cam is not None)

    def reset(self, unscored: str | None = None) -> None:
        """Another scan was opened, or the scan was refused: no CAM until it is classified,
        and none at all for a scan that gets no score (``unscored``: why; the CAM is not
        offered; kept in :attr:`unscored` for what C and Export say)."""
        self.unscored = unscored
        if unscored is not None:
            self.controls.set_available(False, "No CAM: the scan was not scored")
        else:
            self.controls.set_available(False)
        self.view.set_overlay(None)

    def toggle(self) -> bool:
        """Show or hide the overlay; ``False`` when there is no CAM to show yet."""
        if not self.controls.show_box.isEnabled():
            return False
        self.controls.show_box.toggle()
        return True

    def _on_toggled(self, on: bool) -> None:
        self.state.cam.visible = on
        self.view.set_overlay_visible(on)
        self.update()

    def _on_opacity(self, alpha: float) -> None:
        self.state.cam.opacity = alpha
        self.view.set_overlay_opacity(alpha)
        self.settings.set_opacity(alpha)

    def _on_class(self, name: str) -> None:
        self.state.cam.cam_class = name
        self.update()

    def _on_colormap(self, name: str) -> None:
        self.state.cam.colormap = name
        self.settings.set_colormap(name)
        self.update()

    # display ------------------------------------------------------------------------------
    def update(self) -> None:
        """Show the CAM of the slice on screen, computing it in a worker when missing."""
        state = self.state
        if not state.cam.visible or state.result is None or state.scan is None:
            self.view.set_overlay_visible(False)
            return
        if note := state.unscored_note():  # a slice left out of the series score: no map
            self.view.set_overlay_visible(False)
            self.controls.set_status(note)
            return
        heat = state.current_heat()
        if heat is None:
            self.view.set_overlay_visible(False)
            self._request()
            return
        self.view.set_overlay(heat)
        self.view.set_overlay_visible(True)
        where = f"CAM of slice {state.slice_index + 1}" if state.n_slices > 1 else ""
        self.controls.set_status("\n".join(filter(None, [where, state.cam_scale_note()])))
        self.ready.emit()

    def _request(self) -> None:
        request = self.state.heat_request()
        if request is None or self._pending == request.key:
            return
        if self._worker is not None:
            self._worker.cancel()  # what it computes is still kept, if still useful
        worker = Worker(compute_heat, request)
        worker.signals.result.connect(self._on_heat)
        worker.signals.error.connect(
            lambda exc: self.failed.emit(f"CAM failed: {user_message(exc)}")
        )
        worker.signals.finished.connect(lambda w=worker: self._on_finished(w))
        self._worker, self._pending = worker, request.key
        if request.raw is None:
            self.controls.set_status(f"Computing the CAM of slice {request.index + 1}…")
        self.pool.start(worker)

    def _on_heat(self, heat: SliceHeat) -> None:
        if self.state.store_heat(heat) and heat.index == self.state.slice_index:
            self.update()

    def _on_finished(self, worker: Worker) -> None:
        if worker is self._worker:
            self._worker = None
            self._pending = None

    # export -------------------------------------------------------------------------------
    def export_png(self, path: str | os.PathLike[str]) -> Path:
        """Write the displayed slice with the CAM blended at the chosen opacity (core overlay)."""
        return self.state.overlay_export().write(path)

    def export_dialog(self) -> None:
        """Ask where to save the PNG, then write it in a worker."""
        if self.state.result is None:
            self.message.emit(
                f"No CAM to export: the scan was not scored ({self.unscored})."
                if self.unscored
                else "Classify the scan before exporting its CAM."
            )
            return
        default = Path(self.settings.last_folder() or ".") / self.state.output_name("_cam.png")
        parent = self.controls.window()
        path, _ = QFileDialog.getSaveFileName(
            parent, "Export CAM overlay", str(default), "PNG (*.png)"
        )
        if not path:
            return
        try:
            job = self.state.overlay_export()  # the slice on screen now, whatever comes next
        except RuntimeError as exc:
            self.failed.emit(f"Could not export the PNG: {exc}")
            return
        worker = Worker(job.write, path)
        worker.signals.result.connect(lambda out: self.message.emit(f"Saved {out}"))
        worker.signals.error.connect(
            lambda exc: self.failed.emit(f"Could not export the PNG: {user_message(exc)}")
        )
        self.pool.start(worker)
