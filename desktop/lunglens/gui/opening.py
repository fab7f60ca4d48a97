"""Opening a scan for the main window: the load runs in a worker, its result or failure comes
back to the window.

A failed open must not leave the previous scan's decision on screen as if it were the new
file's: the image stays (the user may still want it), but its result and map are cleared and the
panel says which file could not be opened and which one is still shown.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lunglens.gui.banner import user_message
from lunglens.gui.workers import Worker
from lunglens.inference import GateVerdict, ModalityCheck
from lunglens.io import Scan, SourceKey
from lunglens.viewer import load_and_check

if TYPE_CHECKING:
    from lunglens.gui.main_window import MainWindow


class ScanOpener:
    """Loads ``path`` (file, folder or batch results key) for ``win`` in its worker pool; a
    newer open cancels the one in flight (its result is ignored)."""

    def __init__(self, win: MainWindow) -> None:
        self.win = win
        self.worker: Worker | None = None

    def open(self, path: str) -> None:
        """Start loading ``path``; the window shows it when done."""
        if self.worker is not None:
            self.worker.cancel()  # its result will be ignored
        worker = Worker(load_and_check, str(path), self.win.models_dir)
        worker.signals.result.connect(lambda res, w=worker, p=str(path): self._loaded(w, p, *res))
        worker.signals.error.connect(lambda exc, w=worker, p=str(path): self._failed(w, p, exc))
        worker.signals.finished.connect(lambda w=worker: self._finished(w))
        self.worker = worker
        self.win.status_progress_label.setText(f"Loading {SourceKey.parse(path).name}…")
        self.win.pool.start(worker)

    def _finished(self, worker: Worker) -> None:
        if worker is self.worker:
            self.worker = None
            self.win.status_progress_label.setText("")

    def _loaded(
        self,
        worker: Worker,
        path: str,
        scan: Scan,
        check: ModalityCheck | None = None,
        verdict: GateVerdict | None = None,
    ) -> None:
        if worker.cancelled:
            return
        win = self.win
        win.banner.dismiss()
        win.set_scan(scan, check, verdict)
        real = SourceKey.parse(path).path
        win.settings.add_recent(real)
        win.settings.set_last_folder(real if os.path.isdir(real) else str(Path(real).parent))
        if win.settings.auto_classify() and win.models:
            win.classify()

    def _failed(self, worker: Worker, path: str, exc: BaseException) -> None:
        if worker.cancelled:
            return
        win = self.win
        if win.scan is not None:  # the image stays; its decision must not pass for the new file's
            win.cancel_classification()
            win.state.clear_result()
            win.cam.reset(win.unscored_reason())
            failed, shown = _names(path, win.scan.source)
            message = f"{failed} could not be opened; the image is still {shown}"
            win.classify_panel.clear_result(f"No result shown: {message}")
            if _show_standing_refusal(win):  # the image on screen is still refused
                win.classify_panel.prediction_label.setText(f"Not scored; {message}")
            win._update_gallery_context()
        win.show_error(user_message(exc))


def _show_standing_refusal(win: MainWindow) -> bool:
    """Put back the banner of the scan on screen when it was refused (not a chest scan, no
    model chosen for it, or the chosen model refused): a failed open of another file does not
    make it scorable. ``True`` when a banner is shown."""
    state, panel = win.state, win.classify_panel
    if state.gate is not None and not state.gate.accepted:
        panel.show_refusal(state.gate.error(state.scan.source if state.scan else ""))
    elif state.unrouted and panel.is_auto():
        panel.show_unrouted(state.unrouted)
    elif state.refusal and win.refusal_banner:  # as first worded: not a chest scan, ...
        panel.show_banner(win.refusal_banner)
    elif state.refusal:
        panel.show_mismatch(state.refusal)
    else:
        return False
    return True


def _names(failed: str, shown: str) -> tuple[str, str]:
    """Display names of two keys: file names, with their folders when the names are the same
    (``IM0001.dcm`` of two series)."""
    a, b = SourceKey.parse(failed), SourceKey.parse(shown)
    if a.name != b.name:
        return a.name, b.name
    return f"{Path(a.path).parent.name}/{a.name}", f"{Path(b.path).parent.name}/{b.name}"
