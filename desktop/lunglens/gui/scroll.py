"""Dock contents that scroll instead of growing the window.

Clinic laptops often have 1366x768 screens. A dock's minimum height is its content's, and the
window's minimum is the sum of the docks stacked in a column, so with the classification,
gallery and batch docks open the window outgrew that screen (794 px, status bar off-screen).
Inside a scroll area each dock can shrink to a small, useful minimum and scroll the rest.
"""

from __future__ import annotations

from PySide6.QtWidgets import QFrame, QScrollArea, QWidget


def scrollable(content: QWidget, min_height: int, min_width: int = 0) -> QScrollArea:
    """``content`` in a frameless, resizable scroll area at least ``min_height`` tall."""
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setWidget(content)
    area.setMinimumHeight(min_height)
    if min_width:
        area.setMinimumWidth(min_width)
    return area
