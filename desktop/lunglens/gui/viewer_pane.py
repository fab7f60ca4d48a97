"""The central area of the window: error banner, image view and the slice/window bar.

The pane draws the :class:`~lunglens.viewer.ViewerState` it is given and turns the user's slice
and window/level gestures into calls on it; the state answers with the pixels and texts to show.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from lunglens.gui.banner import ErrorBanner
from lunglens.gui.image_view import ImageView
from lunglens.preprocess import WINDOW_PRESETS, Window
from lunglens.viewer import ViewerState

PLACEHOLDER = (
    "Open a chest CT or X-ray: File ▸ Open (Ctrl+O), a DICOM folder (Ctrl+Shift+O), "
    "or drop a file here."
)


class ViewerPane(QWidget):
    """Banner, placeholder or image view, and the bar under the image.

    Signals
    -------
    rendered()
        The slice on screen was painted again (new slice or new window): the CAM overlay
        follows it.
    sliceChanged(int)
        Another slice is on screen.
    message(str)
        A status-bar message (why a window cannot be applied).
    """

    rendered = Signal()
    sliceChanged = Signal(int)
    message = Signal(str)

    def __init__(self, state: ViewerState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.banner = ErrorBanner()
        self.view = ImageView()
        self.view.windowDragged.connect(self.drag_window)
        self.view.sliceStep.connect(lambda step: self.set_slice(self.state.slice_index + step))
        self.placeholder = QLabel(PLACEHOLDER)
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setWordWrap(True)
        self._build_bar()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.banner)
        layout.addWidget(self.placeholder, 1)
        layout.addWidget(self.view, 1)
        layout.addLayout(self.bar)
        self.view.hide()
        self.set_enabled(False)

    def _build_bar(self) -> None:
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
        self.window_combo.setMinimumContentsLength(20)  # "Mediastinum (W400 L40)" in full
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
        self.bar = QHBoxLayout()
        self.bar.addWidget(self.slider, 1)
        self.bar.addWidget(self.slice_label)
        self.bar.addWidget(self.window_combo)
        self.bar.addWidget(self.window_label)
        self.bar.addWidget(self.fit_button)
        self.bar.addWidget(self.one_button)

    def set_enabled(self, on: bool) -> None:
        """Enable the bar's controls (off until a scan is open)."""
        for w in (self.slider, self.window_combo, self.fit_button, self.one_button):
            w.setEnabled(on)

    def show_scan(self) -> None:
        """Set the bar up for the state's newly opened scan (call :meth:`show_slice` after)."""
        scan = self.state.scan
        if scan is None:
            return
        series = scan.n_slices > 1
        self._show_window_choice()
        self.view.series_mode = series
        self.slider.blockSignals(True)
        self.slider.setRange(0, scan.n_slices - 1)
        self.slider.setValue(0)
        self.slider.blockSignals(False)
        self.slider.setVisible(series)
        self.set_enabled(True)
        self.window_combo.setEnabled(self.state.windowable())
        self.placeholder.hide()
        self.view.show()
        self.view.fit_mode = True

    def show_slice(self) -> None:
        """Paint the slice on screen and its labels."""
        if self.state.scan is None:
            return
        self.view.set_image(self.state.display_pixels())
        self.slice_label.setText(self.state.slice_text())
        self.window_label.setText(self.state.window_text())
        self.rendered.emit()

    def set_slice(self, index: int) -> None:
        """Show slice ``index`` (clamped) of the series."""
        if self.state.scan is None:
            return
        index = self.state.clamp_slice(index)
        if index == self.state.slice_index and self.view.has_image():
            if self.slider.value() != index:
                self.slider.setValue(index)
            return
        self.state.slice_index = index
        if self.slider.value() != index:
            self.slider.blockSignals(True)
            self.slider.setValue(index)
            self.slider.blockSignals(False)
        self.show_slice()
        self.sliceChanged.emit(index)

    def set_window(self, window: Window | str | None) -> None:
        """Apply a CT preset name, a :class:`Window`, or ``None`` (as loaded)."""
        refusal = self.state.window_refusal(window)
        if refusal is not None:
            self.message.emit(refusal)
            return
        self.state.set_window(window)
        self._show_window_choice()
        self.show_slice()

    def _show_window_choice(self) -> None:
        """The combo names the window in use: its preset when it is one (a CT opened in the
        lung window reads "Lung", not "as loaded" over a lung window), else "as loaded"."""
        self.window_combo.setItemText(0, "Window: as loaded")
        applied = self.state.display_window
        index = self.window_combo.findData(applied.name) if applied is not None else -1
        self.window_combo.setCurrentIndex(max(index, 0))

    def _on_window_combo(self, index: int) -> None:
        name = self.window_combo.itemData(index)
        self.set_window(str(name) if name else None)

    def drag_window(self, dx: int, dy: int) -> None:
        """Right-drag: horizontal changes width, vertical changes level."""
        if self.state.drag_window(dx, dy) is None:
            return
        self.window_combo.setCurrentIndex(0)
        self.window_combo.setItemText(0, "Window: custom")
        self.show_slice()
