"""Activation gallery dock: the most active channel maps of one of the model's gallery layers.

The maps come from :func:`lunglens.explain.activation_maps`, run in a pool worker (a big model's
early layers are large), and are cached per (scan, slice, model, layer, N) so flipping between
layers or re-opening the dock is instant and costs no extra inference. The dock only computes
while it is visible: a hidden gallery must not slow down classification on a small laptop.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDockWidget,
    QHBoxLayout,
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from lunglens.explain import ChannelMap, layer_description
from lunglens.gui.image_view import to_qimage
from lunglens.gui.scroll import scrollable
from lunglens.gui.workers import Worker, WorkerPool
from lunglens.models import ModelInfo
from lunglens.viewer.jobs import gallery_maps, map_rgb

THUMB = 88
#: Side of an enlarged map (screen pixels): the maps are 8-64 px, readable only when big.
ENLARGED = 480
#: Smallest height of the gallery's content (the layer chooser and a row of maps; the rest
#: scrolls), so the window with every dock open still fits a 1366x768 screen.
GALLERY_MIN_HEIGHT = 150
NO_CONTEXT_TEXT = "Open and classify a scan to see what the model's layers respond to."


class EnlargedMap(QDialog):
    """One channel map at a readable size, with what its layer shows in plain words."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Activation map")
        self.image = QLabel()
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image.setMinimumSize(ENLARGED, ENLARGED)
        self.caption = QLabel("")
        self.caption.setWordWrap(True)
        self.caption.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.image, 1)
        layout.addWidget(self.caption)
        layout.addWidget(buttons)

    def show_map(self, rgb: np.ndarray, caption: str) -> None:
        # Nearest-neighbour scaling keeps each activation cell a crisp square instead of a blur.
        pix = QPixmap.fromImage(to_qimage(rgb)).scaled(
            ENLARGED,
            ENLARGED,
            Qt.AspectRatioMode.KeepAspectRatio,
            Qt.TransformationMode.FastTransformation,
        )
        self.image.setPixmap(pix)
        self.caption.setText(caption)
        # a wrapped label asks for its height only after layout: reserve what the text needs
        # at the map's width, so the dialog does not draw it over the bottom of the map
        self.caption.setMinimumHeight(self.caption.heightForWidth(ENLARGED))
        self.adjustSize()
        self.show()
        self.raise_()


class GalleryDock(QDockWidget):
    """Dock listing the model's gallery layers and a grid of channel maps.

    Signals
    -------
    computed(int)
        Number of maps shown after a computation or a cache hit.
    failed(str)
        A computation failed; the main window shows the message in its banner.
    """

    computed = Signal(int)
    failed = Signal(str)

    def __init__(self, pool: WorkerPool, parent: QWidget | None = None) -> None:
        super().__init__("Activation gallery", parent)
        self.setObjectName("gallery_dock")
        self.pool = pool
        self.cache: dict[Hashable, list[ChannelMap]] = {}
        self._context: tuple[Any, int, np.ndarray, ModelInfo] | None = None
        self._worker: Worker | None = None
        self._pending_key: Hashable | None = None
        self.maps: list[ChannelMap] = []
        self._maps_model = ""
        self._build_controls()
        self._build_grid()
        self.setWidget(scrollable(self._layout_body(), GALLERY_MIN_HEIGHT))
        self.visibilityChanged.connect(self._on_visibility)

    def _build_controls(self) -> None:
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("Layer of the model (from its manifest)")
        self.layer_combo.currentIndexChanged.connect(lambda _i: self.refresh())
        self.layer_combo.currentIndexChanged.connect(lambda _i: self._explain_layer())
        self.top_n = QSpinBox()
        self.top_n.setRange(1, 64)
        self.top_n.setValue(16)
        self.top_n.setPrefix("top ")
        self.top_n.setToolTip("Channels with the highest mean activation")
        self.top_n.valueChanged.connect(lambda _v: self.refresh())
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setMaximumHeight(12)
        self.progress.setMinimumWidth(24)  # shares a row with three controls in a narrow dock
        self.progress.setTextVisible(False)
        self.status = QLabel(NO_CONTEXT_TEXT)
        self.status.setWordWrap(True)
        self.explain_label = QLabel("")
        self.explain_label.setObjectName("layer_explanation")
        self.explain_label.setWordWrap(True)
        self.explain_label.setStyleSheet("color: #444;")
        self.enlarge_button = QPushButton("Enlarge")
        self.enlarge_button.setToolTip("Show the selected map at a readable size")
        self.enlarge_button.setEnabled(False)
        self.enlarge_button.clicked.connect(self.enlarge_selected)
        self.enlarged = EnlargedMap(self)

    def _build_grid(self) -> None:
        self.grid = QListWidget()
        self.grid.setViewMode(QListView.ViewMode.IconMode)
        self.grid.setIconSize(QSize(THUMB, THUMB))
        self.grid.setResizeMode(QListView.ResizeMode.Adjust)
        self.grid.setMovement(QListView.Movement.Static)
        self.grid.setSpacing(4)
        self.grid.setUniformItemSizes(True)
        self.grid.currentRowChanged.connect(self.enlarge)
        self.grid.itemDoubleClicked.connect(lambda _item: self.enlarge_selected())
        self.preview = QLabel("Click a map to enlarge it")
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        # Small minimums (one row of maps, a thumbnail-sized preview; the splitter between them
        # and the dock resize up): with the batch dock open the window must still fit a
        # 1366x768 laptop screen.
        self.preview.setMinimumHeight(64)
        self.grid.setMinimumHeight(THUMB + 24)
        self.preview_caption = QLabel("")
        self.preview_caption.setAlignment(Qt.AlignmentFlag.AlignCenter)

    def _layout_body(self) -> QWidget:
        # the layer's name and shape get a row of their own (beside three buttons the dock's
        # width left "stage1 [1"); the progress bar shares the buttons' row
        row = QHBoxLayout()
        row.addWidget(self.top_n)
        row.addWidget(self.enlarge_button)
        row.addWidget(self.cancel_button)
        row.addWidget(self.progress, 1)
        preview_box = QWidget()
        pv = QVBoxLayout(preview_box)
        pv.setContentsMargins(0, 0, 0, 0)
        pv.addWidget(self.preview, 1)
        pv.addWidget(self.preview_caption)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.grid)
        split.addWidget(preview_box)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setSizes([300, 200])
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.addWidget(self.layer_combo)
        layout.addLayout(row)
        layout.addWidget(self.explain_label)
        layout.addWidget(self.status)
        layout.addWidget(split, 1)
        return body

    def _on_visibility(self, visible: bool) -> None:
        if visible:
            self.refresh()

    # context ------------------------------------------------------------------------------
    def set_context(
        self,
        scan_key: Any,
        slice_index: int,
        image2d: np.ndarray | None,
        info: ModelInfo | None,
        unscored: str | None = None,
    ) -> None:
        """The slice and model the gallery is about; recomputes (or hits the cache) if shown.

        ``info`` None (no model, or ``unscored``: why the scan gets no model output) empties
        the gallery and cancels a computation in flight."""
        if image2d is None or info is None:
            self._context = None
            self.cancel()
            self.layer_combo.blockSignals(True)
            self.layer_combo.clear()
            self.layer_combo.blockSignals(False)
            self._show([])
            self.explain_label.setText("")  # no layer to explain
            self.status.setText(f"No activation maps: {unscored}." if unscored else NO_CONTEXT_TEXT)
            return
        old_model = self._context[3].name if self._context else None
        self._context = (scan_key, slice_index, image2d, info)
        if old_model != info.name or self.layer_combo.count() != len(info.gallery):
            self.layer_combo.blockSignals(True)
            self.layer_combo.clear()
            for layer in info.gallery:
                shape = "x".join(str(s) for s in layer.shape)
                self.layer_combo.addItem(f"{layer.layer}  [{shape}]", layer.output)
            self.layer_combo.blockSignals(False)
            self._explain_layer()
        if not info.gallery:
            self._show([])
            self.status.setText(f"Model {info.name} lists no gallery layers in its manifest.")
            return
        self.refresh()

    def _explain_layer(self) -> None:
        i, n = self.layer_combo.currentIndex(), self.layer_combo.count()
        self.explain_label.setText(layer_description(i, n) if i >= 0 else "")

    def clear_cache(self) -> None:
        """Forget maps of the previous scan (called when another scan is opened)."""
        self.cache.clear()

    def current_key(self) -> Hashable | None:
        if self._context is None or self.layer_combo.currentIndex() < 0:
            return None
        scan_key, idx, _img, info = self._context
        return (
            scan_key,
            idx,
            info.name,
            info.sha256,
            self.layer_combo.currentData(),
            self.top_n.value(),
        )

    # computation --------------------------------------------------------------------------
    def refresh(self) -> None:
        """Show the maps for the current context: from the cache, or start a worker."""
        key = self.current_key()
        if key is None or self._context is None or not self.isVisible():
            return
        if key in self.cache:
            self._show(self.cache[key])
            return
        if self._worker is not None:
            if self._pending_key == key:
                return
            self._worker.cancel()  # its result is ignored by key below
        _scan, idx, image2d, info = self._context
        output = str(self.layer_combo.currentData())
        worker = Worker(gallery_maps, info, image2d, output, self.top_n.value())
        self._worker, self._pending_key = worker, key
        worker.signals.result.connect(lambda maps, k=key: self._on_result(k, maps))
        worker.signals.error.connect(self._on_error)
        worker.signals.finished.connect(lambda w=worker: self._on_finished(w))
        self.progress.setRange(0, 0)
        self.cancel_button.setEnabled(True)
        self.status.setText(f"Computing {self.layer_combo.currentText()} for slice {idx + 1}…")
        self.pool.start(worker)

    def cancel(self) -> None:
        """Stop waiting for the running computation (its result will be dropped)."""
        if self._worker is not None:
            self._worker.cancel()
            self._pending_key = None
            self.status.setText("Cancelled.")
            self._idle()

    def busy(self) -> bool:
        return self._worker is not None

    def _on_result(self, key: Hashable, maps: list[ChannelMap]) -> None:
        self.cache[key] = maps
        if key == self.current_key() and key == self._pending_key:
            self._show(maps)

    def _on_error(self, exc: BaseException) -> None:
        self.status.setText(f"Gallery failed: {exc}")
        self.failed.emit(str(exc))

    def _on_finished(self, worker: Worker) -> None:
        if worker is self._worker:
            self._worker = None
            self._pending_key = None
            self._idle()

    def _idle(self) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.cancel_button.setEnabled(False)

    # display ------------------------------------------------------------------------------
    def _show(self, maps: list[ChannelMap]) -> None:
        self.maps = list(maps)
        self._maps_model = self.model_text()  # the maps keep their model's name
        self.grid.clear()
        for m in maps:
            pix = QPixmap.fromImage(to_qimage(map_rgb(m)))
            icon = QIcon(
                pix.scaled(
                    THUMB,
                    THUMB,
                    Qt.AspectRatioMode.KeepAspectRatio,
                    Qt.TransformationMode.SmoothTransformation,
                )
            )
            item = QListWidgetItem(icon, f"ch {m.channel}")
            item.setToolTip(f"channel {m.channel}, mean activation {m.mean:.3g}")
            self.grid.addItem(item)
        if maps and self._context is not None:
            self.status.setText(
                f"{len(maps)} most active channels of {self.layer_combo.currentText()}, "
                f"slice {self._context[1] + 1}, {self.model_text()}. Click one to enlarge."
            )
        self.preview.setPixmap(QPixmap())
        self.preview.setText("Click a map to enlarge it" if maps else "")
        self.preview_caption.setText("")
        self.enlarge_button.setEnabled(False)
        self.computed.emit(len(maps))

    def enlarge(self, row: int) -> None:
        """Show map ``row`` big under the grid."""
        if not 0 <= row < len(self.maps):
            return
        m = self.maps[row]
        pix = QPixmap.fromImage(to_qimage(map_rgb(m)))
        side = max(128, min(self.preview.width(), self.preview.height()) - 4)
        self.preview.setPixmap(
            pix.scaled(
                side,
                side,
                Qt.AspectRatioMode.KeepAspectRatio,
                Qt.TransformationMode.FastTransformation,
            )
        )
        self.preview_caption.setText(f"channel {m.channel} (mean activation {m.mean:.3g})")
        self.enlarge_button.setEnabled(True)

    def enlarge_selected(self) -> None:
        """Open the selected map (default: the first) big in its own window."""
        row = max(0, self.grid.currentRow())
        if not 0 <= row < len(self.maps):
            return
        m = self.maps[row]
        self.enlarged.setWindowTitle(f"{self.layer_combo.currentText()} - channel {m.channel}")
        self.enlarged.show_map(
            map_rgb(m),
            f"Channel {m.channel} of {self.layer_combo.currentText()} (mean activation "
            f"{m.mean:.3g}), {self._maps_model}. {self.explain_label.text()}",
        )

    def model_text(self) -> str:
        """The model the maps come from, as the classification panel names it (name, version,
        hash prefix): with several models installed a map must be traceable to one."""
        if self._context is None:
            return ""
        info = self._context[3]
        return f"model {info.name} v{info.version} (SHA-256 {info.sha256[:12]})"
