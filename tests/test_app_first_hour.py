"""The first hour in the app, as a new user has it: the real window (offscreen) on a real redis-server,
started with demo traffic and the in-process detector; Backfill (banner or Demo panel), Train, a fault,
its incident row following the incident, a notification; a reconnect that resumes everything.

Slow: a day of history in simulated time, training five services and a live fault take minutes.
"""

from __future__ import annotations

import time

import pytest
from PySide6 import QtCore

from anomalydesk.app.model.settings import AppSettings
from anomalydesk.config import SketchSettings
from anomalydesk.detect.system_gap import SYSTEM
from anomalydesk.detect.training_run import train_service
from anomalydesk.ingest.demo import run_fast
from anomalydesk.store import admin
from app_support import qloop, run  # noqa: F401  (fixture)
from conftest import free_port
from test_app_operator import close_app, own_config_dir  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.gui, pytest.mark.timeout(900),
              pytest.mark.qt_log_level_fail("WARNING"), pytest.mark.qt_log_ignore("This plugin does not support")]
SERVICES = ["gateway", "users", "orders", "payments", "inventory"]
W = 5


def start_app(qtbot, url: str):
    from anomalydesk.app.application import DesktopApp

    settings = AppSettings(redis_url=url, offer_backfill=True, demo_rate=200, demo_services=5, run_detector=True)
    app = DesktopApp(settings, run_detector=True)
    app.window.show()
    run(qtbot, app.start(demo=True))
    return app


def click(qtbot, button) -> None:
    assert button.isEnabled() and button.isVisible(), button.text()
    qtbot.mouseClick(button, QtCore.Qt.MouseButton.LeftButton)


def sealed_live_windows(app, service: str = "gateway") -> int:
    buffer = app.state.live.buffers.get(service)
    return len(buffer) if buffer is not None else 0


def train_and_check_ready(qtbot, app) -> None:
    click(qtbot, app.window.training.train_button)
    qtbot.waitUntil(lambda: not app.state.training.running and bool(app.state.training.result), timeout=300_000)
    assert app.state.training.result.startswith("trained 5 of 5"), app.state.training.result
    training = app.state.training  # its services are read again after the run
    qtbot.waitUntil(lambda: all(v["state"] == "ready" for v in training.services.values()), timeout=30_000)
    services = training.services
    assert sorted(services) == sorted(SERVICES), services
    assert all(v["state"] == "ready" for v in services.values()), services
    assert all(v["windows"] >= 17_000 for v in services.values()), {s: v["windows"] for s, v in services.items()}
    assert app.window.training.progress.value() == 100


def backfill_done(qtbot, app) -> str:
    qtbot.waitUntil(lambda: app.state.demo.backfill.startswith(("done", "failed")), timeout=300_000)
    text = app.state.demo.backfill
    assert "you can train now" in text and "refused" not in text, text
    return text


def inject_errors_and_follow_the_incident(qtbot, app) -> None:
    window = app.window
    assert window.demo.fault_service.currentText() == "payments"
    injected = time.time()
    click(qtbot, window.demo.fault_buttons["errors"])
    incidents = app.state.incidents.incidents
    qtbot.waitUntil(lambda: any(i.service == "payments" for i in incidents.values()), timeout=60_000)
    incident = next(i for i in incidents.values() if i.service == "payments")
    assert "5xx" in incident.reason, incident.reason
    assert incident.window_first - int(injected // W) <= 2, (incident.window_first, injected)
    qtbot.waitUntil(lambda: any(n.incident_id == incident.incident_id for n in app.tray.delivered), timeout=10_000)
    table = window.incidents.model
    row = next(r for r in range(table.rowCount()) if table.index(r, 1).data() == "payments")
    first_duration, first_windows = table.index(row, 5).data(), incident.windows
    qtbot.waitUntil(lambda: incident.windows > first_windows + 1, timeout=40_000)  # the record grew
    assert table.index(row, 5).data() != first_duration  # the row follows it
    others = sorted({i.service for i in incidents.values()} - {"payments", SYSTEM})  # a gap is its own thing
    assert others == [], others


def test_banner_backfill_then_train_then_a_fault_becomes_a_live_incident(qtbot, qloop, redis_url):  # noqa: F811
    app = start_app(qtbot, redis_url)
    try:
        qtbot.waitUntil(lambda: sealed_live_windows(app) >= 3, timeout=60_000)
        qtbot.waitUntil(app.window.backfill_offer.isVisible, timeout=10_000)
        click(qtbot, app.window.backfill_offer.action_button)
        backfill_done(qtbot, app)
        assert not app.window.backfill_offer.isVisible()
        assert sealed_live_windows(app) >= 1000  # the plot shows the history now
        train_and_check_ready(qtbot, app)
        inject_errors_and_follow_the_incident(qtbot, app)
    finally:
        close_app(qtbot, app)


def test_demo_panel_backfill_then_train(qtbot, qloop, redis_url):  # noqa: F811
    app = start_app(qtbot, redis_url)
    try:
        qtbot.waitUntil(lambda: sealed_live_windows(app) >= 3, timeout=60_000)
        click(qtbot, app.window.demo.backfill_button)
        backfill_done(qtbot, app)
        assert not app.window.backfill_offer.isVisible()
        train_and_check_ready(qtbot, app)
    finally:
        close_app(qtbot, app)


def test_a_wrong_url_then_the_right_one_resumes_detector_and_demo(qtbot, qloop, redis_url, r):  # noqa: F811
    admin.setup(r, SketchSettings(window_seconds=W))
    run_fast(r, duration=86400, seed=31)
    for service in SERVICES:
        assert train_service(r, service).version is not None
    app = start_app(qtbot, redis_url)
    try:
        conn = app.state.connection
        qtbot.waitUntil(lambda: conn.status == "connected" and bool(conn.detector), timeout=60_000)
        qtbot.waitUntil(lambda: app.state.demo.running, timeout=30_000)
        panel = app.window.connection
        panel.url.setText(f"redis://127.0.0.1:{free_port()}/0")  # nobody there
        click(qtbot, panel.apply_button)
        qtbot.waitUntil(lambda: conn.status != "connected", timeout=30_000)
        time.sleep(3)  # a few failed attempts
        assert not app.state.demo.running
        panel.url.setText(redis_url)
        click(qtbot, panel.apply_button)
        qtbot.waitUntil(lambda: conn.status == "connected", timeout=60_000)
        qtbot.waitUntil(lambda: app.state.demo.running and app.actions.detector_process is not None, timeout=30_000)
        qtbot.waitUntil(lambda: bool(conn.detector) and not any("no detector" in w for w in conn.warnings),
                        timeout=60_000)  # fmt: skip
        inject_errors_and_follow_the_incident(qtbot, app)
    finally:
        close_app(qtbot, app)
