"""Classification panel: model chooser, probabilities, prediction, model identity, disclaimer.

It shows a :class:`~lunglens.inference.ScanResult` and nothing else: every number on it was
computed by the core, so the panel, the CLI and the reports can never disagree. The model's name,
version and hash are always visible so a screenshot of a result identifies the exact model.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from lunglens import AUTO_MODEL, DISCLAIMER
from lunglens.errors import NotChestImage
from lunglens.inference import ScanResult, format_prob, format_threshold, slice_numbers
from lunglens.inference.wording import FLAGGED_COLOR, NOT_FLAGGED_COLOR
from lunglens.models import ModelInfo

AUTO = AUTO_MODEL  #: combo data of the automatic choice
AUTO_TEXT = "Automatic (by modality)"


def fill_model_combo(
    combo: QComboBox, models: list[ModelInfo], current: str
) -> dict[str, ModelInfo]:
    """Fill a model chooser: :data:`AUTO_TEXT` first (when any model exists), then
    ``name  (modality, version)``; ``current`` stays selected when still offered (else the
    first entry). No change signal is emitted. Returns the models by name."""
    combo.blockSignals(True)
    combo.clear()
    if models:
        combo.addItem(AUTO_TEXT, AUTO)
    for m in models:
        combo.addItem(f"{m.name}  ({m.modality.upper()}, v{m.version})", m.name)
    combo.setCurrentIndex(max(0, combo.findData(current)))
    combo.blockSignals(False)
    return {m.name: m for m in models}


#: Rows of the suspicious-slices list in view without scrolling.
SUSPICIOUS_ROWS_SHOWN = 3
#: Bar colours: the positive class stands out, the others stay neutral.
BAR_STYLE = "QProgressBar { border: 1px solid #aaa; border-radius: 2px; text-align: center; }"
POSITIVE_STYLE = "QProgressBar::chunk { background-color: #d9534f; }"
OTHER_STYLE = "QProgressBar::chunk { background-color: #5b8def; }"
#: The refusal banner: white on red, unmistakable and unlike any result.
REFUSAL_STYLE = (
    "QLabel#refusal_banner { background: #b00020; color: white; font-weight: bold;"
    " border-radius: 3px; padding: 6px; }"
)


class ClassifyPanel(QWidget):
    """Model choice and the result of the current scan.

    Signals
    -------
    classifyRequested()
        The user pressed *Classify* (or changed model with a scan open).
    cancelRequested()
        Stop the running classification.
    modelChanged(name)
        Another model was chosen in the combo box.
    sliceRequested(index)
        A row of the suspicious-slices list was clicked.
    """

    classifyRequested = Signal()
    cancelRequested = Signal()
    modelChanged = Signal(str)
    sliceRequested = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._models: dict[str, ModelInfo] = {}
        self.model_combo = QComboBox()
        self.model_combo.setToolTip(
            "Automatic: the default model of the scan's modality (DICOM Modality, or the "
            "modality check for plain images). Or pick one model for this scan."
        )
        self.model_combo.currentIndexChanged.connect(self._on_model_index)
        self.classify_button = QPushButton("Classify")
        self.classify_button.setToolTip("Score the scan (Ctrl+Return)")
        self.classify_button.clicked.connect(self.classifyRequested)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancelRequested)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)

        self.prediction_label = QLabel("No result")
        self.prediction_label.setObjectName("prediction")
        font = self.prediction_label.font()
        font.setPointSizeF(font.pointSizeF() * 1.3)
        font.setBold(True)
        self.prediction_label.setFont(font)
        self.prediction_label.setWordWrap(True)
        self.refusal_label = QLabel("")
        self.refusal_label.setObjectName("refusal_banner")
        self.refusal_label.setWordWrap(True)
        self.refusal_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.refusal_label.setStyleSheet(REFUSAL_STYLE)
        self.refusal_label.hide()
        self.threshold_label = QLabel("")
        self.threshold_label.setWordWrap(True)
        self.bars_box = QGroupBox("Probabilities")
        self.bars_layout = QFormLayout(self.bars_box)
        self.bars: dict[str, QProgressBar] = {}
        self.model_label = QLabel("")
        self.model_label.setWordWrap(True)
        self.model_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.notes_label = QLabel("")
        self.notes_label.setWordWrap(True)
        self.notes_label.setStyleSheet("color: #b35c00;")
        self.slices_box = QGroupBox("Most suspicious slices")
        self.slices_list = QListWidget()
        self.slices_list.setToolTip("Click to show the slice")
        self.slices_list.itemActivated.connect(self._on_slice_item)
        self.slices_list.itemClicked.connect(self._on_slice_item)
        QVBoxLayout(self.slices_box).addWidget(self.slices_list)
        self.slices_box.setVisible(False)
        self.disclaimer_label = QLabel(DISCLAIMER)
        self.disclaimer_label.setWordWrap(True)
        self.disclaimer_label.setObjectName("disclaimer")
        self.disclaimer_label.setStyleSheet(
            "QLabel#disclaimer { background: #fff3cd; color: #5c4400; border: 1px solid #e0c060;"
            " padding: 4px; }"
        )

        top = QHBoxLayout()
        top.addWidget(self.model_combo, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.classify_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Model"))
        layout.addLayout(top)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.refusal_label)
        layout.addWidget(self.prediction_label)
        layout.addWidget(self.threshold_label)
        # which model decided sits under its decision: where the panel is squeezed (the
        # gallery open on a laptop screen) the headline and its model stay in view together
        layout.addWidget(self.model_label)
        layout.addWidget(self.bars_box)
        layout.addWidget(self.slices_box)
        layout.addWidget(self.notes_label)
        layout.addStretch(1)
        layout.addWidget(self.disclaimer_label)

    # models -------------------------------------------------------------------------------
    def set_models(self, models: list[ModelInfo]) -> None:
        """Fill the chooser (:data:`AUTO_TEXT` first, then ``name  (modality, version)``),
        keeping the current choice."""
        self._models = fill_model_combo(self.model_combo, models, self.current_model_name())
        self.classify_button.setEnabled(bool(models))
        if not models:
            self.prediction_label.setText("No model installed")

    def select_model(self, name: str) -> None:
        """Choose ``name`` without emitting ``modelChanged`` (used on scan load)."""
        idx = self.model_combo.findData(name)
        if idx >= 0:
            self.model_combo.blockSignals(True)
            self.model_combo.setCurrentIndex(idx)
            self.model_combo.blockSignals(False)

    def current_model_name(self) -> str:
        """The chosen model's name, or :data:`AUTO`."""
        data = self.model_combo.currentData()
        return str(data) if data else ""

    def is_auto(self) -> bool:
        """True when each scan gets its modality's default model."""
        return self.current_model_name() == AUTO

    def current_model(self) -> ModelInfo | None:
        """The chosen model; ``None`` in automatic mode or when none is installed."""
        return self._models.get(self.current_model_name())

    def model_by_name(self, name: str) -> ModelInfo | None:
        return self._models.get(name)

    def _on_model_index(self, _index: int) -> None:
        self.modelChanged.emit(self.current_model_name())

    # running state ------------------------------------------------------------------------
    def set_running(self, running: bool) -> None:
        """Busy state: cancel enabled, progress bar busy until the first progress report."""
        self.classify_button.setEnabled(not running and bool(self._models))
        self.cancel_button.setEnabled(running)
        if running:
            self.progress.setRange(0, 0)
            self.prediction_label.setText("Classifying…")

    def set_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(done)
        self.progress.setFormat(f"{done}/{total} slices" if total > 1 else "%p%")

    # result -------------------------------------------------------------------------------
    def show_refusal(self, error: NotChestImage) -> None:
        """The chest-image gate refused the scan: a red banner with the reason and the error's
        own advice (an inverted image gets how to export it), no numbers."""
        reason = error.reason.rstrip(".")
        self._refuse(f"{reason[:1].upper()}{reason[1:]}.\n{error.hint}")

    def show_mismatch(self, reason: str) -> None:
        """The chosen model is for the other modality: the same red banner, no numbers."""
        self._refuse(
            f"Not scored with this model: {reason}.\nChoose a model for its modality, or "
            "Automatic (by modality)."
        )

    def show_unrouted(self, reason: str) -> None:
        """Automatic mode chose no model (the modality check and the gate disagree on a plain
        image): the same red banner, no numbers."""
        self._refuse(f"Not scored: {reason}.\nPick the model that fits it (CT or X-ray).")

    def show_banner(self, text: str) -> None:
        """Show a refusal banner again, worded as it was first shown."""
        self._refuse(text)

    def _refuse(self, text: str) -> None:
        self.clear_result("Not scored")
        self.progress.setFormat("")  # nothing ran: no "0%"
        self.refusal_label.setText(text)
        self.refusal_label.show()
        self.bars_box.setVisible(False)

    def refusal(self) -> str:
        """The refusal shown, or ``""``."""
        return self.refusal_label.text() if not self.refusal_label.isHidden() else ""

    def clear_result(self, message: str = "No result") -> None:
        self.refusal_label.hide()
        self.refusal_label.setText("")
        # no bars until a result: the previous model's classes (covid/normal/pneumonia over a
        # CT) must not stay on screen as empty rows
        self._remove_bars()
        self.bars_box.setVisible(False)
        self.prediction_label.setText(message)
        self.prediction_label.setStyleSheet("")
        self.threshold_label.setText("")
        self.model_label.setText("")
        self.notes_label.setText("")
        self.slices_list.clear()
        self.slices_box.setVisible(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("%p%")  # not the previous run's "done"

    def show_result(self, result: ScanResult, positions: list[float] | None = None) -> None:
        """Display ``result``; ``positions`` (mm) label the suspicious slices of a series. A
        result replaces the banner of an earlier refusal (e.g. automatic mode, before a model
        was picked for the scan)."""
        self.refusal_label.hide()
        self.refusal_label.setText("")
        self.set_running(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat("done")
        self._rebuild_bars(result)
        self.bars_box.setVisible(True)
        for label, bar in self.bars.items():
            p = float(result.probs.get(label, 0.0))
            bar.setValue(round(p * 1000))
            bar.setFormat(f"{p:.1%}")
        series = result.n_slices > 1
        self.prediction_label.setText(result.headline)
        color = FLAGGED_COLOR if result.flagged else NOT_FLAGGED_COLOR
        self.prediction_label.setStyleSheet(f"color: {color};")
        kept = result.n_slices - len(result.unscored_slices)
        of = f", {kept} scored" if kept < result.n_slices else ""
        rule = (
            f"series of {result.n_slices} slices{of}: mean of the top slices" if series else "image"
        )
        self.threshold_label.setText(
            f"P({result.positive_label}) = {format_prob(result.positive_prob)} ({rule}); "
            f"flagged when >= operating threshold {format_threshold(result.threshold)}"
        )
        self.model_label.setText(
            f"Model {result.model} v{result.model_version}\nSHA-256 {result.model_sha256[:16]}…"
            f"\n{result.elapsed_ms:.0f} ms"
        )
        self.model_label.setToolTip(result.model_sha256)
        self.notes_label.setText("\n".join(f"• {note}" for note in result.notes))  # one per line
        self.disclaimer_label.setText(result.disclaimer or DISCLAIMER)
        self.slices_list.clear()
        self.slices_box.setVisible(series)
        if series:
            pos_idx = result.labels.index(result.positive_label)
            for idx in result.top_slices:
                p = float(result.slice_probs[idx, pos_idx])
                where = ""
                if positions is not None and idx < len(positions):
                    where = f" at {positions[idx]:.1f} mm"
                (number,) = slice_numbers([idx])
                item = QListWidgetItem(f"slice {number}{where}: P={format_prob(p)}")
                item.setData(Qt.ItemDataRole.UserRole, int(idx))
                self.slices_list.addItem(item)
            self._fit_slices_list()

    def _fit_slices_list(self) -> None:
        """At most :data:`SUSPICIOUS_ROWS_SHOWN` rows tall: the list's default height pushed the
        disclaimer and the CAM controls below the fold at 1366x768."""
        rows = min(self.slices_list.count(), SUSPICIOUS_ROWS_SHOWN)
        row_height = self.slices_list.sizeHintForRow(0) if rows else 0
        self.slices_list.setFixedHeight(rows * row_height + 2 * self.slices_list.frameWidth() + 2)

    def _remove_bars(self) -> None:
        while self.bars_layout.rowCount():
            self.bars_layout.removeRow(0)
        self.bars = {}

    def _rebuild_bars(self, result: ScanResult) -> None:
        if list(self.bars) == list(result.labels):
            return
        self._remove_bars()
        for label in result.labels:
            bar = QProgressBar()
            bar.setRange(0, 1000)
            bar.setTextVisible(True)
            bar.setAlignment(Qt.AlignmentFlag.AlignCenter)
            bar.setStyleSheet(
                BAR_STYLE + (POSITIVE_STYLE if label == result.positive_label else OTHER_STYLE)
            )
            self.bars_layout.addRow(label, bar)
            self.bars[label] = bar

    def _on_slice_item(self, item: QListWidgetItem) -> None:
        self.sliceRequested.emit(int(item.data(Qt.ItemDataRole.UserRole)))
