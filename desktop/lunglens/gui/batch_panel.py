"""Batch panel: score a folder into a resumable results CSV while the viewer stays usable.

:func:`lunglens.batch.score` does the work in a pool worker and yields events; this panel turns
them into a progress bar (count, rate, ETA) and a sortable table
(:mod:`~lunglens.gui.batch_table`) that fills in as rows are written, ranked most suspicious first
(highest P(covid) on top, errors last). The model choice defaults to automatic (each scan to its
modality's default model, one results file). The summary report is written where the user
chooses (default: beside the results CSV) and opened with a button. Rows are buffered and flushed
to the table a few times a second, so a folder of thousands of small images cannot flood the GUI
thread with one table update per scan. The CSV on disk is the source of truth: *Resume* reloads
it into the table and skips what is done.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from lunglens.batch import Finished, Progress, Row, Started, read_rows, score
from lunglens.gui.batch_table import KEY_ROLE, ResultsTable
from lunglens.gui.classify_panel import AUTO, fill_model_combo
from lunglens.gui.workers import Worker, WorkerPool
from lunglens.inference.modality import default_models
from lunglens.inference.wording import counted
from lunglens.models import ModelInfo
from lunglens.report import data_dir

#: How often buffered rows are moved into the table (ms): a few updates a second, however fast
#: the rows come.
FLUSH_MS = 150


def write_report(csv_path: str, models: list[ModelInfo], out_html: str | None = None) -> Path:
    """Worker body: the core HTML summary (matplotlib charts take a moment)."""
    from lunglens.report import write_html_report

    return Path(write_html_report(csv_path, models, out_html))


def format_eta(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``); ``--`` while the rate is unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "--"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class BatchPanel(QWidget):
    """Folder scoring with progress, cancel, resume and a live results table.

    Signals
    -------
    openRequested(key)
        A row was double-clicked: the viewer should open that scan (the results key: a file
        path, or ``folder#SeriesInstanceUID``).
    errorOccurred(message)
        Something failed (shown in the main window's banner).
    started(), finished(object)
        A run began / ended (``finished`` carries the :class:`lunglens.batch.Summary`, or
        ``None`` when the run failed before scoring).
    """

    openRequested = Signal(str)
    errorOccurred = Signal(str)
    started = Signal()
    finished = Signal(object)

    def __init__(self, pool: WorkerPool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.pool = pool
        self._models: dict[str, ModelInfo] = {}
        self._worker: Worker | None = None
        self._buffer: list[dict[str, str]] = []
        self._run_models: list[ModelInfo] = []
        #: Write the summary report beside the CSV when a run completes.
        self.auto_report = True
        self.summary: Any = None
        self.last_progress: Progress | None = None
        self.report_path: Path | None = None

        self._build_form()
        self._build_buttons()
        self._build_progress()
        self.table = ResultsTable()
        self.model = self.table.source
        self.proxy = self.table.proxy
        self.table.doubleClicked.connect(self._on_double_click)
        self._flush_timer = QTimer(self)
        self._flush_timer.setInterval(FLUSH_MS)
        self._flush_timer.timeout.connect(self.flush)
        self._build_layout()

    def _build_form(self) -> None:
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("Folder of scans (images, DICOM files, series)")
        self.folder_edit.textChanged.connect(self._suggest_csv)
        self.browse_button = QPushButton("Browse…")
        self.browse_button.clicked.connect(self._browse_folder)
        self.model_combo = QComboBox()
        self.model_combo.currentIndexChanged.connect(lambda _i: self._suggest_csv())
        self.csv_edit = QLineEdit()
        self.csv_edit.setPlaceholderText("Results CSV")
        self._csv_auto = True
        self.csv_edit.textEdited.connect(lambda _t: setattr(self, "_csv_auto", False))
        self.csv_browse_button = QPushButton("…")
        self.csv_browse_button.setMaximumWidth(32)
        self.csv_browse_button.clicked.connect(self._browse_csv)
        self.resume_box = QCheckBox("Resume (skip scans already in the CSV)")

    def _build_buttons(self) -> None:
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.export_button = QPushButton("Export CSV…")
        self.export_button.clicked.connect(self._export_csv_dialog)
        self.report_button = QPushButton("Save summary report…")
        self.report_button.setToolTip("Write the HTML summary (default: beside the results CSV)")
        self.report_button.clicked.connect(self._report_dialog)
        self.open_report_button = QPushButton("Open report")
        self.open_report_button.setToolTip("Open the summary report in the web browser")
        self.open_report_button.clicked.connect(self.open_report)
        for b in (self.export_button, self.report_button, self.open_report_button):
            b.setEnabled(False)

    def _build_progress(self) -> None:
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("%v / %m")
        self.status = QLabel("Choose a folder and press Start.")
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.report_label = QLabel("")
        self.report_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.report_label.setWordWrap(True)

    def _build_layout(self) -> None:
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder_edit, 1)
        folder_row.addWidget(self.browse_button)
        csv_row = QHBoxLayout()
        csv_row.addWidget(self.csv_edit, 1)
        csv_row.addWidget(self.csv_browse_button)
        form = QFormLayout()
        form.addRow("Folder", folder_row)
        form.addRow("Model", self.model_combo)
        form.addRow("Results", csv_row)
        buttons = QHBoxLayout()
        buttons.addWidget(self.resume_box)
        buttons.addStretch(1)
        for b in (
            self.start_button,
            self.cancel_button,
            self.export_button,
            self.report_button,
            self.open_report_button,
        ):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.report_label)
        layout.addWidget(self.table, 1)

    # configuration ------------------------------------------------------------------------
    def set_models(self, models: list[ModelInfo], preferred: str = "") -> None:
        """Fill the model chooser (:data:`AUTO_TEXT` first, the default); ``preferred`` (e.g.
        the viewer's choice) is selected."""
        current = preferred or self.current_model_name()
        self._models = fill_model_combo(self.model_combo, models, current)
        self.start_button.setEnabled(bool(models))
        self._suggest_csv()

    def current_model_name(self) -> str:
        data = self.model_combo.currentData()
        return str(data) if data else ""

    def current_model(self) -> ModelInfo | None:
        """The chosen model; ``None`` in automatic mode."""
        return self._models.get(self.current_model_name())

    def run_models(self) -> list[ModelInfo]:
        """The models a run with the current choice uses (automatic: one per modality)."""
        if self.current_model_name() == AUTO:
            try:
                return list({m.name: m for m in default_models().values()}.values())
            except Exception:  # no model for any modality: start() says so
                return []
        info = self.current_model()
        return [info] if info is not None else []

    def set_folder(self, folder: str) -> None:
        self.folder_edit.setText(folder)

    def csv_path(self) -> str:
        return self.csv_edit.text().strip()

    def _suggest_csv(self, _text: str = "") -> None:
        """Default CSV in the user data folder: a PACS export or CD may be read-only."""
        if not self._csv_auto:
            return
        folder = self.folder_edit.text().strip()
        model = self.current_model_name()
        if not folder or not model:
            return
        name = Path(folder).name or "scans"
        self.csv_edit.setText(str(data_dir() / "results" / f"{name}-{model}.csv"))

    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder to score", self.folder_edit.text())
        if folder:
            self.set_folder(folder)

    def _browse_csv(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Results CSV", self.csv_path(), "CSV (*.csv)")
        if path:
            self._csv_auto = False
            self.csv_edit.setText(path)

    # running ------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self._worker is not None

    def start(self) -> bool:
        """Start (or resume) scoring; returns False (with a reason shown) when it cannot."""
        if self._worker is not None:
            return False
        folder = self.folder_edit.text().strip()
        models = self.run_models()
        info = self.current_model()  # None: automatic
        out_csv = self.csv_path()
        if not folder or not os.path.exists(folder):
            self._fail(f"Batch: choose an existing folder (got {folder!r}).")
            return False
        if not models:
            self._fail("Batch: no model installed.")
            return False
        if not out_csv:
            self._fail("Batch: choose where to write the results CSV.")
            return False
        resume = self.resume_box.isChecked()
        try:
            Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._fail(f"Batch: cannot create {Path(out_csv).parent} ({exc.strerror}).")
            return False
        self.table.set_columns(models)
        self.table.clear_rows()
        if resume and os.path.exists(out_csv):
            try:
                self._append_rows(read_rows(out_csv))  # what is already done stays visible
            except Exception as exc:  # a torn or foreign CSV: the core says why on start
                self.status.setText(f"Could not preload {out_csv}: {exc}")
        self.summary = None
        self.last_progress = None
        self.report_path = None
        self._run_models = models
        worker = Worker(
            score,
            [folder],
            info,
            out_csv,
            resume=resume,
            workers=2,
            pass_cancel=True,
            generator=True,
        )
        worker.signals.item.connect(self._on_event)
        worker.signals.error.connect(self._on_error)
        worker.signals.finished.connect(self._on_finished)
        self._worker = worker
        self.progress.setRange(0, 0)
        self.status.setText("Looking for scans…")
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.export_button.setEnabled(False)
        self.report_button.setEnabled(False)
        self.open_report_button.setEnabled(False)
        self._flush_timer.start()
        self.pool.start(worker)
        self.started.emit()
        return True

    def cancel(self) -> None:
        """Stop after the scans in flight; rows written so far stay valid (resume later)."""
        if self._worker is not None:
            self._worker.cancel()
            self.cancel_button.setEnabled(False)
            self.status.setText("Cancelling after the scans in flight…")

    def _on_event(self, ev: object) -> None:
        if isinstance(ev, Row):
            self._buffer.append(ev.row)
        elif isinstance(ev, Progress):
            self.last_progress = ev
        elif isinstance(ev, Started):
            self.progress.setRange(0, max(1, ev.total))
            self.progress.setValue(0)
            skipped = f", {ev.skipped} already done" if ev.skipped else ""
            self.status.setText(f"{ev.total} scans to score{skipped} → {ev.out_csv}")
            self.csv_edit.setText(str(ev.out_csv))
        elif isinstance(ev, Finished):
            self.summary = ev.summary

    def flush(self) -> None:
        """Move buffered rows into the table and refresh the progress line."""
        if self._buffer:
            rows, self._buffer = self._buffer, []
            self._append_rows(rows)
        p = self.last_progress
        if p is not None:
            self.progress.setRange(0, max(1, p.total))
            self.progress.setValue(p.done)
            self.status.setText(
                f"{p.done}/{p.total} scans · {p.rate:.1f} scans/s · ETA {format_eta(p.eta_s)}"
            )

    def _on_error(self, exc: BaseException) -> None:
        self._fail(f"Batch failed: {exc}")

    def _on_finished(self) -> None:
        self._worker = None
        self._flush_timer.stop()
        self.flush()
        self.start_button.setEnabled(bool(self._models))
        self.cancel_button.setEnabled(False)
        has_csv = bool(self.csv_path()) and os.path.exists(self.csv_path())
        self.export_button.setEnabled(has_csv)
        self.report_button.setEnabled(has_csv)
        s = self.summary
        if s is not None:
            self.progress.setRange(0, max(1, s.total))
            self.progress.setValue(s.done)
            state = "Cancelled" if s.cancelled else "Done"
            skipped = f", {s.skipped} skipped (already done)" if s.skipped else ""
            hint = " Tick Resume and press Start to continue." if s.cancelled else ""
            # "scored" only for what got a score: a refused scan is processed, not scored
            refused = f", {s.errors} not scored (see the Triage column)" if s.errors else ""
            if s.ignored:  # as the command line says: every file is accounted for
                refused += f", {counted(len(s.ignored), 'file')} ignored (not scans)"
            self.status.setText(
                f"{state}: {s.done} of {s.total} processed, {counted(s.ok, 'scan')} scored "
                f"({s.flagged} flagged for review){refused}{skipped} in {s.elapsed_s:.1f} s."
                f"{hint}"
            )
            if s.cancelled:
                self.resume_box.setChecked(True)
            elif has_csv and self.auto_report:
                self.make_report()  # beside the CSV; "Save summary report…" puts it elsewhere
        else:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
        self.finished.emit(s)

    def _fail(self, message: str) -> None:
        self.status.setText(message)
        self.errorOccurred.emit(message)

    # table --------------------------------------------------------------------------------
    def column(self, key: str) -> int:
        """Index of the column showing CSV column ``key`` (``-1`` when not shown)."""
        return self.table.column(key)

    def _append_rows(self, rows: list[dict[str, str]]) -> None:
        if not self.table.columns:
            models = self.run_models()
            if not models:
                return
            self.table.set_columns(models)
        self.table.append_rows(rows)

    def row_count(self) -> int:
        return self.model.rowCount()

    def row_keys(self) -> list[str]:
        return self.table.row_keys()

    def _on_double_click(self, index: Any) -> None:
        key = index.data(KEY_ROLE)
        if key:
            self.openRequested.emit(str(key))

    # outputs ------------------------------------------------------------------------------
    def export_csv(self, target: str) -> Path:
        """Copy the results CSV to ``target`` (the file on disk is the complete record)."""
        src = self.csv_path()
        if Path(src).resolve() != Path(target).resolve():
            shutil.copyfile(src, target)
        return Path(target)

    def _export_csv_dialog(self) -> None:
        target, _ = QFileDialog.getSaveFileName(
            self, "Export results CSV", self.csv_path(), "CSV (*.csv)"
        )
        if target:
            try:
                self.export_csv(target)
                self.status.setText(f"Exported {target}")
            except OSError as exc:
                self._fail(f"Could not export the CSV: {exc}")

    def default_report_path(self) -> str:
        """Beside the results CSV: ``results.csv`` -> ``results.html``."""
        return str(Path(self.csv_path()).with_suffix(".html"))

    def _report_dialog(self) -> None:
        target, _ = QFileDialog.getSaveFileName(
            self, "Save summary report", self.default_report_path(), "HTML (*.html)"
        )
        if target:
            self.make_report(target)

    def make_report(self, target: str | None = None) -> Worker | None:
        """Write the HTML summary to ``target`` (default: beside the CSV) in a worker; the
        *Open report* button opens it when done."""
        models = self._run_models or self.run_models()
        if not models or not self.csv_path():
            return None
        out = target or self.default_report_path()
        self.report_button.setEnabled(False)
        self.report_label.setText(f"Writing the summary report to {out}…")
        worker = Worker(write_report, self.csv_path(), models, out)
        worker.signals.result.connect(self._on_report)
        worker.signals.error.connect(lambda exc: self._fail(f"Report failed: {exc}"))
        worker.signals.finished.connect(lambda: self.report_button.setEnabled(True))
        self.report_path = None
        self.open_report_button.setEnabled(False)
        self.pool.start(worker)
        return worker

    def _on_report(self, path: Path) -> None:
        self.report_path = path
        self.open_report_button.setEnabled(True)
        self.report_label.setText(f"Summary report: {path}")

    def open_report(self) -> bool:
        """Open the written report with the system's browser."""
        if self.report_path is None:
            return False
        return bool(QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.report_path))))
