"""The in-window banner: notifications when there is no system tray, and offers such as backfilling.

Nothing shown here is modal: the banner keeps every notification it was given (counted, the newest
on top) until the operator opens or dismisses it, so an alert is never dropped silently.
"""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets

from anomalydesk.app.model.notifier import Notification
from anomalydesk.app.widgets.message_label import wrapping

_STYLE = {"info": "#dbe9fb", "warning": "#fcebc6", "critical": "#f8d0d0"}


class NotificationBanner(QtWidgets.QFrame):
    """Shows the latest notification and how many are unread; Open selects its incident."""

    open_incident = QtCore.Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.pending: list[Notification] = []
        self.setFrameShape(QtWidgets.QFrame.Shape.StyledPanel)
        self.label = wrapping(QtWidgets.QLabel())
        self.open_button = QtWidgets.QPushButton("Open")
        self.open_button.clicked.connect(self._open)
        self.dismiss_button = QtWidgets.QPushButton("Dismiss")
        self.dismiss_button.clicked.connect(self.dismiss)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 4)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.open_button)
        layout.addWidget(self.dismiss_button)
        self.setVisible(False)

    def show_notification(self, note: Notification) -> None:
        """Add a notification (the newest is shown; the rest are counted)."""
        self.pending.append(note)
        del self.pending[:-500]
        more = f" (+{len(self.pending) - 1} more)" if len(self.pending) > 1 else ""
        self.label.setText(f"<b>{note.title}</b>{more}<br>{note.body}")
        self.setStyleSheet(f"NotificationBanner {{ background: {_STYLE.get(note.severity, _STYLE['info'])}; }}")
        self.open_button.setEnabled(bool(note.incident_id))
        self.setVisible(True)

    @property
    def text(self) -> str:
        return self.label.text()

    def _open(self) -> None:
        if self.pending:
            self.open_incident.emit(self.pending[-1].incident_id)
        self.dismiss()

    def dismiss(self) -> None:
        """Mark everything read and hide."""
        self.pending.clear()
        self.setVisible(False)


class OfferBanner(QtWidgets.QFrame):
    """A one-line, non-modal offer with an action button (e.g. "backfill a day of history")."""

    accepted = QtCore.Signal()

    def __init__(self, text: str, action: str, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.setFrameShape(QtWidgets.QFrame.Shape.StyledPanel)
        self.label = wrapping(QtWidgets.QLabel(text))
        self.action_button = QtWidgets.QPushButton(action)
        self.action_button.clicked.connect(self._accept)
        self.close_button = QtWidgets.QPushButton("Not now")
        self.close_button.clicked.connect(lambda: self.setVisible(False))
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 4)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.action_button)
        layout.addWidget(self.close_button)
        self.setVisible(False)

    def _accept(self) -> None:
        self.setVisible(False)
        self.accepted.emit()
