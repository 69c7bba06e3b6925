"""The main window: live plots in the middle, panels in docks, banners on top; close-to-tray.

Geometry and the dock layout are saved into the JSON settings (base64 of saveGeometry/saveState)
and restored at start-up.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from PySide6 import QtCore, QtGui, QtWidgets

from anomalydesk import config
from anomalydesk.app.model import settings as settings_mod
from anomalydesk.app.model.settings import AppSettings
from anomalydesk.app.model.state import AppState, IncidentRow
from anomalydesk.app.services import autostart
from anomalydesk.app.services.range_history import RangeLoader
from anomalydesk.app.widgets import wheel_guard
from anomalydesk.app.widgets.banner import FloatingPlacement, NotificationBanner, OfferBanner
from anomalydesk.app.widgets.connection_panel import ConnectionPanel
from anomalydesk.app.widgets.demo_panel import DemoPanel
from anomalydesk.app.widgets.incidents_panel import IncidentsPanel
from anomalydesk.app.widgets.live_panel import LivePanel
from anomalydesk.app.widgets.overview_strip import OverviewStrip
from anomalydesk.app.widgets.sketches_panel import SketchesPanel
from anomalydesk.app.widgets.status_bar import StatusBar
from anomalydesk.app.widgets.training_panel import TrainingPanel
from anomalydesk.app.widgets.tray import health_icon

log = logging.getLogger(__name__)


def _b64(data: QtCore.QByteArray) -> str:
    return base64.b64encode(bytes(data.data())).decode("ascii")


def _unb64(text: str) -> QtCore.QByteArray | None:
    try:
        return QtCore.QByteArray(base64.b64decode(text.encode("ascii"), validate=True))
    except (ValueError, UnicodeError):
        return None


def range_loader(actions: Any) -> RangeLoader | None:
    """The live plots' reader of older windows, on the session that `actions` works on now (None for
    the tests' actions that have no session)."""
    if not hasattr(actions, "session"):
        return None
    return RangeLoader(lambda: (actions.session.core.sync, actions.session.core.keys))


def _scrolled(widget: QtWidgets.QWidget) -> QtWidgets.QScrollArea:
    area = QtWidgets.QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    area.setWidget(widget)
    return area


class MainWindow(QtWidgets.QMainWindow):
    """Composes the panels; knows nothing about Redis."""

    closing = QtCore.Signal()  # the window really closes (not to the tray)
    hidden_to_tray = QtCore.Signal()  # closed to the tray: the app keeps running (the tray says so)

    def __init__(self, state: AppState, actions: Any, settings: AppSettings, reconnect: Any = None,
                 parent: QtWidgets.QWidget | None = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.state = state
        self.actions = actions
        self.settings = settings
        self.tray_available = False
        self.quitting = False
        self.setWindowTitle(config.APP_TITLE)
        self.setWindowIcon(health_icon("none"))
        self.resize(1280, 800)

        self.banner = NotificationBanner()
        self.banner.open_incident.connect(self.open_incident)
        self.backfill_offer = OfferBanner(
            "No model can be trained yet: the demo has no history. Backfill a day of demo traffic in "
            "simulated time (takes well under a minute) so you can train at once?", "Backfill a day")
        self.live = LivePanel(state, settings, ranges=range_loader(actions))
        central = QtWidgets.QWidget()
        cl = QtWidgets.QVBoxLayout(central)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.addWidget(self.backfill_offer)
        cl.addWidget(self.live, 1)
        self.setCentralWidget(central)
        self.banner.setParent(central)  # not in the layout: it floats over the plots (banner.py)
        self.banner_placement = FloatingPlacement(self.banner, self.live.graphics)

        self.incidents = IncidentsPanel(state, actions)
        self.incidents.incident_chosen.connect(self._show_service_of)
        self.connection = ConnectionPanel(state, settings, reconnect or (lambda: None))
        self.sketches = SketchesPanel(state, actions)
        self.demo = DemoPanel(state, actions, settings)
        self.training = TrainingPanel(state, actions, settings)
        self.backfill_offer.accepted.connect(self.demo.backfill)
        state.demo.changed.connect(self._backfill_changed)

        self.docks: dict[str, QtWidgets.QDockWidget] = {}
        self._dock("incidents", "Incidents", self.incidents, QtCore.Qt.DockWidgetArea.BottomDockWidgetArea)
        for name, title, widget in (("demo", "Demo", self.demo), ("training", "Training", self.training),
                                    ("connection", "Connection", self.connection),
                                    ("sketches", "Sketches", self.sketches)):  # fmt: skip
            # scrolled: a tall panel (Sketches' form + tables) must not set the window's minimum height
            self._dock(name, title, _scrolled(widget), QtCore.Qt.DockWidgetArea.RightDockWidgetArea)
        self.tabifyDockWidget(self.docks["demo"], self.docks["training"])
        self.tabifyDockWidget(self.docks["training"], self.docks["connection"])
        self.tabifyDockWidget(self.docks["connection"], self.docks["sketches"])
        self.docks["demo"].raise_()
        # across the whole top (a toolbar spans the docks too); each tile brings up its panel
        self.overview = OverviewStrip(state)
        self.overview.open_panel.connect(self.show_panel)
        self.overview_bar = QtWidgets.QToolBar("Overview")
        self.overview_bar.setObjectName("toolbar-overview")
        self.overview_bar.setMovable(False)
        self.overview_bar.setFloatable(False)
        self.overview_bar.addWidget(self.overview)
        self.addToolBar(QtCore.Qt.ToolBarArea.TopToolBarArea, self.overview_bar)
        self.resizeDocks([self.docks["incidents"]], [330], QtCore.Qt.Orientation.Vertical)

        view = self.menuBar().addMenu("&View")
        view.addAction(self.overview_bar.toggleViewAction())
        for dock in self.docks.values():
            view.addAction(dock.toggleViewAction())
        file_menu = self.menuBar().addMenu("&File")
        self.login_action = file_menu.addAction("Start at login")
        self.login_action.setCheckable(True)
        self.login_action.setChecked(autostart.is_enabled())
        self.login_action.toggled.connect(self.set_start_at_login)
        self.tray_close_action = file_menu.addAction("Close to tray")
        self.tray_close_action.setCheckable(True)
        self.tray_close_action.setChecked(settings.close_to_tray)
        self.tray_close_action.toggled.connect(lambda on: setattr(self.settings, "close_to_tray", on))
        self.file_menu = file_menu
        self.quit_action = file_menu.addAction("Quit")
        self.quit_action.setShortcut(QtGui.QKeySequence.StandardKey.Quit)
        self.quit_action.triggered.connect(self.quit)
        incidents_menu = self.menuBar().addMenu("&Incidents")
        for action in self.incidents.shortcut_actions.values():
            incidents_menu.addAction(action)
        # the connection's state stays in view at the right (elided: a long reason never widens the
        # window); what an action did comes and goes as a message in the rest of the bar, elided too
        self.status = StatusBar(settings_mod.CONNECTION_STATUS_MAX_WIDTH)
        self.setStatusBar(self.status)
        self.connection_status = self.status.connection
        state.feedback.connect(self.say)
        self._server_url = state.connection.url
        self._connections = 0  # transitions to "connected" seen (start-up reads models and sketches itself)
        self._was_connected = False
        state.connection.changed.connect(self._status_changed)
        state.connection.changed.connect(self._connection_changed)
        state.incidents.health_changed.connect(lambda level: self.setWindowIcon(health_icon(level)))
        self.wheel_guard = wheel_guard.guard(self)  # the wheel changes a spin box only when focused
        self.restore_layout()

    def _backfill_changed(self) -> None:
        """History landed: the offer to backfill has done its work (Demo panel or banner)."""
        if self.state.demo.backfill.startswith("done") and "you can train now" in self.state.demo.backfill:
            self.backfill_offer.setVisible(False)

    def _dock(self, name: str, title: str, widget: QtWidgets.QWidget, area: QtCore.Qt.DockWidgetArea) -> None:
        dock = QtWidgets.QDockWidget(title, self)
        dock.setObjectName(f"dock-{name}")
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        self.docks[name] = dock

    def _status_changed(self) -> None:
        c = self.state.connection
        text = f"{c.status} · {c.url}"
        if c.reason and c.status != "connected":
            text += f" · {c.reason}"
        if c.warnings:
            text += " · ⚠ " + "; ".join(c.warnings)
        self.connection_status.setText(text)

    def say(self, text: str) -> None:
        """Show what an action did (file written, new state) in the status bar for a while."""
        log.info("%s", text)
        self.status.showMessage(text, 15_000)

    def _connection_changed(self) -> None:
        c = self.state.connection
        if c.url and c.url != self._server_url:
            if self._server_url:
                self.forget_server()  # another server: nothing the old one showed still applies
            self._server_url = c.url
        connected = c.status == "connected"
        if connected and not self._was_connected:
            self._connections += 1
            self.reload_from_server(reconnect=self._connections > 1)
        self._was_connected = connected

    def forget_server(self) -> None:
        """Drop what the previous server showed: incidents, live windows, services, models, sketch sizes.

        Runs when the connection's URL changes, i.e. after the old session is closed and before the new
        one's readers start, so nothing of the old server arrives afterwards.
        """
        self.state.forget_server()
        self.live.forget()
        self.incidents.forget()
        self.banner.dismiss()  # its notifications were about the old server's incidents

    def add_notification_pause(self, action: QtGui.QAction) -> None:
        """Put the tray's "Pause notifications" item in the File menu too (the only place without a tray)."""
        self.file_menu.insertAction(self.quit_action, action)

    def reload_from_server(self, reconnect: bool = True) -> None:
        """On every (re)connect: re-read silences; after a reconnect (another server, or the same one
        restarted) also models and sketches, which start-up reads itself (it waits for the models)."""
        self.incidents.refresh_silences()
        if reconnect:
            self.training.refresh_models()
            self.sketches.reload()

    def set_start_at_login(self, enabled: bool) -> None:
        """Create or remove the login item (XDG autostart on Linux)."""
        path = autostart.set_enabled(enabled)
        self.settings.start_at_login = enabled
        self.status.showMessage(f"start at login {'on' if enabled else 'off'}: {path}", 10_000)

    # --- layout persistence -------------------------------------------------------------------
    def restore_layout(self) -> None:
        """Apply saved geometry and dock layout (ignored when unreadable)."""
        geometry = _unb64(self.settings.geometry) if self.settings.geometry else None
        if geometry is not None:
            self.restoreGeometry(geometry)
        layout = _unb64(self.settings.window_state) if self.settings.window_state else None
        if layout is not None:
            self.restoreState(layout)

    def save_layout(self) -> None:
        """Store geometry and dock layout into the settings object."""
        self.settings.geometry = _b64(self.saveGeometry())
        self.settings.window_state = _b64(self.saveState())

    # --- navigation ---------------------------------------------------------------------------
    def open_incident(self, incident_id: str) -> None:
        """Bring the window up with the incident selected and its service in the live plot."""
        self.bring_to_front()
        self.docks["incidents"].show()
        self.docks["incidents"].raise_()
        if incident_id and self.incidents.select_incident(incident_id):
            inc = self.state.incidents.incidents[incident_id]
            self.live.select_service(inc.service)

    def _show_service_of(self, row: IncidentRow) -> None:
        """The live plot shows the chosen incident's service: once per choice (`incident_chosen`), never on a
        refresh that keeps the selection, so a service the user then picks in the live panel stays picked."""
        self.live.select_service(row.service)

    def show_panel(self, name: str) -> None:
        """Bring up a dock ("incidents", "training", "connection", …), shown and in front of its tabs."""
        dock = self.docks[name]
        dock.show()
        dock.raise_()

    def bring_to_front(self) -> None:
        """Show, un-minimise and raise the window (a second launch lands here)."""
        log.info("main window brought to the front")
        self.show()
        self.setWindowState(self.windowState() & ~QtCore.Qt.WindowState.WindowMinimized)
        self.raise_()
        self.activateWindow()

    def toggle_visible(self) -> None:
        """Tray menu's show/hide."""
        if self.isVisible():
            self.hide()
        else:
            self.bring_to_front()

    def quit(self) -> None:
        """Really close (File → Quit, tray → Quit)."""
        self.quitting = True
        self.close()

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        self.save_layout()
        if self.settings.close_to_tray and self.tray_available and not self.quitting:
            event.ignore()
            self.hide()
            # never vanish without a word: a desktop can announce a tray (a StatusNotifier watcher)
            # that nobody sees; the tray's notification says the app runs on and how to get it back
            self.hidden_to_tray.emit()
            return
        self.closing.emit()
        event.accept()
