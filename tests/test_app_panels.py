"""Panels and window plumbing, offscreen: live plot export, layout persistence, tray fallback, single
instance, start at login, and the sketches panel's confirm-before-recreate against a real redis-server."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from app_support import close_app, qloop, run  # noqa: F401  (fixture)

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_level_fail("WARNING"),
              pytest.mark.qt_log_ignore("This plugin does not support")]  # the offscreen platform says so


class NoActions:
    """Panels that are only shown, never clicked, need no actions."""

    def cancel_training(self) -> None:
        pass


def test_live_panel_plots_the_buffer_with_bands_and_exports(qtbot, tmp_path):
    from anomalydesk.app.model.settings import AppSettings
    from anomalydesk.app.model.state import AppState
    from anomalydesk.app.widgets.live_panel import LivePanel
    from anomalydesk.detect.incident_model import Incident, Severity
    from anomalydesk.fingerprint import N_FEATURES

    state = AppState(live_capacity=100)
    panel = LivePanel(state, AppSettings(live_features=["requests", "rate_5xx"]))
    qtbot.addWidget(panel)
    t0 = 1_790_000_000.0
    for i in range(150):
        state.live.append("payments", t0 + 5 * i, np.full(N_FEATURES, float(i)), 10.0 + i % 7)
    state.live.thresholds["payments"] = 70.0
    state.set_services(["payments"])
    incident = replace(Incident.open("payments", "anomaly", int((t0 + 600) // 5), t0 + 600), windows=1,
                       score=90.0, severity=Severity.CRITICAL)  # fmt: skip
    state.incidents.apply(incident)
    panel.reset_zoom()  # all the data (these windows are months old: following live shows the last hour)
    assert panel.redraw(force=True)
    x, y = panel._curves["requests"].getData()
    assert len(x) == 100 and y[-1] == 149.0  # bounded: the oldest 50 windows are gone
    assert panel.threshold_line.isVisible() and panel.threshold_line.value() == 70.0
    assert panel.band_count == 1
    panel.set_paused(True)
    state.live.append("payments", t0 + 5 * 150, np.full(N_FEATURES, 999.0), 50.0)
    assert not panel.redraw()  # paused: the buffer fills, the plot waits
    panel.set_paused(False)
    assert panel._curves["requests"].getData()[1][-1] == 999.0
    png = panel.export_png(tmp_path / "live.png")
    assert png.stat().st_size > 1000
    csv = panel.export_csv(tmp_path / "live.csv")
    rows = np.loadtxt(csv, delimiter=",", skiprows=1, usecols=[0, 2, *range(3, 3 + N_FEATURES)])
    assert rows.shape == (100, 2 + N_FEATURES) and rows[-1, 2] == 999.0
    panel.set_features(["latency_p95_ms"])
    assert list(panel._curves) == ["latency_p95_ms"]


def test_live_plots_draw_gaps_as_gaps_with_plain_units_and_no_y_wheel(qtbot):
    from anomalydesk.app.model.settings import AppSettings
    from anomalydesk.app.model.state import AppState
    from anomalydesk.app.widgets.live_panel import LivePanel
    from anomalydesk.fingerprint import FEATURE_INDEX, N_FEATURES

    state = AppState(live_capacity=1000)
    panel = LivePanel(state, AppSettings(live_features=["requests", "rate_5xx", "latency_p95_ms", "kpi_level"]))
    qtbot.addWidget(panel)
    low, high = panel.score_plot.getViewBox().viewRange()[0]
    assert abs(high - time.time()) < 60 and high - low >= 600  # no data yet: today's clock, not 1970
    t0 = 1_790_000_000.0
    vector = np.full(N_FEATURES, 0.56)
    vector[FEATURE_INDEX["requests"]] = 350.0
    for i in range(40):
        state.live.append("orders", t0 + 5 * i, vector, None)
    for i in range(40):  # 20 hours later
        state.live.append("orders", t0 + 72_000 + 5 * i, vector * 0 + 1.0, None)
    state.set_services(["orders"])
    panel.reset_zoom()  # all the data, not the last hour of the clock
    assert panel.redraw(force=True)
    x, y = panel._curves["requests"].getData()
    assert np.all(np.diff(x) > 0) and np.isnan(y).sum() == 1  # one break, not a ramp from 350 to 1
    gap = int(np.flatnonzero(np.isnan(y))[0])
    assert x[gap - 1] == t0 + 5 * 39 and x[gap + 1] == t0 + 72_000
    titles = {name: plot.titleLabel.text for name, plot in zip(panel._curves, panel._feature_plots, strict=True)}
    assert titles["requests"] == "requests per window" and titles["latency_p95_ms"] == "p95 latency (ms)"
    assert titles["rate_5xx"] == "5xx ratio (%)" and titles["kpi_level"] == "business KPI level (× expected)"
    for plot in [*panel._feature_plots, panel.score_plot]:
        assert plot.getAxis("left").autoSIPrefix is False  # 0.56 reads 0.56, not 560 (x0.001)
        assert plot.getViewBox().state["mouseEnabled"] == [True, False]  # the wheel zooms time only


def test_window_layout_persists_and_no_tray_means_banner(qtbot):
    from anomalydesk.app.model.notifier import Notification, Notifier
    from anomalydesk.app.model.settings import AppSettings
    from anomalydesk.app.model.state import AppState
    from anomalydesk.app.widgets.main_window import MainWindow
    from anomalydesk.app.widgets.tray import Tray

    settings = AppSettings()
    state = AppState()
    window = MainWindow(state, NoActions(), settings)
    qtbot.addWidget(window)
    window.show()
    window.docks["sketches"].hide()
    window.resize(900, 600)
    window.save_layout()
    assert settings.geometry and settings.window_state
    again = MainWindow(state, NoActions(), settings)
    qtbot.addWidget(again)
    again.show()
    assert again.docks["sketches"].isHidden() and not again.docks["incidents"].isHidden()

    tray = Tray(state.incidents, Notifier(lambda n: None), window.banner.show_notification)
    assert not tray.available  # offscreen: QSystemTrayIcon.isSystemTrayAvailable() is False
    tray.deliver(Notification("CRITICAL payments", "5xx ratio 20%", "critical", "payments:a1"))
    tray.deliver(Notification("WARNING users", "p95 latency", "warning", "users:a1"))
    assert window.banner.isVisible() and "(+1 more)" in window.banner.text
    with qtbot.waitSignal(window.banner.open_incident) as opened:
        window.banner.open_button.click()
    assert opened.args == ["users:a1"] and not window.banner.isVisible()
    window.settings.close_to_tray = True
    window.close()  # no tray: closing really closes, it does not hide into nothing
    assert not window.isVisible()


def test_demo_fault_buttons_and_the_active_faults_line_do_not_overlap(qtbot):
    from anomalydesk.app.model.settings import FAULT_KINDS, AppSettings
    from anomalydesk.app.model.state import AppState
    from anomalydesk.app.widgets.main_window import MainWindow

    window = MainWindow(AppState(), NoActions(), AppSettings())
    qtbot.addWidget(window)
    window.show()
    demo = window.demo
    assert set(demo.fault_buttons) == set(FAULT_KINDS) and "shift" in FAULT_KINDS
    grid = demo.faults_label.parentWidget().layout()
    label_row = grid.getItemPosition(grid.indexOf(demo.faults_label))[0]
    rows = {grid.getItemPosition(grid.indexOf(button))[0] for button in demo.fault_buttons.values()}
    assert label_row > max(rows)  # the "active: …" line sits below every button (it hid "shift")
    labels = {button.geometry().topLeft().toTuple() for button in demo.fault_buttons.values()}
    assert len(labels) == len(FAULT_KINDS)  # one place each


def test_second_launch_focuses_the_first(qtbot):
    from anomalydesk.app.widgets.single_instance import InstanceServer, notify_running

    assert not notify_running(timeout_ms=200)
    server = InstanceServer()
    assert server.listen()
    try:
        with qtbot.waitSignal(server.activate, timeout=5000):
            assert notify_running()
    finally:
        server.close()


def test_start_at_login_writes_an_xdg_autostart_entry(monkeypatch, tmp_path):
    from anomalydesk.app.services import autostart

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setattr(autostart.sys, "platform", "linux")
    path = autostart.set_enabled(True)
    assert path == tmp_path / "autostart" / "anomalydesk.desktop"
    text = path.read_text()
    assert "[Desktop Entry]" in text and "anomalydesk.cli app" in text
    assert autostart.is_enabled()
    autostart.set_enabled(False)
    assert not autostart.is_enabled()


def test_sketches_panel_asks_before_recreating(qtbot, qloop, redis_url, r):  # noqa: F811
    from anomalydesk.app.application import DesktopApp
    from anomalydesk.app.model.settings import AppSettings
    from anomalydesk.store import admin

    app = DesktopApp(AppSettings(), redis_url, run_detector=False)
    app.window.show()
    run(qtbot, app.start())
    try:
        panel = app.window.sketches
        qtbot.waitUntil(lambda: app.state.sketches.get("configured") is True, timeout=20_000)
        assert panel.topk.value() == 10
        panel.topk.setValue(20)
        panel.apply_button.click()
        qtbot.waitUntil(panel.confirm.isVisible, timeout=10_000)
        assert "Changing Top-K k 10 → 20 recreates" in panel.confirm_text.text()  # the form's words, not "topk"
        assert "--force" not in panel.confirm_text.text() and "rerun" not in panel.confirm_text.text()  # GUI words
        assert admin.read_settings(r).settings.topk == 10  # nothing changed yet
        panel.recreate_button.click()
        qtbot.waitUntil(lambda: admin.read_settings(r).settings.topk == 20, timeout=10_000)
        qtbot.waitUntil(lambda: not panel.confirm.isVisible(), timeout=5_000)
        assert panel.message.text().startswith("sketch settings applied: reset Top-K lists")
        assert app.window.status.currentMessage() == panel.message.text()
        panel.retention.setValue(1000)  # changes no sketch: applied at once
        panel.apply_button.click()
        qtbot.waitUntil(lambda: admin.read_settings(r).settings.retention == 1000, timeout=10_000)
        assert not panel.confirm.isVisible()
    finally:
        close_app(qtbot, app)
        time.sleep(0)


def test_the_installed_pyside_keeps_slot_return_values_alive():
    """PySide6 6.12.0 drops a reference to a slot's return value on every call (the app then aborts)."""
    import sys

    from PySide6 import QtCore

    class Emitter(QtCore.QObject):
        fired = QtCore.Signal()

    emitter = Emitter()
    emitter.fired.connect(lambda: True)
    before = sys.getrefcount(True)
    for _ in range(2000):
        emitter.fired.emit()
    assert sys.getrefcount(True) - before > -10, "this PySide6 leaks slot return values: use another version"


def test_the_newest_score_shown_stands_while_the_newest_window_waits_for_its_own_and_pause_stops_following(qtbot):
    """A new window arrives before the detector stored its score: the info line said "no score" until it
    came, and for as long as the plot was paused there; Follow live stayed checked while paused."""
    from anomalydesk.app.model.settings import AppSettings
    from anomalydesk.app.model.state import AppState
    from anomalydesk.app.widgets.live_panel import LivePanel
    from anomalydesk.fingerprint import N_FEATURES

    state = AppState(live_capacity=200)
    panel = LivePanel(state, AppSettings(live_features=["requests"], live_service="payments"))
    qtbot.addWidget(panel)
    first = int(time.time() // 5) - 100
    for w in range(first, first + 99):
        state.live.append("payments", w * 5.0, np.ones(N_FEATURES), 39.0)
    state.live.append("payments", (first + 99) * 5.0, np.ones(N_FEATURES), None)  # its score not stored yet
    state.live.thresholds["payments"] = 70.0
    state.set_services(["payments"])
    panel.select_service("payments")
    assert panel.redraw(force=True)
    assert panel.info_label.text().endswith("· score 39 / threshold 70")
    assert "now 39, threshold 70" in panel.score_plot.titleLabel.text

    assert panel.range.follow and panel.range.follow_button.isChecked()
    panel.pause_button.click()
    assert panel.paused and not panel.range.follow and not panel.range.follow_button.isChecked()
    assert not any(b.isChecked() for b in panel.range.preset_buttons.values())
    state.live.append("payments", (first + 100) * 5.0, np.ones(N_FEATURES), None)
    assert not panel.redraw() and panel.info_label.text().endswith("· score 39 / threshold 70")
    panel.pause_button.click()  # Resume: following again, as before the pause
    assert not panel.paused and panel.range.follow and panel.range.follow_button.isChecked()

    panel.pause_button.click()
    panel.range.follow_button.click()  # Follow live while paused: live again
    assert not panel.paused and panel.range.follow and panel.pause_button.text() == "Pause"


def _payments_at_39(qtbot):
    """A main window showing 50 windows of payments scored 39 under a threshold of 70 (no server behind)."""
    from anomalydesk.app.model.settings import AppSettings
    from anomalydesk.app.model.state import AppState
    from anomalydesk.app.widgets.main_window import MainWindow
    from anomalydesk.fingerprint import N_FEATURES

    state = AppState(live_capacity=200)
    first = int(time.time() // 5) - 50
    for w in range(first, first + 50):
        state.live.append("payments", w * 5.0, np.ones(N_FEATURES), 39.0)
    state.live.thresholds["payments"] = 70.0
    state.set_services(["payments"])
    win = MainWindow(state, NoActions(), AppSettings(live_service="payments"))
    qtbot.addWidget(win)
    assert win.live.redraw(force=True)
    return win


def test_a_connection_change_clears_every_fact_of_the_old_server_from_the_live_plots(qtbot, qloop):  # noqa: F811
    """After Apply with another URL the plots said "no data yet" but the score title still read "now 39,
    threshold 70" (and the threshold line stayed): `forget_server` is what a URL change runs."""
    win = _payments_at_39(qtbot)
    live = win.live
    assert "now 39, threshold 70" in live.score_plot.titleLabel.text and live.threshold_line.isVisible()

    win.forget_server()
    live.redraw()
    assert live.info_label.text() == "no data yet"
    assert live.score_plot.titleLabel.text == "score (0–100)" and not live.threshold_line.isVisible()
    assert live.score_curve.xData is None or len(live.score_curve.xData) == 0
    assert live.activation_marks == [] and live.band_count == 0


def test_a_connection_change_clears_a_paused_panel_and_drops_a_read_in_flight(qtbot, qloop):  # noqa: F811
    """Two more ways the old server stayed: a paused panel redraws nothing, so its curves and "now 39,
    threshold 70" stayed until Resume; and a range read still in flight stored the old server's windows
    (same service name) and drew them before the new server's buffer."""
    win = _payments_at_39(qtbot)
    live = win.live
    live.pause_button.click()
    generation = live.range._generation
    live.range.loading = ("payments", 0.0, 1.0)  # a read in flight
    win.forget_server()
    assert live.paused and live.score_plot.titleLabel.text == "score (0–100)" and not live.threshold_line.isVisible()
    assert live.score_curve.xData is None or len(live.score_curve.xData) == 0
    assert live.range.loading is None and live.range.rows is None and live.range._generation == generation + 1


def test_gaps_are_breaks_and_a_window_length_change_is_not():
    """A tester changed the window length from 5 s to 10 s: every live plot stopped. Against the median
    step (5 s, the buffer being mostly 5-s windows), every 10-s step was taken for a gap, a NaN went
    between each pair of new windows, and no line was drawn. A gap is a step much longer than the
    steps beside it."""
    from anomalydesk.app.widgets.live_panel import with_gaps

    starts = np.concatenate([np.arange(0.0, 500.0, 5.0), np.arange(500.0, 700.0, 10.0),  # 5 s, then 10 s
                             np.arange(1_300.0, 1_400.0, 10.0)])  # 10 min without a window, then 10 s again
    rows = np.column_stack([starts, np.ones_like(starts)])
    drawn = with_gaps(rows)
    broken = drawn[np.isnan(drawn[:, 1]), 0]
    # a break at the change (the first 10-s step is twice the 5-s one before it) and one just after the
    # last window before the 10-min gap; none between the 10-s windows
    assert broken.tolist() == [505.0, 700.0]
    assert np.isfinite(drawn[:, 1]).sum() == len(starts)  # every window still drawn


def test_the_wheel_changes_a_spin_box_only_when_it_has_focus(qtbot):
    """A tester scrolled the Demo panel and changed its Services from 5 to 9 on the way: the wheel over an
    unfocused spin box scrolls the panel and leaves the value; focused (a click, Tab), it changes it."""
    from PySide6 import QtCore, QtGui, QtWidgets

    from anomalydesk.app.model.settings import AppSettings
    from anomalydesk.app.model.state import AppState
    from anomalydesk.app.widgets.main_window import MainWindow

    window = MainWindow(AppState(), NoActions(), AppSettings(demo_services=5))
    qtbot.addWidget(window)
    window.resize(1280, 400)  # short: the Demo panel scrolls
    window.show()
    window.docks["demo"].raise_()
    box = window.demo.services

    def wheel() -> None:
        centre = QtCore.QPointF(box.rect().center())
        QtWidgets.QApplication.sendEvent(box, QtGui.QWheelEvent(
            centre, QtCore.QPointF(box.mapToGlobal(centre.toPoint())), QtCore.QPoint(0, 0), QtCore.QPoint(0, 120),
            QtCore.Qt.MouseButton.NoButton, QtCore.Qt.KeyboardModifier.NoModifier, QtCore.Qt.ScrollPhase.NoScrollPhase,
            False))  # fmt: skip

    window.activateWindow()
    window.demo.start_button.setFocus()
    wheel()
    assert box.value() == 5
    box.setFocus()
    qtbot.waitUntil(box.hasFocus, timeout=2_000)
    wheel()
    assert box.value() == 6
