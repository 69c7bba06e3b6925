"""Tray icon and notification delivery: QSystemTrayIcon where a tray exists, the in-window banner otherwise.

The icon's colour shows health (none / warning / critical, from `IncidentsState`); its menu has
show/hide, pause notifications for 1 h (ticked while a pause, also one saved in the settings, is in
force), and quit. Clicking a notification opens that incident.
When `QSystemTrayIcon.isSystemTrayAvailable()` is False (offscreen, a desktop without a tray) every
notification goes to the window's banner instead — an alert is never dropped silently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from PySide6 import QtCore, QtGui, QtWidgets

from anomalydesk import config
from anomalydesk.app.model.notifier import Notification, Notifier
from anomalydesk.app.model.state import IncidentsState

log = logging.getLogger(__name__)
STILL_RUNNING = Notification(
    "AnomalyDesk is still running",
    "Its window was closed to the tray and notifications keep coming. Open it from the tray icon or by "
    "starting AnomalyDesk again; Quit (tray menu or File) ends it. File → Close to tray turns this off.",
    "info", "",
)  # fmt: skip

HEALTH_COLOUR = {"none": QtGui.QColor(60, 170, 90), "warning": QtGui.QColor(240, 170, 40),
                 "critical": QtGui.QColor(220, 50, 50)}  # fmt: skip
_TRAY_ICON = {"info": QtWidgets.QSystemTrayIcon.MessageIcon.Information,
              "warning": QtWidgets.QSystemTrayIcon.MessageIcon.Warning,
              "critical": QtWidgets.QSystemTrayIcon.MessageIcon.Critical}  # fmt: skip


def health_icon(level: str, size: int = 64) -> QtGui.QIcon:
    """A filled circle in the health colour."""
    pixmap = QtGui.QPixmap(size, size)
    pixmap.fill(QtCore.Qt.GlobalColor.transparent)
    painter = QtGui.QPainter(pixmap)
    painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
    painter.setBrush(HEALTH_COLOUR.get(level, HEALTH_COLOUR["none"]))
    painter.setPen(QtGui.QPen(QtGui.QColor(30, 30, 30), 3))
    painter.drawEllipse(4, 4, size - 8, size - 8)
    painter.end()
    return QtGui.QIcon(pixmap)


class Tray(QtCore.QObject):
    """Owns the tray icon (if any) and delivers notifications to it or to the banner."""

    notification_shown = QtCore.Signal(object)  # Notification, after delivery (tests and bench listen)
    open_incident = QtCore.Signal(str)
    toggle_window = QtCore.Signal()
    quit_requested = QtCore.Signal()

    def __init__(self, incidents: IncidentsState, notifier: Notifier,
                 banner: Callable[[Notification], None], force_banner: bool = False,
                 parent: QtCore.QObject | None = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.incidents = incidents
        self.notifier = notifier
        self.banner = banner
        self.level = incidents.health
        self.last_incident = ""
        self.delivered: list[Notification] = []
        self.told_still_running = 0  # times the window was closed to the tray and the tray said so
        self.available = QtWidgets.QSystemTrayIcon.isSystemTrayAvailable() and not force_banner
        # the icon and its menu are built either way (shown only where a tray exists), so the menu's
        # actions and the icon's signals are the same objects on every platform (and in the tests)
        self.icon: QtWidgets.QSystemTrayIcon | None = QtWidgets.QSystemTrayIcon(health_icon(self.level), self)
        self.icon.setToolTip(config.APP_TITLE)
        self.menu = QtWidgets.QMenu()
        self.show_action = self.menu.addAction("Show / hide window")
        self.show_action.triggered.connect(self.toggle_window.emit)
        self.pause_action = self.menu.addAction("Pause notifications for 1 hour")
        self.pause_action.setCheckable(True)
        self.pause_action.setChecked(notifier.paused)  # a pause saved in the settings is still in force
        self.pause_action.toggled.connect(self.set_paused)
        self.menu.aboutToShow.connect(self._sync_pause)
        self.menu.addSeparator()
        self.quit_action = self.menu.addAction("Quit")
        self.quit_action.triggered.connect(self.quit_requested.emit)
        self.icon.setContextMenu(self.menu)
        self.icon.messageClicked.connect(self._message_clicked)
        self.icon.activated.connect(self._activated)
        if self.available:
            self.icon.show()
        else:
            log.info("no system tray: notifications are shown in the window's banner")
        notifier.deliver = self.deliver
        incidents.health_changed.connect(self.set_health)

    def set_health(self, level: str) -> None:
        """Recolour the icon."""
        self.level = level
        if self.icon is not None:
            self.icon.setIcon(health_icon(level))
            self.icon.setToolTip(f"AnomalyDesk — {level if level != 'none' else 'all normal'}")

    def set_paused(self, paused: bool) -> None:
        """Pause notifications for an hour (or resume)."""
        if paused:
            until = self.notifier.pause()
            log.info("notifications paused until %s", time.strftime("%H:%M", time.localtime(until)))
        else:
            self.notifier.resume()

    def _sync_pause(self) -> None:
        """Untick "Pause" once the hour is over (the menu is about to be shown)."""
        if self.pause_action.isChecked() != self.notifier.paused:
            self.pause_action.blockSignals(True)
            self.pause_action.setChecked(self.notifier.paused)
            self.pause_action.blockSignals(False)

    def deliver(self, note: Notification) -> None:
        """Show one notification: a tray message, or the banner when there is no tray."""
        self.last_incident = note.incident_id or self.last_incident
        if self.available and self.icon is not None:
            self.icon.showMessage(note.title, note.body, _TRAY_ICON.get(note.severity, _TRAY_ICON["info"]), 15_000)
        else:
            self.banner(note)
        self.delivered.append(note)
        del self.delivered[:-100]
        self.notification_shown.emit(note)

    def tell_still_running(self) -> Notification:
        """The window was closed to the tray: say so through the notification service (a tray can be
        announced and yet not be visible), so the app never vanishes without a word."""
        log.info("window closed to the tray; the app keeps running")
        if self.available and self.icon is not None:
            self.icon.showMessage(STILL_RUNNING.title, STILL_RUNNING.body, _TRAY_ICON["info"], 15_000)
        self.told_still_running += 1
        return STILL_RUNNING

    def _message_clicked(self) -> None:
        if self.last_incident:
            self.open_incident.emit(self.last_incident)

    def _activated(self, reason: QtWidgets.QSystemTrayIcon.ActivationReason) -> None:
        if reason == QtWidgets.QSystemTrayIcon.ActivationReason.Trigger:
            self.toggle_window.emit()

    def close(self) -> None:
        """Remove the icon and its menu."""
        if self.icon is not None:
            self.icon.hide()
            self.icon.deleteLater()
            self.icon = None
            self.menu.deleteLater()
