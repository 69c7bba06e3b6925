"""The overview strip (offscreen): events/s from the status poll, services by state, open incidents by
severity, detector and connection health, each tile bringing up its panel in the real main window."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from PySide6 import QtCore

from app_support import qloop  # noqa: F401  (fixture: the Training panel re-reads models when services change)

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_level_fail("WARNING"),
              pytest.mark.qt_log_ignore("This plugin does not support")]  # fmt: skip


def incident(service: str, severity, window: int):
    from anomalydesk.detect.incident_model import Incident

    return replace(Incident.open(service, "anomaly", window, window * 5.0), windows=1, score=80.0, severity=severity)


def test_the_strip_counts_what_the_state_says_and_each_tile_opens_its_panel(qtbot, qloop):  # noqa: F811
    from anomalydesk.app.model.settings import AppSettings
    from anomalydesk.app.model.state import AppState
    from anomalydesk.app.widgets.main_window import MainWindow
    from anomalydesk.detect.incident_model import Severity
    from test_app_panels import NoActions

    state = AppState()
    window = MainWindow(state, NoActions(), AppSettings())
    qtbot.addWidget(window)
    # a service learns below: the Training panel's 15-s re-read would fire into a later test, after this
    # test's event loop is gone (the app stops it at shutdown)
    qtbot.addWidget(window.training, before_close_func=lambda panel: panel.stop())
    window.show()
    qtbot.waitExposed(window)
    strip = window.overview
    assert strip.isVisible() and window.overview_bar.isVisible()
    assert strip.geometry().top() < window.centralWidget().geometry().top()  # above the plots
    assert window.overview_bar.width() == window.width()  # across the whole window, over the docks too
    assert "—" in strip.events.value.text() and "disconnected" in strip.connection.value.text()

    # two status polls two seconds apart: 1,000 events in between
    state.connection.update(status="connected", detector="app-123", status_json={"events_total": 5_000})
    strip.take_status({"events_total": 6_000}, now=strip._samples[-1][0] + 2.0)
    strip.refresh_connection()
    assert strip.events_per_second == pytest.approx(500.0)
    assert "<b>500</b>" in strip.events.value.text()
    assert "connected" in strip.connection.value.text() and "app-123" in strip.detector.value.text()
    state.connection.update(detector="")
    assert "none alive" in strip.detector.value.text()

    state.set_services(["gateway", "orders", "payments", "users"])
    state.training.update(services={"gateway": {"state": "ready"}, "orders": {"state": "ready"},
                                    "payments": {"state": "ready"},
                                    "users": {"state": "learning (120 more windows)"}})  # fmt: skip
    assert strip.service_counts() == {"anomalous": 0, "normal": 3, "learning": 1, "stale": 0, "retired": 0}
    state.training.services["users"] = {"state": "ready to train"}  # enough windows, no model: not "normal"
    assert strip.service_counts() == {"anomalous": 0, "normal": 3, "learning": 1, "stale": 0, "retired": 0}
    state.training.services["users"] = {"state": "learning (120 more windows)"}
    state.incidents.apply(incident("payments", Severity.CRITICAL, 1_000))
    state.incidents.apply(incident("orders", Severity.WARNING, 1_001))
    state.incidents.apply(incident("orders", Severity.WARNING, 1_002))
    assert strip.service_counts()["anomalous"] == 2 and strip.service_counts()["normal"] == 1
    assert strip.incident_counts() == {Severity.CRITICAL: 1, Severity.WARNING: 2, Severity.INFO: 0}
    assert "<b>1</b> critical" in strip.incidents.value.text() and "<b>2</b> warning" in strip.incidents.value.text()
    assert strip.services.accessibleDescription() == "2 anomalous, 1 normal, 1 learning"

    for tile, dock in ((strip.incidents, "incidents"), (strip.services, "training"), (strip.detector, "connection"),
                       (strip.events, "connection"), (strip.connection, "connection")):  # fmt: skip
        window.docks["demo"].raise_()
        with qtbot.waitSignal(strip.open_panel) as asked:
            qtbot.mouseClick(tile, QtCore.Qt.MouseButton.LeftButton)
        assert asked.args == [dock]
        qtbot.waitUntil(lambda d=dock: not window.docks[d].visibleRegion().isEmpty(), timeout=2_000)
    window.docks["demo"].raise_()
    strip.services.setFocus()
    with qtbot.waitSignal(strip.open_panel):  # the keyboard too
        qtbot.keyClick(strip.services, QtCore.Qt.Key.Key_Return)

    state.connection.update(status="reconnecting", reason="connection refused")
    assert "reconnecting" in strip.connection.value.text() and strip.events_per_second is None
    assert strip.detector.value.text() == "—"  # not the old server's detector while reconnecting


def test_a_counter_that_goes_back_gives_no_negative_rate(qtbot):
    from anomalydesk.app.model.state import AppState
    from anomalydesk.app.widgets.overview_strip import OverviewStrip

    strip = OverviewStrip(AppState())
    qtbot.addWidget(strip)
    strip.take_status({"events_total": 10_000}, now=100.0)
    strip.take_status({"events_total": 10_300}, now=102.0)
    assert strip.events_per_second == 150.0
    strip.take_status({"events_total": 50}, now=104.0)  # another server, or counters reset
    strip.take_status({"events_total": 250}, now=106.0)
    assert strip.events_per_second == 100.0 and min(strip.rates) >= 0


def test_a_backfill_is_not_counted_as_live_events_per_second(qtbot, r):
    """During a backfill the strip showed 857,006 events/s: a simulated day counted as live traffic.
    The status poll's `history_events_total` (real redis-server, a real backfill) is left out of the
    rate and shown beside it; live events still count."""
    from anomalydesk.app.model.state import AppState
    from anomalydesk.app.widgets.overview_strip import OverviewStrip
    from anomalydesk.config import SketchSettings
    from anomalydesk.events import parse_metric
    from anomalydesk.ingest.demo import run_fast
    from anomalydesk.ingest.demo_services import service_names
    from anomalydesk.store import admin
    from anomalydesk.store.sink import ingest, seal_all

    def live(n: int) -> None:  # on every service the backfill feeds
        ingest(r, [parse_metric({"service": service, "endpoint": "GET:/a", "status_code": 200,
                                 "response_time": 3}) for _ in range(n) for service in service_names(5)])  # fmt: skip

    admin.setup(r, SketchSettings(window_seconds=1))
    live(100)  # live traffic first: a backfill after it lands as history (the app's first-run journey)
    time.sleep(1.1)
    seal_all(r)
    strip = OverviewStrip(AppState())
    qtbot.addWidget(strip)
    before = admin.status(r)
    strip.take_status(before, now=100.0)
    run_fast(r, duration=600, rate=200, seed=5, services=5)  # ten simulated minutes of history, KPIs among them
    # (the KPIs of a backfill were counted as live events: the strip showed 19,983 live events/s in one)
    backfilled = admin.status(r)
    added = backfilled["events_total"] - before["events_total"]
    assert added > 10_000 and backfilled["history_events_total"] - before["history_events_total"] == added
    strip.take_status(backfilled, now=102.0)
    assert strip.events_per_second == 0.0 and strip.history_rate == added / 2
    live(300)
    strip.take_status(admin.status(r), now=104.0)
    assert strip.events_per_second == 750.0 and strip.history_rate == 0.0  # 300 on each of 5 services in 2 s
