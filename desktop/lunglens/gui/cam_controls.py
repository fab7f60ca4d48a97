"""CAM overlay controls: show/hide, opacity, class, colormap with its legend, PNG export.

The legend is drawn by the same core function that colors the overlay
(:func:`lunglens.explain.overlay` on a 0..1 ramp), so legend and image can never use different
color scales.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from lunglens.explain import COLORMAPS, overlay
from lunglens.gui.image_view import to_qimage

#: One line under the map, so nobody reads the heat map as a segmentation.
CAM_CAVEAT = "Where the model looked, not a lesion outline"


def legend_rgb(colormap: str, width: int = 256, height: int = 14) -> np.ndarray:
    """Color bar of ``colormap`` from 0 (left) to 1 (right), colored by the core overlay over
    mid gray, so its transparent low end shows as it does on the image."""
    ramp = np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))
    return overlay(np.full_like(ramp, 0.5), ramp, alpha=1.0, colormap=colormap)


class CamControls(QGroupBox):
    """Controls of the class-activation-map overlay.

    Signals
    -------
    toggled(bool), opacityChanged(float), classChanged(str), colormapChanged(str),
    exportRequested()
    """

    toggled = Signal(bool)
    opacityChanged = Signal(float)
    classChanged = Signal(str)
    colormapChanged = Signal(str)
    exportRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Class activation map", parent)
        self.show_box = QCheckBox("Show overlay (C)")
        self.show_box.toggled.connect(self.toggled)
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(40)
        self.opacity.setToolTip("Overlay opacity")
        self.opacity.valueChanged.connect(self._on_opacity)
        self.opacity_label = QLabel("40%")
        self.class_combo = QComboBox()
        self.class_combo.setToolTip("Class whose evidence is shown")
        self.class_combo.currentTextChanged.connect(self._on_class)
        self.colormap_combo = QComboBox()
        self.colormap_combo.addItems(sorted(COLORMAPS))
        self.colormap_combo.currentTextChanged.connect(self._on_colormap)
        self.legend = QLabel()
        self.legend.setScaledContents(True)
        self.legend.setFixedHeight(14)
        self.legend.setMinimumWidth(120)
        self.legend.setToolTip(
            "Colours relative to the map's own peak; on a slice or image that is not flagged, "
            "to at least the peak of a typical flagged one (the model's cam_reference)"
        )
        self.legend_low = QLabel("low")
        self.legend_high = QLabel("high evidence")
        self.export_button = QPushButton("Export PNG… (Ctrl+E)")
        self.export_button.clicked.connect(self.exportRequested)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.caveat_label = QLabel(CAM_CAVEAT)
        self.caveat_label.setObjectName("cam_caveat")
        self.caveat_label.setStyleSheet("font-style: italic; color: #555;")
        self.caveat_label.setWordWrap(True)

        opacity_row = QHBoxLayout()
        opacity_row.addWidget(self.opacity, 1)
        opacity_row.addWidget(self.opacity_label)
        legend_row = QHBoxLayout()
        legend_row.addWidget(self.legend_low)
        legend_row.addWidget(self.legend, 1)
        legend_row.addWidget(self.legend_high)
        form = QFormLayout()
        form.addRow("Opacity", opacity_row)
        form.addRow("Class", self.class_combo)
        form.addRow("Colormap", self.colormap_combo)
        # the export button shares the first row: on a 1366x768 laptop screen a row of its own
        # fell below the fold of the classification panel
        top_row = QHBoxLayout()
        top_row.addWidget(self.show_box, 1)
        top_row.addWidget(self.export_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top_row)
        layout.addLayout(form)
        layout.addLayout(legend_row)
        layout.addWidget(self.caveat_label)
        layout.addWidget(self.status_label)
        self._update_legend(self.colormap_combo.currentText())
        self.set_available(False)

    # state --------------------------------------------------------------------------------
    def set_available(
        self, available: bool, reason: str = "Classify the scan to get a CAM"
    ) -> None:
        """Enable the controls once a result with a CAM exists."""
        for w in (self.show_box, self.class_combo, self.export_button):
            w.setEnabled(available)
        self.set_status("" if available else reason)

    def set_status(self, text: str) -> None:
        """The line under the legend (which slice's map, its colour scale); hidden when empty,
        since an empty label still takes a row of the panel."""
        self.status_label.setText(text)
        self.status_label.setVisible(bool(text))

    def set_classes(self, labels: tuple[str, ...] | list[str], current: str) -> None:
        """Fill the class chooser without emitting ``classChanged``."""
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        self.class_combo.addItems(list(labels))
        self.class_combo.setCurrentText(current)
        self.class_combo.blockSignals(False)

    def set_opacity(self, alpha: float) -> None:
        self.opacity.setValue(round(alpha * 100))

    def set_colormap(self, name: str) -> None:
        if name in COLORMAPS:
            self.colormap_combo.setCurrentText(name)

    def alpha(self) -> float:
        return self.opacity.value() / 100.0

    def is_shown(self) -> bool:
        return self.show_box.isChecked()

    def colormap(self) -> str:
        return self.colormap_combo.currentText()

    # slots --------------------------------------------------------------------------------
    def _on_opacity(self, value: int) -> None:
        self.opacity_label.setText(f"{value}%")
        self.opacityChanged.emit(value / 100.0)

    def _on_class(self, name: str) -> None:
        if name:
            self.classChanged.emit(name)

    def _on_colormap(self, name: str) -> None:
        self._update_legend(name)
        self.colormapChanged.emit(name)

    def _update_legend(self, name: str) -> None:
        self.legend.setPixmap(QPixmap.fromImage(to_qimage(legend_rgb(name))))
