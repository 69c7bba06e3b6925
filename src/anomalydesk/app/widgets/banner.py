"""The in-window banner: notifications when there is no system tray, and offers such as backfilling.

Nothing shown here is modal: the banner keeps every notification it was given (counted, the newest
on top) until the operator opens or dismisses it, so an alert is never dropped silently.

The notification banner floats over the top right of the live plots (`FloatingPlacement`): in the
layout above them it resized all of them as it came and went, and re-laying out and painting 9 plots
took 40–45 ms of the GUI thread, the longest paint of the 100-service fleet (docs/benchmarks.md, "On an
idle machine").
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
        self._title = ""  # the title line and the body of the notification shown, as plain text
        self._body = ""
        self.setFrameShape(QtWidgets.QFrame.Shape.StyledPanel)
        self.label = QtWidgets.QLabel()  # title and body, a line each, elided to its width (`_render`)
        self.label.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
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

    def _render(self) -> None:
        title, body = self._title, self._body
        width = self.label.contentsRect().width()
        if width > 0:
            bold = QtGui.QFont(self.label.font())
            bold.setBold(True)
            elide = QtCore.Qt.TextElideMode.ElideRight
            title = QtGui.QFontMetrics(bold).elidedText(title, elide, width)
            body = self.label.fontMetrics().elidedText(body, elide, width)
        self.label.setText(f"<b>{html.escape(title)}</b><br>{html.escape(body)}" if title or body else "")

    def resizeEvent(self, event: QtGui.QResizeEvent) -> None:
        super().resizeEvent(event)
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


class FloatingPlacement(QtCore.QObject):
    """Keeps `banner` floating over the top right of `area` (the live plots), out of every layout, raised
    above them: a banner in the layout above the plots resized all of them when it came and went.
    The banner's height is fixed: title and body on a line each, elided (whole in its tooltip and in
    the incident Open selects)."""

    MARGIN = 8  # px from the area's top and right edges
    MAX_WIDTH = 640

    def __init__(self, banner: NotificationBanner, area: QtWidgets.QWidget) -> None:
        super().__init__(banner)
        self.banner = banner
        self.area = area
        self.watched: list[QtWidgets.QWidget] = []
        banner.installEventFilter(self)
        self._watch_chain()

    def _watch_chain(self) -> None:
        """Watch the area and each of its ancestors below the banner's parent: a panel between them can
        move without the plots being resized or moved within it."""
        for old in self.watched:
            try:
                old.removeEventFilter(self)
            except RuntimeError:  # deleted on the C++ side meanwhile
                pass
        self.watched = []
        widget: QtWidgets.QWidget | None = self.area
        parent = self.banner.parentWidget()
        while widget is not None and widget is not parent:
            widget.installEventFilter(self)
            self.watched.append(widget)
            widget = widget.parentWidget()

    def eventFilter(self, watched: QtCore.QObject, event: QtCore.QEvent) -> bool:
        kind = event.type()
        if kind == QtCore.QEvent.Type.ParentChange:
            self._watch_chain()
        if kind in (QtCore.QEvent.Type.Resize, QtCore.QEvent.Type.Move, QtCore.QEvent.Type.Show,
                    QtCore.QEvent.Type.ParentChange):
            self.place()
        return False

    def place(self) -> None:
        """Put the banner at the area's top right (the area's parent chain must hold the banner's parent)."""
        parent = self.banner.parentWidget()
        if parent is None or not parent.isAncestorOf(self.area):
            return
        origin = self.area.mapTo(parent, QtCore.QPoint(0, 0))
        width = max(0, min(self.area.width() - 2 * self.MARGIN, self.MAX_WIDTH))
        x = origin.x() + self.area.width() - width - self.MARGIN
        geometry = QtCore.QRect(x, origin.y() + self.MARGIN, width, self.banner.sizeHint().height())
        if self.banner.geometry() != geometry:
            self.banner.setGeometry(geometry)
        self.banner.raise_()


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
