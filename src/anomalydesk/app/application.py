"""Wiring: state, session, actions, notifier, window and tray of one running app, on the qasync loop.

`DesktopApp` is what `anomalydesk app`, `--check`, the tests and the bench build; `main()` is the
command's entry: single instance, QApplication + qasync loop, run until quit, save settings.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

from PySide6 import QtWidgets

from anomalydesk import config
from anomalydesk.app.model import settings as settings_mod
from anomalydesk.app.model.notifier import Notifier
from anomalydesk.app.model.settings import AppSettings
from anomalydesk.app.model.state import AppState
from anomalydesk.app.services.actions import Actions
from anomalydesk.app.services.core_client import describe, redact
from anomalydesk.app.services.session import Session
from anomalydesk.app.widgets.gui_gc import GuiThreadCollector
from anomalydesk.store.keys import Keys

log = logging.getLogger(__name__)


def preload_core() -> None:
    """Import the training/scoring stack (scikit-learn, scipy) now, on the GUI thread before the loop runs.

    A first import inside a worker thread holds the GIL for whole C-extension initialisations and
    stalled the event loop by up to ~0.4 s when the Train button was first pressed.
    """
    import anomalydesk.detect.detector
    import anomalydesk.detect.service_state
    import anomalydesk.detect.train
    import anomalydesk.ingest.demo  # noqa: F401


class DesktopApp:
    """One app: build with `DesktopApp(...)`, then `await start()`, and `await shutdown()` at the end."""

    def __init__(self, settings: AppSettings, url: str | None = None, *, keys: Keys | None = None,
                 force_banner: bool = False, run_detector: bool | None = None) -> None:  # fmt: skip
        from anomalydesk.app.widgets.main_window import MainWindow
        from anomalydesk.app.widgets.tray import Tray

        preload_core()
        self.collector = GuiThreadCollector()  # before any worker thread starts

        self.settings = settings
        self.url = url or settings.redis_url or None
        self.state = AppState()
        self.notifier = Notifier(lambda note: None)
        self.notifier.paused_until = settings.notifications_paused_until
        self.session = Session(self.state, self.url, keys=keys, notifier=self.notifier)
        self.actions = Actions(self.session)
        self.run_detector = settings.run_detector if run_detector is None else run_detector
        self.window = MainWindow(self.state, self.actions, settings, reconnect=self.reconnect)
        self.tray = Tray(self.state.incidents, self.notifier, self.window.banner.show_notification,
                         force_banner=force_banner)  # fmt: skip
        self.window.tray_available = self.tray.available
        self.tray.open_incident.connect(self.window.open_incident)
        self.tray.toggle_window.connect(self.window.toggle_visible)
        self.tray.quit_requested.connect(self.window.quit)
        self.window.hidden_to_tray.connect(self.tray.tell_still_running)
        self.window.add_notification_pause(self.tray.pause_action)  # also where there is no tray
        self.state.connection.update(secret_store=settings_mod.secret_store_description())
        self._reconnecting: asyncio.Task[None] | None = None
        self._resuming: asyncio.Task[None] | None = None
        # what ran before a reconnect and comes back once the new connection is up, kept across
        # attempts that never connected (a wrong URL, then the right one)
        self._resume_detector = False
        self._resume_demo: tuple[int, int] | None = None
        self._summary_timer: Any = None
        self._after: asyncio.Future[None] | None = None

    async def start(self, demo: bool = False) -> None:
        """Connect (starting the embedded server when no URL is set), then the detector and demo."""
        from PySide6 import QtCore

        await self.session.start()
        self._summary_timer = QtCore.QTimer()
        self._summary_timer.setInterval(10_000)
        self._summary_timer.timeout.connect(self.notifier.flush_summary)
        self._summary_timer.start()
        self._after = asyncio.ensure_future(self._after_connect(demo))

    async def _after_connect(self, demo: bool) -> None:
        await self.session.connected.wait()
        if self.run_detector:
            self.actions.start_detector()
        for read in (self.actions.refresh_models, self.actions.sketch_settings):  # (a cancel leaves none unawaited)
            try:
                await read()
            except Exception as err:  # shown in the panels; start-up goes on
                log.warning("start-up read failed: %s", err)
        if demo:
            await self.actions.start_demo(self.settings.demo_rate, self.settings.demo_services)
            services = self.state.training.services.values()
            no_history = not services or any(v.get("needed") for v in services)
            if self.settings.offer_backfill and no_history and not any(v.get("versions") for v in services):
                self.window.backfill_offer.setVisible(True)  # gone once history is there (no restart offers it)
        await self.session.history_loaded.wait()
        self.collector.freeze_baseline()  # started: full collections skip what start-up built (gui_gc)

    def reconnect(self) -> None:
        """Apply a new URL from the connection panel: close the session and open a new one."""
        self._reconnecting = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        from anomalydesk.app.widgets.connection_panel import build_url

        password = settings_mod.get_password(self.window.connection.account()) or ""
        url = build_url(self.settings.redis_url, self.settings.tls, self.settings.username, password)
        if self._resuming is not None:
            self._resuming.cancel()  # an earlier attempt that never connected: its intent is kept below
        self._resume_detector = self._resume_detector or self.actions.detector_process is not None
        demo = self.actions.demo
        if demo is not None and demo.running:
            self._resume_demo = (int(demo.rate), len(demo.services))
        await self.actions.close()
        await self.session.close()
        self.url = url or None
        self.session = Session(self.state, self.url, keys=self.session.keys, notifier=self.notifier)
        self.actions.rebind(self.session)  # same object: the panels keep their reference
        try:
            await self.session.start()
        except Exception as err:  # e.g. the embedded server does not start: say so, stay usable
            log.warning("connecting to %s failed: %s", redact(url), describe(err))
            self.state.connection.update(status="failed", reason=describe(err))
            return
        if self._resume_detector or self._resume_demo:
            self._resuming = asyncio.ensure_future(self._resume(self.session))

    async def _resume(self, session: Session) -> None:
        """Once `session` is connected: the detector and demo traffic that ran before the reconnect."""
        await session.connected.wait()
        if session is not self.session:
            return
        resumed = []
        if self._resume_detector and self.actions.start_detector():
            resumed.append("detector")
        self._resume_detector = False
        if self._resume_demo is not None:
            rate, services = self._resume_demo
            self._resume_demo = None
            try:
                await self.actions.start_demo(rate, services)
                resumed.append(f"demo traffic at {rate} events/s")
            except Exception as err:  # say what stopped; the Demo panel's Start restarts it
                log.warning("demo traffic did not resume after the reconnect: %s", err)
                self.state.demo.update(error=f"demo traffic stopped at the reconnect and did not resume: {err}")
        if resumed:
            log.info("after the reconnect: resumed %s", " and ".join(resumed))

    async def shutdown(self) -> None:
        """Stop everything and save the settings."""
        if self._summary_timer is not None:
            self._summary_timer.stop()
        for task in (self._after, self._resuming):
            if task is not None and not task.done():
                task.cancel()
        self.settings.notifications_paused_until = self.notifier.paused_until
        self.window.save_layout()
        await self.actions.close()
        await self.session.close()
        self.tray.close()
        self.window.live.stop()
        self.window.incidents.stop()
        self.window.training.stop()

    def dispose(self) -> None:
        """Close and delete the window (tests and `--check`; `main` lets Qt do it at exit)."""
        self.window.quitting = True
        self.window.close()
        self.window.deleteLater()
        self.collector.stop()


def main(demo: bool = False, url: str | None = None) -> int:
    """Run the desktop app until the operator quits; a second launch focuses the first."""
    import qasync

    from anomalydesk.app.widgets.single_instance import InstanceServer, notify_running

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv)
    app.setApplicationName(config.APP_TITLE)
    from anomalydesk.app.widgets import theme

    theme.follow_system(app)  # the desktop's light or dark scheme, now and when it switches
    app.setQuitOnLastWindowClosed(False)
    if notify_running():
        print("AnomalyDesk is already running: brought its window to the front", file=sys.stderr)
        return 0
    settings = settings_mod.load()
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    desktop = DesktopApp(settings, url)
    instance = InstanceServer()
    instance.listen()
    instance.activate.connect(desktop.window.bring_to_front)
    done = asyncio.Event()
    desktop.window.closing.connect(done.set)
    # `kill` (SIGTERM) and Ctrl+C quit like the menu's Quit: settings saved, connections closed
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: loop.call_soon_threadsafe(done.set))

    async def run() -> None:
        desktop.window.show()
        await desktop.start(demo=demo)
        await done.wait()
        await desktop.shutdown()

    try:
        with loop:
            loop.run_until_complete(run())
    finally:
        instance.close()
        settings_mod.save(settings)
    return 0
