"""Incidents panel and the alert subscription against real redis-servers (offscreen window).

Alerts are written the way the detector writes them (incident record, alerts-log entry, PUBLISH),
so these tests do not depend on detection quality; the workflow test covers the detector path.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import redis

from anomalydesk import config
from anomalydesk.detect import incidents
from anomalydesk.detect.incident_model import Alert, Incident
from anomalydesk.store.keys import Keys
from app_support import close_app, qloop, run  # noqa: F401  (fixture)

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_level_fail("WARNING"),
              pytest.mark.qt_log_ignore("This plugin does not support")]  # the offscreen platform says so


def raise_alert(r: redis.Redis, service: str, window: int, *, kind: str = "new", severity: str = "critical",
                score: float = 95.0, publish: bool = True, keys: Keys | None = None) -> dict:  # fmt: skip
    """Store an incident and log (and publish) its alert, as the detector does."""
    keys = keys or Keys()
    reasons = [{"feature": "rate_5xx", "actual": 0.2, "expected": 0.004, "text": "5xx ratio 20% vs 0.4% normal"}]
    incident = replace(Incident.open(service, "anomaly", window, window * 5.0), score=score, severity=severity,
                       windows=1, reasons=reasons)  # fmt: skip
    alert = Alert.about(incident, kind=kind, window=window, window_start=time.time(), score=score,
                        severity=severity, reasons=reasons, model_version=1,
                        message=f"{service}: 5xx ratio 20% vs 0.4% normal").to_json()  # fmt: skip
    store_incident(r, incident, alert, keys)
    if publish:
        r.publish(keys.alerts_channel, json.dumps(alert))
    return alert


def store_incident(r: redis.Redis, incident: Incident, alert: dict, keys: Keys | None = None) -> None:
    """The incident stored as open and its alert logged, as the detector commits them."""
    keys = keys or Keys()
    r.hset(keys.incidents, incident.id, json.dumps(incident.to_json()))
    r.sadd(keys.incidents_open, incident.id)
    r.xadd(keys.alerts_log, {"alert": json.dumps(alert)}, maxlen=config.ALERT_LOG_MAXLEN, approximate=True)


def open_app(qtbot, url):
    from anomalydesk.app.application import DesktopApp
    from anomalydesk.app.model.settings import AppSettings

    app = DesktopApp(AppSettings(), url, run_detector=False)
    app.window.show()
    run(qtbot, app.start())
    qtbot.waitUntil(lambda: app.state.connection.status == "connected", timeout=20_000)
    return app



def usual_range_of(qtbot, app, alert: dict) -> tuple[float, float]:
    """Select the alert's incident in the Incidents panel; the usual range its details plot shades."""
    panel = app.window.incidents
    qtbot.waitUntil(lambda: alert["incident_id"] in panel.model.ids, timeout=10_000)
    panel.select_incident(alert["incident_id"])
    qtbot.waitUntil(lambda: panel.detail_plot.isVisible() and panel.detail_usual is not None, timeout=10_000)
    return panel.detail_usual


def test_the_details_plot_shows_the_leading_feature_in_its_unit_with_its_usual_range(qtbot, qloop, redis_url, r):  # noqa: F811
    from anomalydesk import fingerprint as fpmod

    keys = Keys()
    now = time.time()
    first = int(now // 5) - 60
    for w in range(first, first + 60):  # an hour of windows: 0.4 % errors, then 20 % in the last five
        fields: dict[str, object] = {name: 0 for name in fpmod.FEATURE_NAMES}
        fields.update(requests=300, rate_5xx=0.2 if w >= first + 55 else 0.004 + 0.001 * (w % 3), window=w,
                      start=w * 5, schema=fpmod.SCHEMA_VERSION, no_data=0, kpis="", ws=5)
        r.xadd(keys.fingerprints("orders"), fields, id=f"{w * 5 * 1000}-1")
    r.sadd(keys.services, "orders")
    alert = raise_alert(r, "orders", first + 55)
    app = open_app(qtbot, redis_url)
    try:
        panel = app.window.incidents
        qtbot.waitUntil(lambda: alert["incident_id"] in panel.model.ids, timeout=10_000)
        panel.select_incident(alert["incident_id"])
        qtbot.waitUntil(lambda: panel.detail_plot.getPlotItem().titleLabel.text == "5xx ratio (%)", timeout=10_000)
        curve = panel.detail_plot.getPlotItem().listDataItems()[0]
        assert np.nanmax(curve.getData()[1]) == pytest.approx(20.0)  # in %, not "(scaled)" to 0–1
        assert panel.detail_usual is not None and 0.3 <= panel.detail_usual[0] <= panel.detail_usual[1] <= 0.7
    finally:
        close_app(qtbot, app)


def test_the_usual_range_leaves_out_an_earlier_incidents_windows_unless_it_was_a_false_positive(
        qtbot, qloop, redis_url, r):  # noqa: F811
    """A tester saw a second incident's usual range stretched by the first one's windows: the band came from
    every window before the incident. It comes from the normal ones, as training picks them (an incident's
    windows left out, a false positive's kept: `incidents.training_windows`), read from Redis: the earlier,
    closed incident is in no alert the app has seen."""
    keys = Keys()
    first = int(time.time() // 5) - 60
    earlier = range(first + 46, first + 51)  # the second incident's plot shows the 12 windows before it
    for w in range(first, first + 60):
        add_window(r, "orders", w, 0.2 if w in earlier or w >= first + 55 else 0.004 + 0.001 * (w % 3))
    r.sadd(keys.services, "orders")
    closed = replace(Incident.open("orders", "anomaly", earlier[0], earlier[0] * 5.0), last_window=earlier[-1],
                     windows=len(earlier), status="resolved", score=95.0, severity="critical")  # fmt: skip
    r.hset(keys.incidents, closed.id, json.dumps(closed.to_json()))
    alert = raise_alert(r, "orders", first + 55)
    app = open_app(qtbot, redis_url)
    try:
        low, high = usual_range_of(qtbot, app, alert)
        panel = app.window.incidents
        curve = panel.detail_plot.getPlotItem().listDataItems()[0]
        assert np.nanmax(curve.getData()[1]) == pytest.approx(20.0)  # the earlier burst is still plotted
        assert 0.3 <= low <= high <= 0.7  # the band: 0.4–0.6 %, not up to 20 %

        incidents.false_positive(r, closed.id, "tester")  # its windows were normal after all
        panel.detail_usual = None
        panel.show_details(panel.selected())
        qtbot.waitUntil(lambda: panel.detail_usual is not None, timeout=10_000)
        assert panel.detail_usual[1] > 10.0  # they count: the band reaches the burst's 20 %
    finally:
        close_app(qtbot, app)


def test_the_usual_range_leaves_out_a_gap_before_the_incident(qtbot, qloop, redis_url, r):  # noqa: F811
    """The windows of a gap (the demo stopped, or producers down: sealed silent, every feature 0) are no
    usual value either — training leaves them out — so the band does not reach down to 0 % after one."""
    first = int(time.time() // 5) - 60
    # 65 s without an event (a gap to training: TRAINING_GAP_SECONDS), 8 of its windows among the 12 the
    # plot shows before the incident
    gap = range(first + 38, first + 51)
    for w in range(first, first + 60):
        add_window(r, "orders", w, 0.2 if w >= first + 55 else 0.004 + 0.001 * (w % 3), silent=w in gap)
    r.sadd(Keys().services, "orders")
    alert = raise_alert(r, "orders", first + 55)
    app = open_app(qtbot, redis_url)
    try:
        low, high = usual_range_of(qtbot, app, alert)
        assert 0.3 <= low <= high <= 0.7  # 0.4–0.6 %, not from 0 %
    finally:
        close_app(qtbot, app)


def test_the_details_plot_of_an_open_incident_follows_new_windows_unless_zoomed(qtbot, qloop, redis_url, r):  # noqa: F811
    """Selected while it is still going, the incident's plot takes the windows that arrive afterwards (and
    its shaded span the windows the detector adds); once the user zoomed, the view stays where it was put."""
    import pyqtgraph as pg

    from anomalydesk.detect.incident_model import local_time

    keys = Keys()
    first = int(time.time() // 5) - 60

    for w in range(first, first + 60):
        add_window(r, "orders", w, 0.2 if w >= first + 55 else 0.004)
    r.sadd(keys.services, "orders")
    alert = raise_alert(r, "orders", first + 55)
    incident_id = alert["incident_id"]
    app = open_app(qtbot, redis_url)
    try:
        panel = app.window.incidents
        qtbot.waitUntil(lambda: incident_id in panel.model.ids, timeout=10_000)
        qtbot.waitUntil(lambda: len(app.state.live.buffer("orders")) == 60, timeout=10_000)
        panel.select_incident(incident_id)
        qtbot.waitUntil(lambda: panel.detail_plot.isVisible(), timeout=10_000)
        plot = panel.detail_plot.getPlotItem()

        def newest_plotted() -> float:
            return float(plot.listDataItems()[0].getData()[0][-1])

        def span_end() -> float:  # the incident's shaded span (the usual range is the horizontal region)
            spans = [i for i in plot.items if isinstance(i, pg.LinearRegionItem) and i.orientation == "vertical"]
            return float(spans[0].getRegion()[1])

        assert newest_plotted() == (first + 59) * 5
        # the incident goes on: two more windows, and the detector extends its record (the header follows)
        add_window(r, "orders", first + 60, 0.25)
        add_window(r, "orders", first + 61, 0.25)
        stored = Incident.from_json(json.loads(r.hget(keys.incidents, incident_id)))
        r.hset(keys.incidents, incident_id, json.dumps(replace(stored, last_window=first + 61, windows=7).to_json()))
        qtbot.waitUntil(lambda: newest_plotted() == (first + 61) * 5, timeout=10_000)
        ends = f"to {local_time((first + 62) * 5)}"  # the end of its last window
        qtbot.waitUntil(lambda: ends in panel.details.toPlainText(), timeout=10_000)
        qtbot.waitUntil(lambda: span_end() == (first + 62) * 5 + 1, timeout=10_000)
        # the view followed (auto-range, applied at pyqtgraph's next paint: waited for, not assumed)
        qtbot.waitUntil(lambda: plot.getViewBox().viewRange()[0][1] >= (first + 61) * 5, timeout=5_000)

        # zoomed in on the start: a new window is plotted, the view stays where the user put it
        plot.getViewBox().setRange(xRange=((first + 50) * 5, (first + 56) * 5), padding=0)
        zoomed = plot.getViewBox().viewRange()
        add_window(r, "orders", first + 62, 0.25)
        qtbot.waitUntil(lambda: newest_plotted() == (first + 62) * 5, timeout=10_000)
        assert plot.getViewBox().viewRange() == zoomed
    finally:
        close_app(qtbot, app)


def add_window(r: redis.Redis, service: str, w: int, rate_5xx: float, pipe: Any = None, silent: bool = False) -> None:
    """A sealed window of `service` in its fingerprint stream, as the gears library writes it (`silent`:
    no event at all, every feature 0, as sealing makes such a window up)."""
    from anomalydesk import fingerprint as fpmod

    fields: dict[str, object] = {name: 0 for name in fpmod.FEATURE_NAMES}
    fields.update(window=w, start=w * 5, schema=fpmod.SCHEMA_VERSION, no_data=0, kpis="", ws=5)
    if silent:
        fields.update(silent=1)
    else:
        fields.update(requests=300, rate_5xx=rate_5xx)
    (pipe or r).xadd(Keys().fingerprints(service), fields, id=f"{w * 5 * 1000}-1")


def plotted(panel) -> tuple[np.ndarray, np.ndarray]:
    """The details plot's curve: window starts (or bin times) and values."""
    return panel.detail_plot.getPlotItem().listDataItems()[0].getData()


def test_the_plot_of_a_long_incident_follows_it_to_its_end(qtbot, qloop, redis_url, r):  # noqa: F811
    """An incident goes on for 2,600 windows (3 h 37 min), written as fast as Redis takes them, then it is
    resolved: its plot takes every window to the last, in at most `detail_limit` points. (The follow read
    at most 2,000 entries from the plot's left edge and silently stopped there; closed, it stopped at once.)"""
    keys = Keys()
    n = 2_600
    first = int(time.time() // 5) - 60 - n  # every window in the past, as after a catch-up
    for w in range(first, first + 60):
        add_window(r, "orders", w, 0.2 if w >= first + 55 else 0.004)
    r.sadd(keys.services, "orders")
    alert = raise_alert(r, "orders", first + 55)
    incident_id = alert["incident_id"]
    app = open_app(qtbot, redis_url)
    try:
        panel = app.window.incidents
        panel.detail_limit = 1_000
        qtbot.waitUntil(lambda: incident_id in panel.model.ids, timeout=10_000)
        qtbot.waitUntil(lambda: len(app.state.live.buffer("orders")) == 60, timeout=10_000)
        panel.select_incident(incident_id)
        qtbot.waitUntil(lambda: panel.detail_plot.isVisible(), timeout=10_000)
        assert plotted(panel)[0][-1] == (first + 59) * 5

        last = first + 60 + n - 1
        pipe = r.pipeline(transaction=False)
        for w in range(first + 60, last + 1):
            add_window(r, "orders", w, 0.9 if w == first + 1_500 else 0.25, pipe)  # one window of 90 % 5xx
        pipe.execute()
        stored = Incident.from_json(json.loads(r.hget(keys.incidents, incident_id)))
        r.hset(keys.incidents, incident_id, json.dumps(replace(stored, last_window=last, windows=n + 5).to_json()))
        incidents.resolve(r, incident_id, keys=keys)
        qtbot.waitUntil(lambda: app.state.incidents.incidents[incident_id].state.closed, timeout=10_000)
        qtbot.waitUntil(lambda: plotted(panel)[0][-1] == last * 5, timeout=20_000)
        x, y = plotted(panel)
        assert len(x) <= 1_000 and np.all(np.diff(x) > 0)  # bounded: older windows in min/max time bins
        assert np.all(np.diff(x[-250:]) == 5)  # the newest as windows
        assert x[0] < (first + 55) * 5 and np.nanmax(y) == pytest.approx(90.0)  # from before it, the spike kept
        assert "failed" not in panel.status_label.text()
    finally:
        close_app(qtbot, app)


def test_a_failed_follow_read_backs_off_says_so_and_recovers(qtbot, qloop, tmp_path):  # noqa: F811
    """Redis goes away just after a window of the open incident arrived: the plot's read of it fails, is
    said, and is tried again after 2 s, 4 s, … 60 s, not at every tick of the 1-s clock; back, the next
    retry plots the window and the wait starts again from 2 s."""
    from conftest import RedisServer

    server = RedisServer(tmp_path / "redis")
    client = server.client()
    first = int(time.time() // 5) - 60
    for w in range(first, first + 60):
        add_window(client, "orders", w, 0.2 if w >= first + 55 else 0.004)
    client.sadd(Keys().services, "orders")
    alert = raise_alert(client, "orders", first + 55)
    app = None
    try:
        app = open_app(qtbot, server.url)
        panel = app.window.incidents
        qtbot.waitUntil(lambda: alert["incident_id"] in panel.model.ids, timeout=10_000)
        qtbot.waitUntil(lambda: len(app.state.live.buffer("orders")) == 60, timeout=10_000)
        panel.select_incident(alert["incident_id"])
        qtbot.waitUntil(lambda: panel.detail_plot.isVisible(), timeout=10_000)
        said = []
        app.state.feedback.connect(said.append)

        client.close()
        server.stop(signal.SIGKILL)
        newest = app.state.live.buffer("orders").last()
        app.state.live.append("orders", (first + 60) * 5.0, newest[2:], None)  # buffered just before
        intervals = []
        for attempt in range(7):
            qtbot.waitUntil(panel.follow_retry.isActive, timeout=20_000)
            intervals.append(panel.follow_retry.interval())
            panel._tick()  # the clock ticks while the retry waits: no read
            assert not panel._detail_following
            panel.follow_retry.stop()
            if attempt < 6:
                panel.follow_retry.timeout.emit()  # its time came: tried again
        assert intervals == [2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
        assert "reading new windows failed" in panel.status_label.text()
        assert panel.status_label.text().endswith("trying again in 60 s")
        assert len([w for w in said if "reading new windows failed" in w]) == 1  # the status bar, once

        server.start()  # same port, empty
        client = server.client()
        add_window(client, "orders", first + 60, 0.3)
        panel.follow_retry.timeout.emit()
        qtbot.waitUntil(lambda: plotted(panel)[0][-1] == (first + 60) * 5, timeout=20_000)
        assert panel.status_label.text() == "details plot: following new windows again"
        assert panel.follow_backoff == 2.0 and not panel.follow_retry.isActive()
    finally:
        if app is not None:
            close_app(qtbot, app)
        client.close()
        server.stop()


def test_a_level_shift_is_accepted_from_its_button(qtbot, qloop, redis_url, r):  # noqa: F811
    keys = Keys()
    anomaly = raise_alert(r, "orders", 3000)
    reason = {"feature": "latency_p95_ms", "actual": 180.0, "expected": 120.0, "since": 15_000.0,
              "text": "new normal? p95 latency 120 ms → 180 ms since 2026-12-02 14:05 UTC"}
    shift = replace(Incident.open("payments", "level_shift", 3000, 15_000.0), windows=1, score=70.0,
                    severity="warning", reasons=(reason,))  # fmt: skip
    alert = Alert.about(shift, kind="level_shift", window=3000, window_start=time.time(), score=70.0,
                        severity="warning", reasons=[reason], model_version=1, message=f"payments: {reason['text']}")
    store_incident(r, shift, alert.to_json(), keys)
    app = open_app(qtbot, redis_url)
    try:
        panel, state = app.window.incidents, app.state
        qtbot.waitUntil(lambda: {shift.id, anomaly["incident_id"]} <= set(panel.model.ids), timeout=10_000)
        panel.select_incident(anomaly["incident_id"])
        assert not panel.accept_button.isEnabled() and panel.fp_button.isEnabled()  # not a level shift
        panel.select_incident(shift.id)
        assert panel.accept_button.isEnabled() and not panel.fp_button.isEnabled()
        assert "new normal? p95 latency 120 ms → 180 ms" in panel.details.toPlainText()
        panel.accept_button.click()
        qtbot.waitUntil(lambda: state.incidents.incidents[shift.id].state == "accepted", timeout=10_000)
        stored = json.loads(r.hget(keys.incidents, shift.id))
        assert stored["accepted"]["by"] and stored["status"] == "resolved" and stored["resolved"]["how"] == "accepted"
        assert not panel.accept_button.isEnabled()
    finally:
        close_app(qtbot, app)


def test_catch_up_then_live_alerts_and_operator_actions(qtbot, qloop, redis_url, r):  # noqa: F811
    old = raise_alert(r, "payments", 1000)  # before the app starts: catch-up from the log
    app = open_app(qtbot, redis_url)
    try:
        window, state = app.window, app.state
        qtbot.waitUntil(lambda: old["incident_id"] in state.incidents.incidents, timeout=10_000)
        assert not window.banner.isVisible()  # history at start-up is listed, not notified
        live = raise_alert(r, "orders", 2000)  # after: pub/sub, notified
        qtbot.waitUntil(lambda: live["incident_id"] in window.incidents.model.ids, timeout=10_000)
        qtbot.waitUntil(window.banner.isVisible, timeout=5_000)
        assert "orders" in window.banner.text and "5xx ratio 20%" in window.banner.text
        assert state.incidents.health == "critical"
        model = window.incidents.model
        assert model.ids == [live["incident_id"], old["incident_id"]] or set(model.ids) == {
            live["incident_id"], old["incident_id"]}

        window.banner.open_button.click()  # opens the notified incident
        assert window.incidents.selected().incident_id == live["incident_id"]
        assert "5xx ratio 20% vs 0.4% normal" in window.incidents.details.toPlainText()
        window.incidents.ack_button.click()
        qtbot.waitUntil(lambda: state.incidents.incidents[live["incident_id"]].state == "acknowledged", timeout=10_000)
        assert json.loads(r.hget(Keys().incidents, live["incident_id"]))["acked"]["by"]

        window.incidents.snooze_actions["1 hour"].trigger()
        qtbot.waitUntil(lambda: state.incidents.incidents[live["incident_id"]].state == "snoozed", timeout=10_000)
        stored = json.loads(r.hget(Keys().incidents, live["incident_id"]))
        assert 3500 < stored["snoozed_until_epoch"] - time.time() <= 3600

        window.incidents.resolve_button.click()
        qtbot.waitUntil(lambda: state.incidents.incidents[live["incident_id"]].state == "resolved", timeout=10_000)
        assert json.loads(r.hget(Keys().incidents, live["incident_id"]))["status"] == "resolved"

        window.incidents.select_incident(old["incident_id"])
        window.incidents.fp_button.click()
        qtbot.waitUntil(lambda: state.incidents.incidents[old["incident_id"]].state == "false_positive",
                        timeout=10_000)  # fmt: skip
        assert json.loads(r.hget(Keys().incidents, old["incident_id"]))["false_positive"]
        assert state.incidents.health == "none"
    finally:
        close_app(qtbot, app)


def test_silence_mutes_the_notification_but_keeps_the_row(qtbot, qloop, redis_url, r):  # noqa: F811
    """The detector applies the silence (the app does not judge silences itself): the silenced incident
    is shown, from its record, and never notified; the other service's is."""
    from anomalydesk.store import models as registry
    from test_detector import add_window, make_detector

    app = open_app(qtbot, redis_url)
    try:
        panel = app.window.incidents
        panel.silence_pattern.setText("svc-*")
        panel.silence_hours.setValue(1.0)
        panel.silence_reason.setText("maintenance window")
        panel.silence_add.click()
        qtbot.waitUntil(lambda: panel.silence_list.count() == 1, timeout=10_000)
        assert len(incidents.list_silences(r)) == 1
        qtbot.waitUntil(app.session.caught_up.is_set, timeout=10_000)  # what follows is live, not history
        first = int(time.time() // 5) + 1  # windows after the silence began
        for service in ("svc-7", "users"):
            registry.save(r, service, json.dumps({"limit": 200}), {"windows": 100})
            for window in range(first, first + 3):
                add_window(r, service, window, requests=500)
        detector = make_detector(r)
        while detector.step().processed:
            pass
        detector.release()
        muted, heard = (incidents.list_incidents(r, service=s)[0] for s in ("svc-7", "users"))
        assert muted.silenced and not heard.silenced
        qtbot.waitUntil(lambda: {muted.id, heard.id} <= set(panel.model.ids), timeout=10_000)  # fmt: skip
        qtbot.waitUntil(app.window.banner.isVisible, timeout=5_000)
        assert [n.incident_id for n in app.tray.delivered] == [heard.id]
        assert app.state.incidents.incidents[muted.id].incident == incidents.get(r, muted.id)
    finally:
        close_app(qtbot, app)


def test_a_silenced_incident_is_marked_as_the_cli_marks_it(qtbot, qloop, redis_url, r):  # noqa: F811
    """The state column and the details header add the CLI's `[silenced]` (one source: `Incident.marks`)."""
    from anomalydesk.app.widgets.incidents_panel import COLUMNS
    from anomalydesk.commands.incidents import _table

    keys = Keys()
    heard = raise_alert(r, "users", 3000)
    muted = replace(Incident.open("svc-7", "anomaly", 3000, 15_000.0), windows=1, score=90.0, severity="critical",
                    silenced=True)  # fmt: skip
    alert = Alert.about(muted, kind="new", window=3000, window_start=time.time(), score=90.0, severity="critical",
                        reasons=[], model_version=1, message="svc-7: muted", silenced=True)  # fmt: skip
    store_incident(r, muted, alert.to_json(), keys)
    app = open_app(qtbot, redis_url)
    try:
        panel = app.window.incidents
        model = panel.model
        qtbot.waitUntil(lambda: {muted.id, heard["incident_id"]} <= set(model.ids), timeout=10_000)

        def state_cell(incident_id: str) -> str:
            return model.data(model.index(model.ids.index(incident_id), COLUMNS.index("state")))

        assert state_cell(muted.id) == "open [silenced]" and state_cell(heard["incident_id"]) == "open"
        assert _table([incidents.get(r, muted.id)], time.time())[0].endswith("  [silenced]")  # the CLI's words
        panel.select_incident(muted.id)
        assert panel.details.toPlainText().splitlines()[0].endswith(" — open [silenced]")
    finally:
        close_app(qtbot, app)


def test_a_silence_stored_before_start_up_is_listed_and_removable(qtbot, qloop, redis_url, r):  # noqa: F811
    """The silences list is read when the app first connects, not only after a reconnect: a mute set
    before (an earlier run, the CLI) can be seen and removed."""
    incidents.add_silence(r, "svc-*", time.time() + 3600, "maintenance window")
    app = open_app(qtbot, redis_url)
    try:
        panel = app.window.incidents
        qtbot.waitUntil(lambda: panel.silence_list.count() == 1, timeout=10_000)
        assert panel.silence_list.item(0).text().startswith("svc-* until ")
        panel.silence_list.setCurrentRow(0)
        panel.silence_remove.click()
        qtbot.waitUntil(lambda: panel.silence_list.count() == 0, timeout=10_000)
        assert incidents.list_silences(r) == []
    finally:
        close_app(qtbot, app)


def test_reconnects_after_redis_restart_and_catches_up(qtbot, qloop, tmp_path):  # noqa: F811
    from conftest import RedisServer

    server = RedisServer(tmp_path / "redis")
    app = None
    try:
        app = open_app(qtbot, server.url)
        conn = app.state.connection
        qtbot.waitUntil(app.session.caught_up.is_set, timeout=10_000)
        server.stop(signal.SIGKILL)
        qtbot.waitUntil(lambda: conn.status in ("reconnecting", "failed"), timeout=30_000)
        assert conn.reason
        server.start()  # same port, empty (no persistence)
        client = server.client()
        # logged while the app was away and not published to it: only the catch-up can find it
        missed = raise_alert(client, "inventory", 4000, publish=False)
        qtbot.waitUntil(lambda: conn.status == "connected", timeout=30_000)
        qtbot.waitUntil(lambda: missed["incident_id"] in app.state.incidents.incidents, timeout=10_000)
        qtbot.waitUntil(lambda: any(n.incident_id == missed["incident_id"] for n in app.tray.delivered),
                        timeout=5_000)  # fmt: skip
        # and pub/sub works again after the resubscribe
        later = raise_alert(client, "gateway", 4001)
        qtbot.waitUntil(lambda: later["incident_id"] in app.state.incidents.incidents, timeout=10_000)
        client.close()
    finally:
        if app is not None:
            close_app(qtbot, app)
        server.stop()


def test_a_long_plot_is_bounded_keeping_its_spike_and_its_newest_windows():
    from anomalydesk.app.widgets.incidents_panel import bounded

    points = np.column_stack([np.arange(0, 5 * 50_000, 5.0), np.full(50_000, 1.0)])
    points[12_345, 1] = 9.0
    kept = points[:100]
    for at in range(100, len(points), 700):  # as the follow appends, chunk by chunk
        kept = bounded(np.vstack([kept, points[at : at + 700]]), 5.0, 1_000)
        assert len(kept) <= 1_000 and np.all(np.diff(kept[:, 0]) > 0)
    assert kept[0, 0] <= points[0, 0] + 5 * 200 and kept[-1, 0] == points[-1, 0]  # the whole span, to the last
    assert np.all(np.diff(kept[-250:, 0]) == 5.0) and np.nanmax(kept[:, 1]) == 9.0


def test_the_longest_snooze_says_it_lasts_until_eight_tomorrow_and_does(qtbot, qloop, redis_url, r):  # noqa: F811
    """A new user read "until tomorrow" in the Snooze menu; it snoozed until 08:00 local time tomorrow.
    The menu says so, and the incident's "snoozed until" cell shows that 08:00."""
    import datetime as dt

    from anomalydesk.app.widgets.incidents_panel import COLUMNS
    from anomalydesk.detect.incident_model import local_time

    alert = raise_alert(r, "orders", 3000)
    app = open_app(qtbot, redis_url)
    try:
        panel = app.window.incidents
        qtbot.waitUntil(lambda: alert["incident_id"] in panel.model.ids, timeout=10_000)
        panel.select_incident(alert["incident_id"])
        labels = [a.text() for a in panel.snooze_button.menu().actions()]
        assert labels == ["15 minutes", "1 hour", "until 08:00 tomorrow"]
        panel.snooze_actions["until 08:00 tomorrow"].trigger()
        rows = app.state.incidents.incidents
        qtbot.waitUntil(lambda: rows[alert["incident_id"]].state == "snoozed", timeout=10_000)
        until = json.loads(r.hget(Keys().incidents, alert["incident_id"]))["snoozed_until_epoch"]
        # the panel's seconds are added to the clock when stored: a few ms after the click
        eight = dt.datetime.combine(dt.date.fromtimestamp(until), dt.time(8, 0)).timestamp()
        assert 0 <= until - eight < 5 and dt.date.fromtimestamp(until) - dt.date.today() <= dt.timedelta(days=1)
        row = panel.model.ids.index(alert["incident_id"])
        cell = panel.model.data(panel.model.index(row, COLUMNS.index("snoozed until")))
        assert cell == local_time(until) and " 08:00:00 " in cell
    finally:
        close_app(qtbot, app)


def test_snoozing_until_eight_tomorrow_holds_across_a_daylight_saving_change(monkeypatch):
    """The snooze's length was reckoned in wall-clock hours: the night the clocks go back it ended at 07:00."""
    from anomalydesk.app.widgets.incidents_panel import seconds_until_tomorrow

    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        evening = time.mktime((2026, 10, 24, 22, 0, 0, 0, 0, -1))  # the clocks go back at 03:00 on the 25th
        ends = time.localtime(evening + seconds_until_tomorrow(evening))
        assert (ends.tm_mday, ends.tm_hour, ends.tm_min) == (25, 8, 0)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_details_header_gives_the_incidents_span_as_local_times(qtbot, qloop, redis_url, r):  # noqa: F811
    """A new user read "windows 359201234…359201240" in the details: window numbers. The header gives the
    first window's start and the last window's end in local time, as the table's start column does."""
    from anomalydesk.detect.incident_model import local_time

    window = int(time.time() // 5) - 10
    reasons = [{"feature": "rate_5xx", "actual": 0.2, "expected": 0.004, "text": "5xx ratio 20% vs 0.4% normal"}]
    incident = replace(Incident.open("orders", "anomaly", window, window * 5.0), last_window=window + 6, windows=7,
                       score=95.0, severity="critical", reasons=reasons)  # fmt: skip
    alert = Alert.about(incident, kind="new", window=window, window_start=window * 5.0, score=95.0,
                        severity="critical", reasons=reasons, model_version=1, message="orders: 5xx").to_json()
    store_incident(r, incident, alert)
    app = open_app(qtbot, redis_url)
    try:
        panel = app.window.incidents
        qtbot.waitUntil(lambda: alert["incident_id"] in panel.model.ids, timeout=10_000)
        panel.select_incident(alert["incident_id"])
        text = panel.details.toPlainText()
        assert f"from {local_time(window * 5.0)} to {local_time((window + 7) * 5.0)}" in text, text
        assert f"windows {window}" not in text and f"{window + 6}" not in text
    finally:
        close_app(qtbot, app)
