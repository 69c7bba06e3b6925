"""A one-line message label that never resizes its window: long text is elided, the whole of it is the tooltip.

A plain QLabel asks for the width of its text: a long validation message or an error widened the row it
sits in (and so the table above it), and word-wrapped labels grew the window's height as messages came
and went. This label's size hint is one line high and nothing wide; it draws as much of the message as
fits and an ellipsis, and `text()` keeps the whole message (tests and the tooltip read it).
"""

from __future__ import annotations

from PySide6 import QtCore, QtGui, QtWidgets


class MessageLabel(QtWidgets.QLabel):
    """A QLabel for status and error messages: fixed one-line height, elided to the width it is given."""

    def __init__(self, text: str = "", parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self._full = ""
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Fixed)
        self.setTextFormat(QtCore.Qt.TextFormat.PlainText)
        self.setText(text)

    def setText(self, text: str) -> None:
        """Show `text` (elided to the label's width; whole in the tooltip)."""
        self._full = text
        self.setToolTip(text if text else "")
        self._elide()

    def text(self) -> str:
        return self._full

    def sizeHint(self) -> QtCore.QSize:
        return QtCore.QSize(40, self.fontMetrics().height() + 4)

    def minimumSizeHint(self) -> QtCore.QSize:
        return QtCore.QSize(0, self.fontMetrics().height() + 4)

    def resizeEvent(self, event: QtGui.QResizeEvent) -> None:
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        line = " ".join(self._full.split())  # one line: newlines would change the height
        room = max(0, self.contentsRect().width() - 2)  # (inside its margins: a status message keeps a gap)
        shown = self.fontMetrics().elidedText(line, QtCore.Qt.TextElideMode.ElideRight, room)
        super().setText(shown)


def wrapping(label: QtWidgets.QLabel) -> QtWidgets.QLabel:
    """A word-wrapped label that takes the width its layout gives and never asks for more (an unbreakable
    URL or path in a message is clipped there, not a reason to widen the window); returns `label`."""
    label.setWordWrap(True)
    policy = label.sizePolicy()
    policy.setHorizontalPolicy(QtWidgets.QSizePolicy.Policy.Ignored)
    label.setSizePolicy(policy)
    label.setMinimumWidth(0)
    return label
