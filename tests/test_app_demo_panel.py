"""The Demo panel against a real redis-server and the app's own detector (offscreen).

A tester stopped the demo traffic with the panel's button and, a few windows later, was notified
"(system) no service sent anything (3 services silent)". Stopping the demo on purpose now records
the stop (`store.traffic_stops`), and the detector handles the silent windows after it without a word.
"""

from __future__ import annotations

import json

import pytest

from anomalydesk.config import SketchSettings
from anomalydesk.detect.system_gap import SYSTEM
from anomalydesk.store import admin
from anomalydesk.store.keys import Keys
from app_support import close_app, qloop, run  # noqa: F401  (fixture)

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_level_fail("WARNING"),
              pytest.mark.qt_log_ignore("This plugin does not support")]  # the offscreen platform says so

K = Keys()
SERVICES = ("gateway", "users", "orders")
QUIET_WINDOWS = 4  # the alarm came "a few windows later": the detector handles this many after the stop


def handled_gaps(r, service: str) -> int:
    """How many windows the detector left unscored for `service` as gap or stop (its state's list)."""
    raw = r.hget(K.detector_states, service)
    return len(json.loads(raw).get("gap_windows", [])) if raw else 0


def test_stopping_demo_traffic_from_the_panel_notifies_nothing(qtbot, qloop, redis_url, r):  # noqa: F811
    from anomalydesk.app.application import DesktopApp
    from anomalydesk.app.model.settings import AppSettings

    admin.setup(r, SketchSettings(window_seconds=1))  # short windows: "a few windows later" is seconds
    app = DesktopApp(AppSettings(demo_rate=300, demo_services=3), redis_url, run_detector=True)
    app.window.show()
    run(qtbot, app.start())
    try:
        qtbot.waitUntil(lambda: app.state.connection.status == "connected", timeout=20_000)
        panel = app.window.demo
        panel.start_button.click()
        qtbot.waitUntil(lambda: app.state.demo.running, timeout=20_000)
        # the app's detector handles the demo's windows (it has joined every stream)
        qtbot.waitUntil(lambda: all(r.hget(K.detector_states, s) for s in SERVICES), timeout=60_000)
        panel.start_button.click()  # Stop demo traffic
        qtbot.waitUntil(lambda: not app.state.demo.running, timeout=20_000)
        assert panel.start_button.text() == "Start demo traffic"
        try:
            qtbot.waitUntil(lambda: all(handled_gaps(r, s) >= QUIET_WINDOWS for s in SERVICES), timeout=60_000)
        except Exception:
            pytest.fail(f"the detector left {[handled_gaps(r, s) for s in SERVICES]} windows unscored")
        alerts = [json.loads(f[b"alert"]) for _, f in r.xrange(K.alerts_log)]
        stops = {s.decode(): json.loads(v) for s, v in r.hgetall(K.traffic_stops).items()}
        assert [a["message"] for a in alerts if a["service"] == SYSTEM] == [], f"stops recorded: {stops}"
        assert [n.title for n in app.tray.delivered if n.incident_id.startswith(SYSTEM)] == []
        assert not app.window.banner.isVisible()
    finally:
        close_app(qtbot, app)
