"""The in-window banner: notifications when there is no system tray, and offers such as backfilling.

Nothing shown here is modal: the banner keeps every notification it was given (counted, the newest
on top) until the operator opens or dismisses it, so an alert is never dropped silently.

Where there is no tray the banner's row is reserved (`BannerRow.reserve`): a banner that came and
went above the plots resized all of them, and re-laying out and painting 9 plots took 40–45 ms of
the GUI thread, the longest paint of the 100-service fleet (docs/benchmarks.md, "On an idle machine").
"""

from __future__ import annotations

import html

from PySide6 import QtCore, QtGui, QtWidgets

from anomalydesk.app.model.notifier import Notification
from anomalydesk.app.widgets.message_label import wrapping

_STYLE = {"info": "#dbe9fb", "warning": "#fcebc6", "critical": "#f8d0d0"}


class NotificationBanner(QtWidgets.QFrame):
    """Shows the latest notification and how many are unread; Open selects its incident."""

    open_incident = QtCore.Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.pending: list[Notification] = []
        self.one_line_body = False  # the body elided to one line (`set_one_line_body`, in a reserved row)
        self._title = ""  # the title line and the body of the notification shown, as plain text
        self._body = ""
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
        self._title, self._body = f"{note.title}{more}", note.body
        self.label.setToolTip(f"{self._title}\n{self._body}")  # whole, where the banner elides it
        self._render()
        self.setStyleSheet(f"NotificationBanner {{ background: {_STYLE.get(note.severity, _STYLE['info'])}; }}")
        self.open_button.setEnabled(bool(note.incident_id))
        self.setVisible(True)

    def set_one_line_body(self, one_line: bool) -> None:
        """Title and body on one line each, elided to the banner's width (the banner's height fixed), or
        wrapped over as many lines as they need."""
        self.one_line_body = one_line
        self.label.setWordWrap(not one_line)
        self._render()

    def _render(self) -> None:
        title, body = self._title, self._body
        width = self.label.contentsRect().width()
        if self.one_line_body and width > 0:
            bold = QtGui.QFont(self.label.font())
            bold.setBold(True)
            elide = QtCore.Qt.TextElideMode.ElideRight
            title = QtGui.QFontMetrics(bold).elidedText(title, elide, width)
            body = self.label.fontMetrics().elidedText(body, elide, width)
        self.label.setText(f"<b>{html.escape(title)}</b><br>{html.escape(body)}" if title or body else "")

    def resizeEvent(self, event: QtGui.QResizeEvent) -> None:
        super().resizeEvent(event)
        if self.one_line_body:
            self._render()

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


class BannerRow(QtWidgets.QWidget):
    """The banner's row of the window. Reserved (`reserve(True)`, where notifications have no tray to go
    to) it keeps the height of a two-line banner whether a notification shows or not, with a line that
    says what the row is for, and the banner elides its title and body to a line each (whole in its
    tooltip and in the incident it opens), so the plots below never move.
    Not reserved it is as tall as the banner, and nothing while the banner is hidden."""

    PLACEHOLDER = "No system tray here: notifications appear in this row."

    def __init__(self, banner: NotificationBanner, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.banner = banner
        self.reserved = False
        self.placeholder = QtWidgets.QLabel(self.PLACEHOLDER)
        self.placeholder.setEnabled(False)  # greyed: a hint, not a message
        self.placeholder.setContentsMargins(12, 0, 0, 0)
        self.placeholder.setVisible(False)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(banner)
        layout.addWidget(self.placeholder)
        banner.installEventFilter(self)

    def reserve(self, reserved: bool) -> None:
        """Keep the row's height whether a notification shows or not (True where there is no tray)."""
        self.reserved = reserved
        self.banner.set_one_line_body(reserved)
        self.setMinimumHeight(self.two_line_height() if reserved else 0)
        self._sync()

    def two_line_height(self) -> int:
        """The banner's height with a title and a one-line body (the usual notification)."""
        label = self.banner.label
        text, wraps = label.text(), label.wordWrap()
        label.setWordWrap(False)
        label.setText("<b>title</b><br>body")
        height = self.banner.sizeHint().height()
        label.setWordWrap(wraps)
        label.setText(text)
        return height

    def eventFilter(self, watched: QtCore.QObject, event: QtCore.QEvent) -> bool:
        if watched is self.banner and event.type() in (QtCore.QEvent.Type.Show, QtCore.QEvent.Type.Hide):
            self._sync()
        return False

    def _sync(self) -> None:
        self.placeholder.setVisible(self.reserved and self.banner.isHidden())

    def changeEvent(self, event: QtCore.QEvent) -> None:
        super().changeEvent(event)
        if event.type() == QtCore.QEvent.Type.FontChange and self.reserved:
            self.reserve(True)


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
