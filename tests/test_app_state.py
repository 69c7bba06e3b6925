"""Qt-free parts of the app: settings schema and secrets, ring buffers, incident folding, notifier rules."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from anomalydesk.app import settings as settings_mod
from anomalydesk.app.notifier import Notifier, Silence
from anomalydesk.app.ringbuffer import RingBuffer
from anomalydesk.app.settings import AppSettings
from anomalydesk.app.state import IncidentsState


def alert(iid: str, kind: str = "new", severity: str = "warning", score: float = 75.0, service: str = "payments",
          window: int = 1, aid: str | None = None) -> dict:  # fmt: skip
    return {"id": aid or f"{iid}:{window}:{kind}", "kind": kind, "incident_id": iid, "time": "2026-11-26T10:00:00Z",
            "window": window, "service": service, "score": score, "severity": severity,
            "reasons": [{"feature": "rate_5xx", "text": "5xx ratio 20% vs 0.4% normal"}], "message": "m"}  # fmt: skip


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


# --- incidents --------------------------------------------------------------------------------
def test_alerts_fold_into_one_incident_with_escalation_and_resolution():
    state = IncidentsState()
    levels = []
    state.health_changed.connect(levels.append)
    inc, new = state.apply_alert(alert("p:a1"))
    assert new and inc.state == "open" and state.health == "warning"
    assert state.apply_alert(alert("p:a1")) == (None, False)  # the same alert twice (catch-up + pub/sub)
    inc2, new2 = state.apply_alert(alert("p:a1", kind="escalated", severity="critical", score=96, window=3))
    assert inc2 is inc and not new2 and inc.severity == "critical" and inc.score == 96 and inc.window_last == 3
    state.set_state("p:a1", "false_positive")
    state.apply_alert(alert("p:a1", kind="resolved", window=4))
    assert inc.state == "false_positive"  # the closing alert does not undo the operator's verdict
    assert levels == ["warning", "critical", "none"]


def test_incident_table_is_bounded():
    state = IncidentsState(max_rows=10)
    for i in range(25):
        state.apply_alert(alert(f"s:a{i}", window=i))
    assert len(state.incidents) == 10


# --- notifier ---------------------------------------------------------------------------------
def test_one_notification_per_incident_or_escalation_and_mutes():
    now = [1000.0]
    shown = []
    n = Notifier(shown.append, clock=lambda: now[0])
    state = IncidentsState()

    def feed(a):
        inc, new = state.apply_alert(a)
        return n.on_alert(a, inc, new)

    assert feed(alert("p:a1")) is not None
    assert feed(alert("p:a1", kind="new", window=2)) is None  # another window of the same incident
    now[0] += 60
    assert feed(alert("p:a1", kind="escalated", severity="critical", window=3)).severity == "critical"
    n.silences = [Silence("svc-*", 0, 5000)]
    assert feed(alert("s:a1", service="svc-7")) is None
    n.pause(3600)
    assert feed(alert("u:a1", service="users")) is None
    n.resume()
    assert feed(alert("o:a1", service="orders")) is not None
    assert [x.incident_id for x in shown] == ["p:a1", "p:a1", "o:a1"]


def test_a_burst_is_throttled_and_summarised_not_dropped():
    shown = []
    n = Notifier(shown.append, clock=lambda: 50.0)
    state = IncidentsState()
    for i in range(12):
        a = alert(f"s{i}:a1", service=f"svc-{i}")
        inc, new = state.apply_alert(a)
        n.on_alert(a, inc, new)
    assert len(shown) == 5 and n.suppressed == 7
    summary = n.flush_summary()
    assert summary is not None and summary.title.startswith("7 more")
