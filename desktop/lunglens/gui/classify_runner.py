"""Runs the window's classification: one at a time, in the worker pool, cancellable.

:func:`lunglens.inference.classify_scan` runs in a worker and reports its progress per batch of
slices to the classification panel. The result comes back with the id of the scan it was started
for, so the window drops a result that arrives after another scan was opened.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from lunglens.errors import ModalityMismatch, NotChestImage
from lunglens.gui.banner import user_message
from lunglens.gui.classify_panel import ClassifyPanel
from lunglens.gui.workers import Worker, WorkerPool
from lunglens.inference import Cancelled, ScanResult, classify_scan
from lunglens.io import Scan
from lunglens.models import ModelInfo


class ClassifyRunner(QObject):
    """The running classification of one window and its panel's busy state.

    Parameters
    ----------
    pool
        The window's worker pool.
    panel
        The classification panel (progress, busy state, refusal and failure texts).

    Signals
    -------
    classified(int, object, object)
        ``(scan_id, ModelInfo, ScanResult)`` of a classification that was not cancelled.
    failed(str)
        The classification failed (the message for the banner).
    refused(str)
        The core refused the scan (not a chest scan, or not of the chosen model's modality):
        the reason; the panel shows it, and no result exists.
    """

    classified = Signal(int, object, object)
    failed = Signal(str)
    refused = Signal(str)

    def __init__(
        self, pool: WorkerPool, panel: ClassifyPanel, parent: QObject | None = None
    ) -> None:
        super().__init__(parent)
        self.pool = pool
        self.panel = panel
        self._worker: Worker | None = None

    def running(self) -> bool:
        """True while a classification is queued or running."""
        return self._worker is not None

    def start(self, scan: Scan, info: ModelInfo, scan_id: int) -> Worker:
        """Cancel any running classification and classify ``scan`` with ``info``."""
        self.cancel()
        worker = Worker(
            classify_scan,
            scan,
            info,
            with_cam=True,
            cam_class=None,
            pass_progress=True,
            pass_cancel=True,
        )
        worker.signals.progress.connect(self.panel.set_progress)
        worker.signals.result.connect(lambda res, w=worker: self._on_result(w, scan_id, info, res))
        worker.signals.error.connect(lambda exc, w=worker: self._on_error(w, exc))
        worker.signals.finished.connect(lambda w=worker: self._on_finished(w))
        self._worker = worker
        self.panel.set_running(True)
        self.pool.start(worker)
        return worker

    def cancel(self) -> None:
        """Stop the running classification (its result will be dropped)."""
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
            self.panel.set_running(False)
            self.panel.clear_result("Cancelled")

    def _on_result(self, worker: Worker, scan_id: int, info: ModelInfo, res: ScanResult) -> None:
        if not worker.cancelled:
            self.classified.emit(scan_id, info, res)

    def _on_finished(self, worker: Worker) -> None:
        if worker is self._worker:
            self._worker = None
            self.panel.set_running(False)

    def _on_error(self, worker: Worker, exc: BaseException) -> None:
        if worker.cancelled or isinstance(exc, Cancelled):
            return
        if isinstance(exc, NotChestImage):
            self.panel.show_refusal(exc)
            self.refused.emit(exc.reason)
            return
        if isinstance(exc, ModalityMismatch):
            self.panel.show_mismatch(exc.reason)
            self.refused.emit(exc.reason)
            return
        self.panel.clear_result("Classification failed")
        self.failed.emit(f"Classification failed: {user_message(exc)}")
