"""The main window's status bar: what an action did at the left, the connection's state at the right.

`QStatusBar.showMessage` paints its message straight onto the bar, cut off (not elided) where the first
permanent widget begins: at 1280 px an export's message ran into the connection's state, "…/Documents
connected · redis://…", two texts read as one, and the rest of the message could not be read anywhere.
Here the message is a label of its own (`MessageLabel`: elided, the whole text in its tooltip) with a
gap before the connection's state, which is elided past its maximum width the same way.
`showMessage`, `currentMessage` and `clearMessage` keep QStatusBar's meaning (a message with a timeout
goes away after it).
"""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets

from anomalydesk.app.widgets.message_label import MessageLabel

MESSAGE_GAP_PX = 16  # empty room between the end of the message and the connection's state


class ConnectionStatusLabel(MessageLabel):
    """The connection's state in the status bar: as wide as its text, up to `max_width` (elided beyond).

    It sat in the bar with stretch 1 and took the whole width, so the temporary messages (what an action
    did) were drawn into the zero pixels left of it and never seen.
    """

    def __init__(self, max_width: int, parent: QtWidgets.QWidget | None = None) -> None:
        self.max_width = max_width
        super().__init__("", parent)
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Preferred, QtWidgets.QSizePolicy.Policy.Fixed)

    def setText(self, text: str) -> None:
        super().setText(text)
        self.updateGeometry()  # its size hint follows the text

    def sizeHint(self) -> QtCore.QSize:
        width = self.fontMetrics().horizontalAdvance(" ".join(self.text().split())) + 8
        return QtCore.QSize(min(width, self.max_width), super().sizeHint().height())


class StatusBar(QtWidgets.QStatusBar):
    """A status bar whose message (`message`) and connection state (`connection`) are labels side by side,
    each elided to its own room with its whole text in its tooltip."""

    def __init__(self, connection_max_width: int, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizeGripEnabled(False)
        self.message = MessageLabel("")
        self.message.setContentsMargins(0, 0, MESSAGE_GAP_PX, 0)
        self.addWidget(self.message, 1)
        self.connection = ConnectionStatusLabel(connection_max_width)
        self.addPermanentWidget(self.connection)
        self._expiry = QtCore.QTimer(self)
        self._expiry.setSingleShot(True)
        self._expiry.timeout.connect(self.clearMessage)

    def showMessage(self, text: str, timeout: int = 0) -> None:
        """Show `text` until the next message, or for `timeout` ms."""
        self.message.setText(text)
        if timeout > 0:
            self._expiry.start(timeout)
        else:
            self._expiry.stop()
        self.messageChanged.emit(text)

    def currentMessage(self) -> str:
        """The message shown now, whole ("" when none)."""
        return self.message.text()

    def clearMessage(self) -> None:
        """Take the message away."""
        self._expiry.stop()
        if self.message.text():
            self.message.setText("")
            self.messageChanged.emit("")
