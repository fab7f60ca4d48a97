"""A dismissable error banner: failures are shown, never hidden in modal dialogs.

Modal message boxes block the radiologist's workflow (and automated tests); a banner above the
image states what went wrong and what to do, stays until dismissed or replaced, and the status bar
keeps the same message for a while.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QToolButton, QWidget

from lunglens.errors import LungLensError


class ErrorBanner(QFrame):
    """One-line (wrapping) message with a close button; hidden when empty.

    Signals
    -------
    dismissed()
        The user closed the banner.
    """

    dismissed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("error_banner")
        self.setStyleSheet(
            "QFrame#error_banner { background: #fde2e1; border: 1px solid #e0a09c; }"
            " QLabel { color: #7a1410; }"
        )
        self.label = QLabel("")
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.close_button = QToolButton()
        self.close_button.setText("✕")
        self.close_button.setToolTip("Dismiss")
        self.close_button.setAutoRaise(True)
        self.close_button.clicked.connect(self.dismiss)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 4, 4)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.close_button, 0, Qt.AlignmentFlag.AlignTop)
        self.hide()

    def show_message(self, message: str) -> None:
        """Show ``message`` (replacing any previous one)."""
        self.label.setText(message)
        self.show()

    def message(self) -> str:
        """The text shown, or ``""`` when the banner is hidden."""
        return self.label.text() if not self.isHidden() else ""

    def dismiss(self) -> None:
        self.hide()
        self.label.setText("")
        self.dismissed.emit()


def user_message(exc: BaseException) -> str:
    """User-facing text of an exception (typed LungLens errors are already sentences)."""
    if isinstance(exc, LungLensError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
