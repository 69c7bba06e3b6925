"""The scores the detector stores per window (`detect.window_scores`), against a real redis-server."""

from __future__ import annotations

import json

import redis

from anomalydesk.detect import window_scores
from anomalydesk.detect.incident_flow import Confirmation
from anomalydesk.detect.window_scores import WindowScore, activations
from anomalydesk.store import models as registry
from anomalydesk.store.keys import Keys
from test_detector import add_window, alerts, drain, make_detector

K = Keys()


def test_an_anomalous_window_stores_the_score_its_alert_carries(r: redis.Redis) -> None:
    registry.save(r, "payments", json.dumps({"limit": 200}), {"windows": 100})
    flow = [100, 300, 300, 900]
    for i, value in enumerate(flow):
        add_window(r, "payments", 1000 + i, requests=value)
    drain(make_detector(r, confirmation=Confirmation(k=2, n=3, cooldown=2)))
    stored = {s.window: s for s in window_scores.read(r, "payments")}
    assert sorted(stored) == [1000, 1001, 1002, 1003]
    got = alerts(r)
    assert [a["kind"] for a in got] == ["new", "escalated"]
    for alert in got:
        mine = stored[alert["window"]]
        assert mine.score == alert["score"] and mine.severity == alert["severity"]
        assert mine.anomalous and mine.model_version == alert["model_version"] == 1
    assert not stored[1000].anomalous and stored[1000].score == 10.0
    assert [s.start for s in stored.values()] == [w * 5.0 for w in range(1000, 1004)]
    # the entry id is the fingerprint's
    assert [e[0] for e in r.xrange(K.scores("payments"))] == [e[0] for e in r.xrange(K.fingerprints("payments"))]


def test_a_redelivered_window_is_not_stored_twice(r: redis.Redis) -> None:
    registry.save(r, "payments", json.dumps({"limit": 200}), {"windows": 100})
    for i in range(4):
        add_window(r, "payments", 2000 + i, requests=500)
    first = make_detector(r)
    assert drain(first, 3) == 4
    before = r.xrange(K.scores("payments"))
    assert len(before) == 4
    # a crash after the commit, before the XACK: the group rewound, another detector reads it all again
    r.xgroup_setid(K.fingerprints("payments"), "detectors", id="0")
    first.release()
    second = make_detector(r)
    assert drain(second, 3) == 4
    second.release()
    assert r.xrange(K.scores("payments")) == before


def test_a_window_scored_before_the_detector_state_was_lost_gets_no_second_entry(r: redis.Redis) -> None:
    registry.save(r, "payments", json.dumps({"limit": 200}), {"windows": 100})
    for i in range(4):
        add_window(r, "payments", 2000 + i, requests=100)
    first = make_detector(r)
    assert drain(first, 3) == 4
    first.release()
    before = r.xrange(K.scores("payments"))
    # the state lost, so the script's window check lets the windows through again: the stream still keeps
    # one entry per window (an id not past its last is refused inside the script) and the rest commits
    r.hdel(K.detector_states, "payments")
    r.xgroup_setid(K.fingerprints("payments"), "detectors", id="0")
    assert drain(make_detector(r), 3) == 4
    assert r.xrange(K.scores("payments")) == before
    assert json.loads(r.hget(K.detector_states, "payments"))["last_window"] == 2003


def test_windows_nobody_scored_have_no_entry(r: redis.Redis) -> None:
    for w in range(100, 104):  # learning: no model yet
        add_window(r, "orders", w)
    add_window(r, "orders", 104, no_data=1)
    det = make_detector(r)
    assert drain(det) == 5
    assert r.exists(K.scores("orders")) == 0
    registry.save(r, "orders", json.dumps({"limit": 200}), {"windows": 100})
    det._last_refresh = -1e18  # the next step reads the new model at once
    add_window(r, "orders", 105)
    add_window(r, "orders", 106, no_data=1)  # no data: not scored, even with a model
    add_window(r, "orders", 107)
    assert drain(det) == 3
    assert [s.window for s in window_scores.read(r, "orders")] == [105, 107]


def test_a_newly_activated_model_scores_from_its_activation_on(r: redis.Redis) -> None:
    registry.save(r, "users", json.dumps({"limit": 200}), {"windows": 100})
    for i in range(3):
        add_window(r, "users", 3000 + i, requests=300)
    det = make_detector(r)
    drain(det)
    registry.save(r, "users", json.dumps({"limit": 1000}), {"windows": 100})  # v2 becomes active
    det._last_refresh = -1e18
    for i in range(3, 6):
        add_window(r, "users", 3000 + i, requests=300)
    drain(det)
    stored = window_scores.read(r, "users")
    assert [(s.window, s.model_version, s.anomalous) for s in stored] == [
        (3000, 1, True), (3001, 1, True), (3002, 1, True), (3003, 2, False), (3004, 2, False), (3005, 2, False)]
    assert activations(stored) == [(3000 * 5.0, 1), (3003 * 5.0, 2)]
    assert activations(stored[3:], before=1) == [(3003 * 5.0, 2)]
    assert activations(stored[4:], before=2) == []
    assert window_scores.read(r, "users", count=2) == stored[-2:]


def test_the_stream_is_trimmed_to_the_retention(r: redis.Redis) -> None:
    r.hset(K.config, mapping={"window_seconds": 5, "retention": 100})
    registry.save(r, "gateway", json.dumps({"limit": 200}), {"windows": 100})
    for w in range(400):
        add_window(r, "gateway", 10_000 + w)
    drain(make_detector(r), 10)
    kept = r.xlen(K.scores("gateway"))
    assert 100 <= kept < 400  # MAXLEN ~: whole stream nodes are dropped
    assert window_scores.read(r, "gateway")[-1].window == 10_399


def test_fields_round_trip_and_malformed_entries_are_skipped() -> None:
    score = WindowScore(7, 35.0, 71.25, "warning", True, None)  # type: ignore[arg-type]
    fields = score.fields()
    back = WindowScore.from_fields(dict(zip(fields[::2], fields[1::2], strict=True)))
    assert back == score and back.model_version is None
    assert window_scores.parse_entries([("1-1", {b"window": b"7"}), ("2-1", dict(zip(fields[::2], fields[1::2],
                                                                                      strict=True)))]) == [score]
