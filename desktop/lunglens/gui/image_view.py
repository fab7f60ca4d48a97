"""The image canvas: zoom, pan, fit, 1:1, right-drag window/level, wheel slice scrolling.

The view only *displays* arrays the core produced (a windowed slice as uint8, a colored CAM as
RGB); it never windows or colors pixels itself. The CAM is a second pixmap item stacked on the
slice whose item opacity is the overlay alpha, so moving the opacity slider is a repaint, not a
recomputation (the blend ``(1 - a) * gray + a * heat`` is exactly what the item opacity paints).
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPoint, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QImage,
    QMouseEvent,
    QPainter,
    QPixmap,
    QResizeEvent,
    QWheelEvent,
)
from PySide6.QtWidgets import QGraphicsPixmapItem, QGraphicsScene, QGraphicsView, QWidget

ZOOM_STEP = 1.25
ZOOM_MIN = 0.02
ZOOM_MAX = 64.0


def to_qimage(array: np.ndarray) -> QImage:
    """Wrap a uint8 ``[H, W]`` (gray), ``[H, W, 3]`` (RGB) or ``[H, W, 4]`` (RGBA, e.g. a CAM
    with its transparent low end) array as a QImage that owns a copy.

    The copy matters: a QImage built on a numpy buffer does not keep the buffer alive.
    """
    arr = np.ascontiguousarray(array)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {arr.dtype}")
    h, w = arr.shape[:2]
    if arr.ndim == 2:
        img = QImage(arr.data, w, h, arr.strides[0], QImage.Format.Format_Grayscale8)
    elif arr.ndim == 3 and arr.shape[2] == 3:
        img = QImage(arr.data, w, h, arr.strides[0], QImage.Format.Format_RGB888)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        img = QImage(arr.data, w, h, arr.strides[0], QImage.Format.Format_RGBA8888)
    else:
        raise ValueError(f"expected [H, W], [H, W, 3] or [H, W, 4], got {arr.shape}")
    return img.copy()


class ImageView(QGraphicsView):
    """Zoomable, pannable view of one slice with an optional CAM layer.

    Signals
    -------
    hovered(x, y)
        Image pixel under the cursor, ``(-1, -1)`` when outside the image.
    windowDragged(dx, dy)
        Right-button drag in screen pixels since the last event (window/level).
    sliceStep(step)
        Wheel without modifier on a series: +1 / -1 slice.
    zoomChanged(scale)
        Current scale (1.0 = one image pixel per device-independent pixel).
    """

    hovered = Signal(int, int)
    windowDragged = Signal(int, int)
    sliceStep = Signal(int)
    zoomChanged = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setBackgroundBrush(QColor(20, 20, 20))
        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setMouseTracking(True)
        self.setAcceptDrops(False)  # the main window handles file drops
        self.image_item = QGraphicsPixmapItem()
        self.image_item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self.overlay_item = QGraphicsPixmapItem()
        self.overlay_item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self.overlay_item.setZValue(1)
        self.overlay_item.setOpacity(0.4)
        self.overlay_item.setVisible(False)
        self.scene().addItem(self.image_item)
        self.scene().addItem(self.overlay_item)
        self.fit_mode = True
        self.series_mode = False
        self._wl_last: QPoint | None = None

    # content ------------------------------------------------------------------------------
    def set_image(self, array: np.ndarray) -> None:
        """Show a uint8 slice; keeps zoom and pan unless the size changed or fit mode is on."""
        pixmap = QPixmap.fromImage(to_qimage(array))
        resized = pixmap.size() != self.image_item.pixmap().size()
        self.image_item.setPixmap(pixmap)
        self.scene().setSceneRect(QRectF(pixmap.rect()))
        if resized or self.fit_mode:
            self.fit()

    def set_overlay(self, rgb: np.ndarray | None) -> None:
        """Show a colored heat map (same size as the image) or remove it (``None``)."""
        if rgb is None:
            self.overlay_item.setPixmap(QPixmap())
            return
        self.overlay_item.setPixmap(QPixmap.fromImage(to_qimage(rgb)))

    def set_overlay_visible(self, visible: bool) -> None:
        self.overlay_item.setVisible(bool(visible))

    def set_overlay_opacity(self, alpha: float) -> None:
        self.overlay_item.setOpacity(float(np.clip(alpha, 0.0, 1.0)))

    def has_image(self) -> bool:
        return not self.image_item.pixmap().isNull()

    def clear(self) -> None:
        self.image_item.setPixmap(QPixmap())
        self.set_overlay(None)

    # zoom ---------------------------------------------------------------------------------
    def scale_factor(self) -> float:
        """Image pixels -> device-independent pixels."""
        return float(self.transform().m11())

    def fit(self) -> None:
        """Whole image in the window (F)."""
        self.fit_mode = True
        if self.has_image():
            self.fitInView(self.image_item, Qt.AspectRatioMode.KeepAspectRatio)
        self.zoomChanged.emit(self.scale_factor())

    def actual_size(self) -> None:
        """One image pixel per *device* pixel (1), so high-DPI screens show true resolution."""
        self.fit_mode = False
        self.resetTransform()
        dpr = self.devicePixelRatioF() or 1.0
        self.scale(1.0 / dpr, 1.0 / dpr)
        self.zoomChanged.emit(self.scale_factor())

    def zoom(self, factor: float) -> None:
        """Multiply the zoom by ``factor`` within sane limits."""
        current = self.scale_factor()
        target = min(ZOOM_MAX, max(ZOOM_MIN, current * factor))
        if current > 0:
            self.fit_mode = False
            self.scale(target / current, target / current)
            self.zoomChanged.emit(self.scale_factor())

    # events -------------------------------------------------------------------------------
    def wheelEvent(self, event: QWheelEvent) -> None:
        """Ctrl+wheel zooms; a plain wheel scrolls slices of a series, zooms a single image."""
        delta = event.angleDelta().y()
        if delta == 0:
            return
        ctrl = bool(event.modifiers() & Qt.KeyboardModifier.ControlModifier)
        if self.series_mode and not ctrl:
            self.sliceStep.emit(-1 if delta > 0 else 1)
        else:
            self.zoom(ZOOM_STEP if delta > 0 else 1.0 / ZOOM_STEP)
        event.accept()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.RightButton:
            self._wl_last = event.position().toPoint()
            self.viewport().setCursor(Qt.CursorShape.SizeAllCursor)
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        pos = event.position().toPoint()
        if self._wl_last is not None:
            d = pos - self._wl_last
            self._wl_last = pos
            if d.x() or d.y():
                self.windowDragged.emit(d.x(), d.y())
        self._emit_hover(pos)
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.RightButton and self._wl_last is not None:
            self._wl_last = None
            self.viewport().unsetCursor()
            event.accept()
            return
        super().mouseReleaseEvent(event)

    def leaveEvent(self, event: object) -> None:
        self.hovered.emit(-1, -1)
        super().leaveEvent(event)  # type: ignore[arg-type]

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        if self.fit_mode:
            self.fit()

    def _emit_hover(self, pos: QPoint) -> None:
        if not self.has_image():
            return
        scene: QPointF = self.mapToScene(pos)
        item = self.image_item.mapFromScene(scene)
        x, y = int(np.floor(item.x())), int(np.floor(item.y()))
        size = self.image_item.pixmap().size()
        if 0 <= x < size.width() and 0 <= y < size.height():
            self.hovered.emit(x, y)
        else:
            self.hovered.emit(-1, -1)
