"""Qt-free parts of the app: settings schema and secrets, ring buffers, incident folding, notifier rules."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace

import numpy as np
import pytest

from anomalydesk.app.model import settings as settings_mod
from anomalydesk.app.model.notifier import Notifier
from anomalydesk.app.model.ringbuffer import RingBuffer
from anomalydesk.app.model.settings import AppSettings
from anomalydesk.app.model.state import LIVE_COLUMNS, IncidentsState, table_state
from anomalydesk.detect.incident_model import Alert, Incident, Mark, Severity

REASONS = [{"feature": "rate_5xx", "text": "5xx ratio 20% vs 0.4% normal"}]


def alert(iid: str, kind: str = "new", severity: str = "warning", score: float = 75.0, service: str = "payments",
          window: int = 1, aid: str | None = None) -> dict:  # fmt: skip
    return {"id": aid or f"{iid}:{window}:{kind}", "kind": kind, "incident_id": iid, "time": "2026-11-26T10:00:00Z",
            "window": window, "service": service, "score": score, "severity": severity,
            "reasons": REASONS, "message": "m"}  # fmt: skip


def record(iid: str, service: str = "payments", window: int = 1) -> Incident:
    """The stored incident an alert names (one anomalous window, warning)."""
    return replace(Incident.open(service, "anomaly", window, window * 5.0), id=iid, windows=1, score=75.0,
                   severity=Severity.WARNING, reasons=REASONS)  # fmt: skip


# --- settings ---------------------------------------------------------------------------------
def test_settings_round_trip_and_migration(tmp_path):
    path = tmp_path / "app.json"
    s = AppSettings(redis_url="redis://h:1/0", live_features=["requests"], geometry="AAAA")
    settings_mod.save(s, path)
    assert settings_mod.load(path) == s
    path.write_text(json.dumps({"version": 1, "dock_state": "QUJD", "unknown": 1, "demo_rate": 50}))
    migrated = settings_mod.load(path)
    assert migrated.window_state == "QUJD" and migrated.demo_rate == 50 and migrated.version == 2


@pytest.mark.parametrize("bad", [{"demo_rate": "fast"}, {"close_to_tray": 1}, {"version": 99}, [1, 2]])
def test_settings_refuse_wrong_types_with_the_field_name(bad):
    with pytest.raises(ValueError) as err:
        AppSettings.from_dict(bad)  # type: ignore[arg-type]
    assert any(word in str(err.value) for word in ("demo_rate", "close_to_tray", "version", "JSON object"))


def test_unreadable_settings_fall_back_to_defaults(tmp_path):
    path = tmp_path / "app.json"
    path.write_text("{not json")
    assert settings_mod.load(path) == AppSettings()


def test_password_fallback_is_a_0600_file_when_no_keyring(monkeypatch):
    import keyring
    import keyring.backends.null

    keyring.set_keyring(keyring.backends.null.Keyring())  # what conftest's PYTHON_KEYRING_BACKEND selects
    where = settings_mod.set_password("ops@redis://h:1", "s3cret")
    assert "no OS keyring" in where and "0600" in where
    path = settings_mod._secrets_file()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert settings_mod.get_password("ops@redis://h:1") == "s3cret"


# --- ring buffer ------------------------------------------------------------------------------
def test_ring_buffer_keeps_the_newest_rows_in_order():
    buf = RingBuffer(4, 2)
    for i in range(6):
        buf.append([i, -i])
    assert buf.view()[:, 0].tolist() == [2, 3, 4, 5]
    buf.extend(np.array([[6, 0], [7, 0], [8, 0]]))
    assert buf.view()[:, 0].tolist() == [5, 6, 7, 8]
    buf.extend(np.arange(20).reshape(10, 2))
    assert buf.view()[:, 0].tolist() == [12, 14, 16, 18] and len(buf) == 4
    assert buf.last()[0] == 18
    with pytest.raises(ValueError):
        RingBuffer(0, 1)


def test_history_read_while_live_windows_arrive_stays_in_time_order():
    from anomalydesk.app.model.state import LiveState

    live = LiveState(capacity=100)
    vector = np.zeros(LIVE_COLUMNS - 2)
    for start in (500.0, 505.0):  # live windows arrive first (the backfill is still being read) …
        live.append("orders", start, vector + start, None)
    history = np.column_stack([np.arange(400.0, 505.0, 5.0), np.full(21, np.nan),
                               np.tile(vector, (21, 1))])  # … then the history, up to and including 500
    live.buffer("orders").merge(history)
    x = live.buffer("orders").view()[:, 0]
    assert np.all(np.diff(x) > 0) and x[0] == 400.0 and x[-1] == 505.0 and len(x) == 22  # 500 once
    live.append("orders", 450.0, vector + 1.0, None)  # a late window replaces its row, in its place
    view = live.buffer("orders").view()
    assert np.all(np.diff(view[:, 0]) > 0) and view[view[:, 0] == 450.0][0, 2] == 1.0


# --- incidents --------------------------------------------------------------------------------
def test_rows_are_the_stored_records_the_alerts_name():
    state = IncidentsState(window_seconds=5)
    levels = []
    state.health_changed.connect(levels.append)
    opened = record("p:a1", window=1)
    row, first = state.apply_alert(Alert.from_json(alert("p:a1")), opened)
    assert first and row.incident is opened and row.state == "open" and state.health == "warning"
    assert (row.start, row.last, row.windows, row.alerts) == (5.0, 10.0, 1, 1)
    assert row.reason == "5xx ratio 20% vs 0.4% normal"
    assert state.apply_alert(Alert.from_json(alert("p:a1")), opened) == (None, False)  # catch-up + pub/sub
    grown = opened.revised(last_window=3, windows=3, score=96.0, severity=Severity.CRITICAL)
    again, first = state.apply_alert(Alert.from_json(alert("p:a1", kind="escalated", severity="critical", window=3)),
                                     grown)  # fmt: skip
    assert again is row and not first and row.severity == "critical" and row.score == 96 and row.window_last == 3
    assert row.last == 20.0 and row.alerts == 2
    marked = grown.revised(status="resolved", false_positive=Mark("ops", "2026-11-26T10:01:00Z"),
                           resolved=Mark("ops", "2026-11-26T10:01:00Z", "false positive"))  # fmt: skip
    assert state.apply(marked) is row and row.state == "false_positive"
    assert levels == ["warning", "critical", "none"]
    # an alert whose incident is no longer stored (pruned) adds no row; a closed one is not followed in
    assert state.apply_alert(Alert.from_json(alert("gone:a1")), None) == (None, False)
    assert state.apply(replace(record("old:a1"), status="resolved")) is None
    assert set(state.incidents) == {"p:a1"}


def test_table_state_of_a_record():
    base = record("p:a1")
    assert table_state(base, now=100.0) == ("open", 0.0)
    assert table_state(replace(base, acked=Mark("a", "t")), now=100.0) == ("acknowledged", 0.0)
    snoozed = replace(base, acked=Mark("a", "t"), snoozed_until_epoch=200.0)
    assert table_state(snoozed, now=100.0) == ("snoozed", 200.0)
    assert table_state(snoozed, now=300.0) == ("acknowledged", 0.0)  # the snooze ran out
    assert table_state(replace(base, status="resolved"), now=100.0) == ("resolved", 0.0)


def test_incident_table_is_bounded():
    state = IncidentsState(max_rows=10)
    for i in range(25):
        state.apply_alert(Alert.from_json(alert(f"s:a{i}", window=i)), record(f"s:a{i}", window=i))
    assert len(state.incidents) == 10


# --- notifier ---------------------------------------------------------------------------------
def test_one_notification_per_incident_or_escalation_and_mutes():
    now = [1000.0]
    shown = []
    n = Notifier(shown.append, clock=lambda: now[0])
    state = IncidentsState()

    def feed(a: dict, incident: Incident | None = None) -> object:
        row, first = state.apply_alert(Alert.from_json(a), incident or record(a["incident_id"], service=a["service"]))
        return n.on_alert(Alert.from_json(a), row, first)

    assert feed(alert("p:a1")) is not None
    assert feed(alert("p:a1", kind="new", window=2)) is None  # another window of the same incident
    now[0] += 60
    escalated = replace(record("p:a1"), last_window=3, severity=Severity.CRITICAL, score=95.0, rev=2)
    assert feed(alert("p:a1", kind="escalated", severity="critical", window=3), escalated).severity == "critical"
    # the detector marked it silenced (a silence or a snooze at the window's time): never notified
    assert feed(alert("s:a1", service="svc-7") | {"silenced": True}) is None
    # an operator took the incident since: acknowledged, snoozed, closed by hand
    assert feed(alert("a:a1", service="auth"), replace(record("a:a1"), acked=Mark("ops", "t"))) is None
    assert feed(alert("z:a1", service="zed"), replace(record("z:a1"), snoozed_until_epoch=now[0] + 60)) is None
    closed = replace(record("c:a1"), status="resolved", resolved=Mark("ops", "t", "operator"))
    assert feed(alert("c:a1", service="cart"), closed) is None
    # resolved by the detector before the app read it (it was away): still told
    auto = replace(record("d:a1"), status="resolved", resolved=Mark("detector", "t", "auto"))
    assert feed(alert("d:a1", service="db"), auto) is not None
    n.pause(3600)
    assert feed(alert("u:a1", service="users")) is None
    n.resume()
    assert feed(alert("o:a1", service="orders")) is not None
    assert [x.incident_id for x in shown] == ["p:a1", "p:a1", "d:a1", "o:a1"]


def test_a_level_shift_notifies_when_it_opens_and_at_each_re_notification():
    now = [1000.0]
    shown = []
    n = Notifier(shown.append, clock=lambda: now[0])
    state = IncidentsState()
    shift = replace(Incident.open("payments", "level_shift", 1, 5.0), windows=1, score=70.0, severity=Severity.WARNING,
                    reasons=({"feature": "latency_p95_ms", "text": "new normal? p95 latency 120 ms → 180 ms"},))

    def feed(a: dict, incident: Incident = shift) -> object:
        row, first = state.apply_alert(Alert.from_json(a), incident)
        return n.on_alert(Alert.from_json(a), row, first)

    opened = feed(alert(shift.id, kind="level_shift", window=1))
    assert opened is not None and "new normal?" in opened.title
    now[0] += 4 * 3600
    assert feed(alert(shift.id, kind="level_shift", window=49)) is not None  # the 4-hour re-notification
    now[0] += 4 * 3600
    assert feed(alert(shift.id, kind="level_shift", window=97),
                replace(shift, snoozed_until_epoch=now[0] + 60)) is None  # snoozed: not told
    assert len(shown) == 2


def test_a_burst_is_throttled_and_summarised_not_dropped():
    shown = []
    n = Notifier(shown.append, clock=lambda: 50.0)
    state = IncidentsState()
    for i in range(12):
        a = Alert.from_json(alert(f"s{i}:a1", service=f"svc-{i}"))
        row, first = state.apply_alert(a, record(f"s{i}:a1", service=f"svc-{i}"))
        n.on_alert(a, row, first)
    assert len(shown) == 5 and n.suppressed == 7
    summary = n.flush_summary()
    assert summary is not None and summary.title.startswith("7 more")


def test_traffic_notes_a_stop_a_stale_buffer_and_a_silence_and_when_a_score_is_current_again():
    """What the Live panel says instead of a score that is no longer news (`app.model.traffic`): a stop on
    purpose while it is open, no window for more than 4 windows, 3 silent windows in a row (only then:
    one quiet window is no news); traffic back, nothing. A silence's score is current from its start."""
    from anomalydesk.app.model.traffic import Traffic
    from anomalydesk.detect.incident_model import local_time
    from anomalydesk.store.traffic_stops import Stop

    traffic, now = Traffic(), 1_800_000_000.0
    for w in range(10):
        traffic.window("svc", now - 50 + 5 * w, silent=False)
    newest = now - 5
    assert traffic.note("svc", newest, now, 5.0) is None
    assert traffic.note("svc", None, now, 5.0) is None  # nothing buffered: nothing to say
    stale = traffic.note("svc", newest, now + 20, 5.0)
    assert stale is not None and stale.words == f"no recent windows (newest {local_time(newest)})"
    assert stale.since is None  # no score of its is current
    traffic.window("svc", newest + 5, silent=True)
    traffic.window("svc", newest + 10, silent=True)
    assert traffic.note("svc", newest + 10, newest + 12, 5.0) is None  # two quiet windows: no news yet
    traffic.window("svc", newest + 15, silent=True)
    traffic.window("svc", newest + 5, silent=True)  # a window read again changes nothing
    silent = traffic.note("svc", newest + 15, newest + 17, 5.0)
    assert silent is not None and (silent.words, silent.since) == (f"no traffic since {local_time(newest + 5)}",
                                                                   newest + 5)  # fmt: skip
    traffic.window("svc", newest + 20, silent=False)  # traffic is back
    assert traffic.note("svc", newest + 20, newest + 22, 5.0) is None and "svc" not in traffic.silent_since
    traffic.stops = {"svc": Stop(newest + 25)}
    stopped = traffic.note("svc", newest + 20, newest + 30, 5.0)
    assert stopped is not None and stopped.words == f"demo traffic stopped at {local_time(newest + 25)}"
    traffic.window("svc", newest + 25, silent=False)  # traffic from the stop on, before the poll reads its end
    assert traffic.note("svc", newest + 25, newest + 32, 5.0) is None
    traffic.stops = {"svc": Stop(newest + 25, resumed=newest + 40)}  # the detector saw traffic again
    assert traffic.note("svc", newest + 40, newest + 42, 5.0) is None
    traffic.forget()
    assert traffic.stops == {} and traffic.last_traffic == {} and traffic.silent_since == {}
