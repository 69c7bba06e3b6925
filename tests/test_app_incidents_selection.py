"""The Incidents panel around its selection, as a new user met it (offscreen window, real redis-server):
rows that moved under the pointer as incidents arrived, so a click landed on the wrong one; action
buttons enabled for an incident that could not take the action; a live plot that stayed on another
service; a message beside the buttons about an incident no longer selected.

Alerts are written the way the detector writes them (`raise_alert`); the pointer is moved with QTest,
which the offscreen platform turns into the enter and leave events a real pointer makes.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from PySide6 import QtCore

from anomalydesk.detect import incidents
from anomalydesk.detect.incident_model import Alert, Incident
from anomalydesk.store.keys import Keys
from app_support import qloop, run  # noqa: F401  (fixture)
from test_app_incidents import close_app, open_app, raise_alert, store_incident

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_level_fail("WARNING"),
              pytest.mark.qt_log_ignore("This plugin does not support")]  # the offscreen platform says so

ACTIONS = ("ack", "snooze", "false_positive", "resolve", "accept")


def row_centre(panel, incident_id: str) -> QtCore.QPoint:
    """Where a click on the incident's reason cell lands, in the table's viewport."""
    from anomalydesk.app.widgets.incidents_panel import COLUMNS

    index = panel.model.index(panel.model.ids.index(incident_id), COLUMNS.index("reason"))
    return panel.table.visualRect(index).center()


def under(panel, pos: QtCore.QPoint) -> str:
    """The incident shown at `pos` of the table's viewport."""
    return panel.model.incident_at(panel.table.indexAt(pos).row()).incident_id


def pointer_away(qtbot, app) -> None:
    """The pointer on the details text, off the table (and off the hint)."""
    qtbot.mouseMove(app.window.incidents.details, QtCore.QPoint(10, 10))


def enabled(panel) -> set[str]:
    """The incident actions whose buttons can be clicked now."""
    buttons = {"ack": panel.ack_button, "snooze": panel.snooze_button, "false_positive": panel.fp_button,
               "resolve": panel.resolve_button, "accept": panel.accept_button}  # fmt: skip
    found = {name for name, button in buttons.items() if button.isEnabled()}
    # the Incidents menu and its shortcuts say the same
    assert found == {name for name in ACTIONS if panel.shortcut_actions[name].isEnabled()}
    return found


def test_rows_hold_still_under_the_pointer_while_new_incidents_are_notified_at_once(qtbot, qloop, redis_url, r):  # noqa: F811
    """The user aimed at incident A; a new incident arrived at the top and the click selected the one that
    had slid under the pointer. Now the rows keep their places while the pointer is over the table: the
    new incident is notified at once, a hint counts it, and it is shown when the pointer leaves (or the
    hint is clicked), with the selection still on A."""
    a = raise_alert(r, "orders", 1000)["incident_id"]
    b = raise_alert(r, "payments", 1001)["incident_id"]
    app = open_app(qtbot, redis_url)
    try:
        panel = app.window.incidents
        qtbot.waitUntil(lambda: {a, b} <= set(panel.model.ids), timeout=10_000)
        qtbot.waitUntil(app.session.caught_up.is_set, timeout=10_000)  # what follows is live: notified
        assert panel.model.ids == [b, a]
        aim = row_centre(panel, a)
        qtbot.mouseMove(panel.table.viewport(), aim)
        assert under(panel, aim) == a

        c = raise_alert(r, "inventory", 1002)["incident_id"]  # the newest: its row goes on top
        qtbot.waitUntil(lambda: any(n.incident_id == c for n in app.tray.delivered), timeout=10_000)
        assert c in app.state.incidents.incidents and app.state.incidents.health == "critical"
        assert panel.model.ids == [b, a] and under(panel, aim) == a  # nothing moved under the pointer
        assert panel.waiting_hint.isVisible() and panel.waiting_hint.text() == "▲ 1 new incident"
        qtbot.mouseClick(panel.table.viewport(), QtCore.Qt.MouseButton.LeftButton, pos=aim)
        assert panel.selected().incident_id == a
        app.window.grab().save("/tmp/wtc-incidents-held.png")

        pointer_away(qtbot, app)  # shown once the pointer has left: on top, the selection still on A
        qtbot.waitUntil(lambda: panel.model.ids == [c, b, a], timeout=5_000)
        assert panel.selected().incident_id == a and not panel.waiting_hint.isVisible()
        assert "orders" in panel.details.toPlainText()

        qtbot.mouseMove(panel.table.viewport(), row_centre(panel, b))  # back over the list: held again
        d = raise_alert(r, "gateway", 1003)["incident_id"]
        qtbot.waitUntil(lambda: panel.waiting_hint.isVisible(), timeout=10_000)
        assert panel.model.ids == [c, b, a]
        qtbot.mouseMove(panel.waiting_hint, QtCore.QPoint(5, 5))
        qtbot.mouseClick(panel.waiting_hint, QtCore.Qt.MouseButton.LeftButton)  # "show them now"
        assert panel.model.ids == [d, c, b, a] and panel.selected().incident_id == a
        assert not panel.waiting_hint.isVisible()
    finally:
        pointer_away(qtbot, app)
        close_app(qtbot, app)


def test_the_selection_stays_on_its_incident_when_rows_are_dropped_and_a_scrolled_view_stays_put(
        qtbot, qloop, redis_url, r):  # noqa: F811
    """The table keeps at most `max_rows` incidents: a new one drops the oldest closed one. That rebuilt
    the table, which lost the selection; and a view scrolled down slid by a row at every new incident."""
    ids = [raise_alert(r, f"svc-{k}", 1000 + k)["incident_id"] for k in range(14)]
    incidents.resolve(r, ids[0])  # the oldest, closed: the first to go
    app = open_app(qtbot, redis_url)
    try:
        panel = app.window.incidents
        qtbot.waitUntil(lambda: set(ids) <= set(panel.model.ids), timeout=10_000)
        qtbot.waitUntil(app.session.caught_up.is_set, timeout=10_000)
        app.state.incidents.max_rows = len(ids)
        chosen = ids[5]
        panel.select_incident(chosen)
        bar = panel.table.verticalScrollBar()
        bar.setValue(bar.maximum() // 2)  # half way: at the bottom, a row dropped there takes the view up with it
        top = panel.model.incident_at(panel.table.rowAt(0)).incident_id
        assert bar.value() > 0 and top != ids[-1]  # scrolled down: the newest is out of view

        newest = raise_alert(r, "svc-new", 2000)["incident_id"]
        qtbot.waitUntil(lambda: newest in panel.model.ids, timeout=10_000)
        assert ids[0] not in panel.model.ids and len(panel.model.ids) == len(ids)  # the oldest closed went
        assert panel.selected() is not None and panel.selected().incident_id == chosen
        assert "svc-5" in panel.details.toPlainText()
        assert panel.model.incident_at(panel.table.rowAt(0)).incident_id == top  # the rows in view stayed
    finally:
        close_app(qtbot, app)


def test_each_action_button_follows_the_selected_incidents_state(qtbot, qloop, redis_url, r):  # noqa: F811
    """Acknowledge stayed enabled on an incident acknowledged already (and False positive on an accepted
    level shift). Each button now is enabled only while the selected incident can take its action, says
    why not in its tooltip, and follows the incident when its state changes while it is selected."""
    keys = Keys()
    fresh = raise_alert(r, "orders", 1000)["incident_id"]
    acked = raise_alert(r, "payments", 1001)["incident_id"]
    incidents.ack(r, acked, "ops")
    snoozed = raise_alert(r, "users", 1002)["incident_id"]
    incidents.snooze(r, snoozed, 3600, "ops")
    resolved = raise_alert(r, "gateway", 1003)["incident_id"]
    incidents.resolve(r, resolved, "ops")
    reason = {"feature": "latency_p95_ms", "actual": 180.0, "expected": 120.0, "text": "new normal? p95 180 ms"}
    shift = replace(Incident.open("search", "level_shift", 1004, 5020.0), windows=1, score=70.0,
                    severity="warning", reasons=(reason,))  # fmt: skip
    alert = Alert.about(shift, kind="level_shift", window=1004, window_start=time.time(), score=70.0,
                        severity="warning", reasons=[reason], model_version=1, message="search: new normal?")
    store_incident(r, shift, alert.to_json(), keys)
    app = open_app(qtbot, redis_url)
    try:
        panel = app.window.incidents
        qtbot.waitUntil(lambda: {fresh, acked, snoozed, resolved, shift.id} <= set(panel.model.ids), timeout=10_000)
        assert enabled(panel) == set()  # nothing selected
        expected = {
            fresh: {"ack", "snooze", "false_positive", "resolve"},
            acked: {"snooze", "false_positive", "resolve"},
            snoozed: {"ack", "snooze", "false_positive", "resolve"},  # snoozed, not acknowledged: still can be
            resolved: {"false_positive"},  # a closed anomaly can still be found a false positive
            shift.id: {"ack", "snooze", "resolve", "accept"},
        }
        for incident_id, actions in expected.items():
            panel.select_incident(incident_id)
            assert enabled(panel) == actions, incident_id
        panel.select_incident(acked)
        assert panel.ack_button.toolTip().startswith("Already acknowledged by ops")
        panel.select_incident(resolved)
        assert panel.resolve_button.toolTip().startswith("It is resolved: nothing left to resolve")
        panel.select_incident(snoozed)
        assert panel.snooze_button.toolTip().startswith("Snoozed until ")  # snoozing again starts from now

        # acknowledged while selected: its button greys out, the others stay
        panel.select_incident(fresh)
        panel.ack_button.click()
        assert enabled(panel) == set()  # while the action is being stored: no second click
        qtbot.waitUntil(lambda: app.state.incidents.incidents[fresh].state == "acknowledged", timeout=10_000)
        assert enabled(panel) == {"snooze", "false_positive", "resolve"}
        # resolved elsewhere (the CLI, the detector) while still selected: the status poll brings it
        incidents.resolve(r, fresh, "someone else")
        qtbot.waitUntil(lambda: enabled(panel) == {"false_positive"}, timeout=10_000)

        # an accepted level shift can take nothing more (False positive had been enabled on it)
        panel.select_incident(shift.id)
        panel.accept_button.click()
        qtbot.waitUntil(lambda: app.state.incidents.incidents[shift.id].state == "accepted", timeout=10_000)
        assert enabled(panel) == set()
        app.window.incidents.grab().save("/tmp/wtc-incidents-buttons.png")
    finally:
        close_app(qtbot, app)


def test_choosing_an_incident_shows_its_service_in_the_live_plot_without_fighting_the_user(
        qtbot, qloop, redis_url, r):  # noqa: F811
    """Selecting an incident left the live plot on another service. It follows each choice of an incident,
    and only that: a service the user then picks in the live panel stays, whatever the incident does."""
    r.sadd(Keys().services, "orders", "payments", "users")
    orders = raise_alert(r, "orders", 1000)["incident_id"]
    payments = raise_alert(r, "payments", 1001)["incident_id"]
    app = open_app(qtbot, redis_url)
    try:
        panel, live = app.window.incidents, app.window.live
        qtbot.waitUntil(lambda: {orders, payments} <= set(panel.model.ids), timeout=10_000)
        qtbot.waitUntil(lambda: live.service_box.findText("users") >= 0, timeout=10_000)
        qtbot.waitUntil(app.session.caught_up.is_set, timeout=10_000)
        live.service_box.setCurrentText("users")
        panel.select_incident(payments)
        assert live.service == "payments"
        panel.select_incident(orders)
        assert live.service == "orders"

        live.service_box.setCurrentText("users")  # the user looks at another service
        panel.ack_button.click()  # the selected incident changes …
        qtbot.waitUntil(lambda: app.state.incidents.incidents[orders].state == "acknowledged", timeout=10_000)
        newest = raise_alert(r, "inventory", 1002)["incident_id"]  # … and a new one moves its row down
        qtbot.waitUntil(lambda: newest in panel.model.ids, timeout=10_000)
        qtbot.wait(1_200)  # a tick of the panel's clock and a status poll
        assert panel.selected().incident_id == orders and live.service == "users"

        panel.select_incident(payments)  # another choice: followed again
        assert live.service == "payments"

        # a click on the incident already selected chooses it again (it did nothing: the selection stayed)
        live.service_box.setCurrentText("users")
        viewport = panel.table.viewport()
        qtbot.mouseClick(viewport, QtCore.Qt.MouseButton.LeftButton, pos=row_centre(panel, payments))
        assert panel.selected().incident_id == payments and live.service == "payments"
        live.service_box.setCurrentText("users")  # and a click on another incident chooses that one
        qtbot.mouseClick(viewport, QtCore.Qt.MouseButton.LeftButton, pos=row_centre(panel, orders))
        assert panel.selected().incident_id == orders and live.service == "orders"
    finally:
        close_app(qtbot, app)


def test_the_message_beside_the_buttons_belongs_to_the_selected_incident(qtbot, qloop, redis_url, r):  # noqa: F811
    """"acknowledged A" stayed beside the buttons after selecting B, and long after. The message now says
    what happened to the selected incident only: it goes when the selection moves, when the incident
    leaves the state it confirmed, and after a while; the status bar still tells every action."""
    a = raise_alert(r, "orders", 1000)["incident_id"]
    b = raise_alert(r, "payments", 1001)["incident_id"]
    app = open_app(qtbot, redis_url)
    try:
        window, panel = app.window, app.window.incidents
        label = panel.status_label
        qtbot.waitUntil(lambda: {a, b} <= set(panel.model.ids), timeout=10_000)
        panel.select_incident(a)
        panel.ack_button.click()
        assert label.text() == f"ack {a} …"
        qtbot.waitUntil(lambda: label.text() == f"{a}: acknowledged", timeout=10_000)
        panel.select_incident(b)
        assert label.text() == ""  # not about B
        panel.select_incident(a)
        assert label.text() == ""  # the header says A's state; the old confirmation does not come back

        # B acknowledged, then A selected before the action is stored: the status bar says it, not the label
        panel.select_incident(b)
        panel.ack_button.click()
        panel.select_incident(a)
        qtbot.waitUntil(lambda: window.status.currentMessage() == f"{b}: acknowledged", timeout=10_000)
        assert label.text() == ""

        # a confirmation goes once the incident leaves the state it names (resolved elsewhere)
        panel.snooze_actions["15 minutes"].trigger()
        qtbot.waitUntil(lambda: label.text().startswith(f"{a}: snoozed until "), timeout=10_000)
        incidents.resolve(r, a, "someone else")
        qtbot.waitUntil(lambda: app.state.incidents.incidents[a].state == "resolved", timeout=10_000)
        assert label.text() == ""

        # and after a while, whatever happens
        panel.message_seconds = 0.3
        panel.select_incident(b)
        panel.fp_button.click()
        qtbot.waitUntil(lambda: label.text() == f"{b}: false positive", timeout=10_000)
        qtbot.waitUntil(lambda: label.text() == "", timeout=5_000)
    finally:
        close_app(qtbot, app)
