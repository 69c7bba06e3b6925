"""The detector loop against a real redis-server, with a tiny injected scorer (no forest needed)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import redis

from anomalydesk import fingerprint as fpmod
from anomalydesk.detect import incidents
from anomalydesk.detect.detector import Detector
from anomalydesk.detect.incident_flow import Confirmation, Verdict
from anomalydesk.store import models as registry
from anomalydesk.store.keys import Keys

pytestmark = pytest.mark.backends  # runs once per sketch backend (conftest.BOTH_BACKENDS)

K = Keys()
W = 5


def add_window(r: redis.Redis, service: str, window: int, requests: float = 100.0, **extra: object) -> None:
    """Append one fingerprint entry the way the gears library does."""
    r.sadd(K.services, service)
    fields: dict[str, object] = {name: 0 for name in fpmod.FEATURE_NAMES}
    fields.update(requests=requests, window=window, start=window * W, schema=fpmod.SCHEMA_VERSION,
                  no_data=0, kpis="")
    fields.update(extra)
    r.xadd(K.fingerprints(service), fields, id=f"{window * W * 1000}-1")


def healthy_window(r: redis.Redis, service: str, window: int, rng: np.random.Generator, rate_5xx: float = 0.0,
                   ) -> None:  # fmt: skip
    """A window of a healthy service, with the small noise of real traffic (a forest can be trained on it)."""
    add_window(r, service, window, requests=float(rng.integers(240, 260)), rate_5xx=rate_5xx,
               rate_4xx=0.02 + rng.normal(0, 0.002), latency_p50_ms=40 + rng.normal(0, 2),
               latency_p95_ms=150 + rng.normal(0, 5), latency_p99_ms=210 + rng.normal(0, 8),
               latency_mean_ms=55 + rng.normal(0, 2), endpoints_distinct=12,
               top_endpoint_share=0.25 + rng.normal(0, 0.01), endpoint_entropy=3 + rng.normal(0, 0.05))  # fmt: skip


def toy_scorer(model: object, history: list, fp: fpmod.Fingerprint) -> Verdict:
    """Anomalous when requests exceed the model's limit; critical when far above."""
    limit = float(model["limit"])  # type: ignore[index]
    value = fp.get("requests")
    score = 95.0 if value > 3 * limit else 80.0 if value > limit else 10.0
    severity = "critical" if score >= 90 else "warning" if score >= 70 else "info"
    reasons = [{"feature": "requests", "actual": value, "expected": limit, "text": f"requests {value:g}"}]
    return Verdict(score=score, severity=severity, reasons=reasons if score >= 70 else [], anomalous=score >= 70)


def toy_decode(blob: bytes) -> dict:
    data = json.loads(blob)
    if "limit" not in data:
        raise ValueError("toy model without a limit")
    return data


def make_detector(r: redis.Redis, **kw: object) -> Detector:
    kw.setdefault("block_ms", 10)
    return Detector(r, scorer=toy_scorer, decode=toy_decode, seal=False, **kw)  # type: ignore[arg-type]


def alerts(r: redis.Redis) -> list[dict]:
    return [json.loads(f[b"alert"]) for _, f in r.xrange(K.alerts_log)]


def drain(det: Detector, steps: int = 5) -> int:
    return sum(det.step().processed for _ in range(steps))


def test_learning_service_is_read_and_acknowledged_without_alerts(r: redis.Redis) -> None:
    for w in range(100, 110):
        add_window(r, "orders", w, requests=10_000)
    det = make_detector(r)
    assert drain(det) == 10
    assert alerts(r) == []
    assert r.xpending(K.fingerprints("orders"), "detectors")["pending"] == 0


def test_incident_opens_escalates_and_resolves_with_one_alert_each(r: redis.Redis) -> None:
    registry.save(r, "payments", json.dumps({"limit": 200}), {"windows": 100})
    det = make_detector(r, confirmation=Confirmation(k=2, n=3, cooldown=2))
    flow = [100, 100, 300, 100, 300, 300, 300, 900, 900, 100, 100, 100]
    for i, value in enumerate(flow):
        add_window(r, "payments", 1000 + i, requests=value)
    assert drain(det) == len(flow)
    got = alerts(r)
    assert [a["kind"] for a in got] == ["new", "escalated", "resolved"]
    new = got[0]
    assert set(new) == {"id", "kind", "incident_id", "time", "window", "service", "score", "severity",
                        "reasons", "model_version", "message"}
    assert new["service"] == "payments" and new["window"] == 1004 and new["model_version"] == 1
    assert new["reasons"][0]["feature"] == "requests"
    assert new["time"].endswith("Z") and new["severity"] == "warning"
    assert got[1]["severity"] == "critical"
    assert len({a["incident_id"] for a in got}) == 1
    inc = incidents.get(r, new["incident_id"])
    # 1002 alone did not open it; 1002 and 1004 are 2 of the 3 windows 1002–1004: it opens at 1004
    assert (inc.first_window, inc.last_window, inc.status) == (1002, 1008, "resolved")
    assert inc.resolved is not None and inc.resolved.how == "auto"
    assert r.scard(K.incidents_open) == 0


def test_redelivered_window_is_acknowledged_but_writes_nothing_twice(r: redis.Redis) -> None:
    registry.save(r, "payments", json.dumps({"limit": 200}), {"windows": 100})
    for i in range(4):
        add_window(r, "payments", 2000 + i, requests=500)
    first = make_detector(r)
    drain(first, 3)
    before = alerts(r)
    assert [a["kind"] for a in before] == ["new"]
    # simulate a crash after commit but before anyone forgot: rewind the group, a new detector re-reads
    r.xgroup_setid(K.fingerprints("payments"), "detectors", id="0")
    first.release()
    second = make_detector(r)
    assert drain(second, 3) == 4
    assert alerts(r) == before


def test_silence_keeps_incident_but_does_not_publish(r: redis.Redis) -> None:
    registry.save(r, "payments", json.dumps({"limit": 200}), {"windows": 100})
    incidents.add_silence(r, "pay*", start=0, end=10**10, reason="maintenance")
    pubsub = r.pubsub()
    pubsub.subscribe(K.alerts_channel)
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"
    for i in range(3):
        add_window(r, "payments", 3000 + i, requests=500)
    add_window(r, "users", 3000, requests=500)
    registry.save(r, "users", json.dumps({"limit": 200}), {"windows": 100})
    for i in range(1, 3):
        add_window(r, "users", 3000 + i, requests=500)
    drain(make_detector(r))
    logged = {a["service"]: a for a in alerts(r)}
    assert logged["payments"]["silenced"] is True and "silenced" not in logged["users"]
    assert incidents.get(r, logged["payments"]["incident_id"]).is_open
    published = []
    while (msg := pubsub.get_message(timeout=0.5)) is not None:
        published.append(json.loads(msg["data"]))
    assert [a["service"] for a in published] == ["users"]
    pubsub.close()


def test_silence_added_while_running_mutes_the_next_window(r: redis.Redis) -> None:
    registry.save(r, "payments", json.dumps({"limit": 200}), {"windows": 100})
    det = make_detector(r, confirmation=Confirmation(k=1, n=1, cooldown=1))
    add_window(r, "payments", 3500, requests=100)
    assert drain(det, 1) == 1  # the detector has read leases, models and silences (none yet)
    incidents.add_silence(r, "payments", start=0, end=10**10, reason="maintenance")
    add_window(r, "payments", 3501, requests=500)
    assert drain(det, 1) == 1  # well inside the detector's refresh interval
    assert [a.get("silenced") for a in alerts(r)] == [True]


def test_retired_service_raises_nothing(r: redis.Redis) -> None:
    registry.save(r, "svc-9", json.dumps({"limit": 200}), {"windows": 100})
    for i in range(5):
        add_window(r, "svc-9", 4000 + i, requests=5000)
    r.sadd(K.retired, "svc-9")
    det = make_detector(r)
    drain(det)
    assert alerts(r) == [] and det.step().services == []


def test_business_rule_alerts_at_once_and_resolves(r: redis.Redis) -> None:
    ranges = json.dumps({"checkout_value": [40, 60]})
    add_window(r, "business", 500, kpis=json.dumps({"checkout_value": 50}), kpi_level=1.0)
    add_window(r, "business", 501, kpis=json.dumps({"checkout_value": 15}), kpi_level=0.3,
               kpi_out_of_range=12, kpi_ranges=ranges)
    add_window(r, "business", 502, kpis=json.dumps({"checkout_value": 51}), kpi_level=1.02)
    drain(make_detector(r))
    got = alerts(r)
    assert [a["kind"] for a in got] == ["rule", "resolved"]
    rule = got[0]
    assert rule["window"] == 501 and rule["severity"] == "critical"  # 25 below 40 = 2.5 half-widths
    assert rule["reasons"][0]["feature"] == "kpi:checkout_value"


def test_a_count_kpis_rule_reason_gives_its_expected_range_in_whole_counts(r: redis.Redis) -> None:
    """A new user read "orders_per_window 0 outside expected 1.284–40.75": the demo's orders range (a
    Poisson count's) has fractional bounds, and a count is whole. Ingested through the gears library and
    read by the detector: a count reads as the whole counts its range holds (2–40: exact for whole values),
    an amount as it is."""
    from anomalydesk.config import SketchSettings
    from anomalydesk.events import BusinessMetric, Metric
    from anomalydesk.store import admin
    from anomalydesk.store.sink import ingest

    admin.setup(r, SketchSettings(window_seconds=W))
    t0 = 1_790_000_000.0
    ingest(r, [BusinessMetric("orders", "orders_per_window", 0.0, 1.284, 40.75, t0 + 2.5),
               BusinessMetric("payments", "payment_amount", 3.25, 5.5, 250.75, t0 + 2.5),
               Metric("orders", "GET:/a", 200, 1.0, t0 + W + 1), Metric("payments", "GET:/a", 200, 1.0, t0 + W + 1)],
           replay=True)  # fmt: skip
    drain(make_detector(r))
    texts = {a["service"]: a["reasons"][0]["text"] for a in alerts(r) if a["kind"] == "rule"}
    assert texts == {"orders": "orders_per_window 0 outside expected 2–40",
                     "payments": "payment_amount 3.25 outside expected 5.5–250.8"}


def test_two_detectors_split_services_and_app_detector_respects_lease(r: redis.Redis) -> None:
    for service in ("a", "b", "c"):
        registry.save(r, service, json.dumps({"limit": 200}), {"windows": 100})
        for i in range(3):
            add_window(r, service, 5000 + i, requests=500)
    one, two = make_detector(r, name="one"), make_detector(r, name="two")
    app = make_detector(r, name="app", respect_lease=True)
    assert one.step().services == ["a", "b", "c"]
    assert two.step().services == []  # all taken; it waits for a lease to expire
    assert app.step().active is False
    drain(one)
    assert sorted(a["service"] for a in alerts(r)) == ["a", "b", "c"]
    one.release()
    assert app.step().active is False  # "two" still holds the lease
    two.release()
    assert app.step().active is True and app.step().services == ["a", "b", "c"]


def test_operator_action_between_windows_is_not_overwritten(r: redis.Redis) -> None:
    registry.save(r, "payments", json.dumps({"limit": 200}), {"windows": 100})
    det = make_detector(r)
    for i in range(3):
        add_window(r, "payments", 6000 + i, requests=500)
    drain(det)
    (inc,) = incidents.list_incidents(r, open_only=True)
    incidents.ack(r, inc.id, who="alice")
    add_window(r, "payments", 6003, requests=2000)
    drain(det)
    after = incidents.get(r, inc.id)
    assert after.acked is not None and after.acked.by == "alice" and after.severity == "critical"


def test_tampered_model_is_not_used(r: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    registry.save(r, "payments", json.dumps({"nolimit": 1}), {"windows": 100})
    for i in range(3):
        add_window(r, "payments", 7000 + i, requests=5000)
    drain(make_detector(r))
    assert alerts(r) == []
    assert "refused" in caplog.text


def test_quick_end_to_end_demo_fault_becomes_an_incident_with_the_right_reason(r: redis.Redis) -> None:
    """Half an hour of demo history, a trained model, then a 5xx fault: one incident naming rate_5xx."""
    import math
    import time

    from anomalydesk.detect.service_state import decode_model, score_window
    from anomalydesk.detect.train import TrainParams
    from anomalydesk.detect.training_run import train_service
    from anomalydesk.ingest.demo import run_fast
    from anomalydesk.ingest.demo_model import parse_inject

    t0 = math.floor(time.time() / W) * W - 86400
    run_fast(r, duration=1800, services=2, seed=21, end=t0)
    outcome = train_service(r, "users", params=TrainParams(trees=30))
    assert outcome.version == 1, outcome.skipped
    det = Detector(r, scorer=score_window, decode=decode_model, seal=False, block_ms=10)
    drain(det)
    run_fast(r, duration=600, services=2, seed=22, end=t0 + 600, injects=[parse_inject("errors@300+60:users")])
    drain(det)
    fault_window = (t0 + 300) // W
    opened = [a for a in alerts(r) if a["kind"] == "new" and a["service"] == "users" and a["window"] >= fault_window]
    assert opened and 0 <= opened[0]["window"] - fault_window <= 2
    assert opened[0]["reasons"][0]["feature"] == "rate_5xx"
    assert opened[0]["model_version"] == 1
    from anomalydesk.detect import window_scores

    stored = {s.window: s for s in window_scores.read(r, "users")}  # the forest's score, as its alert has it
    assert stored[opened[0]["window"]].score == opened[0]["score"] and stored[opened[0]["window"]].anomalous


def test_rare_errors_of_a_healthy_service_read_usually_0_not_0_normal(r: redis.Redis) -> None:
    """A healthy service has a 5xx in one window of 8: its training median and IQR are 0, and an error
    burst read "5xx ratio 20% vs 0% normal" — as if it never had an error. Trained from the stream, stored
    in the registry, loaded and scored by the detector, the alert now says how often it was not 0."""
    from anomalydesk.detect.service_state import decode_model, score_window
    from anomalydesk.detect.train import TrainParams
    from anomalydesk.detect.training_run import train_service

    rng = np.random.default_rng(3)
    first = 1_000_000
    for i in range(400):
        healthy_window(r, "payments", first + i, rng, rate_5xx=0.004 if i % 8 == 0 else 0.0)
    outcome = train_service(r, "payments", params=TrainParams(trees=30))
    assert outcome.version == 1, outcome.skipped
    det = Detector(r, scorer=score_window, decode=decode_model, seal=False, block_ms=10)
    drain(det)
    for i in range(400, 410):
        healthy_window(r, "payments", first + i, rng, rate_5xx=0.2 if i >= 406 else 0.0)
    drain(det)
    opened = [a for a in alerts(r) if a["kind"] == "new"]
    assert opened, alerts(r)
    top = opened[0]["reasons"][0]
    assert top["feature"] == "rate_5xx" and top["expected"] == 0.0, top
    assert top["text"] == "5xx ratio 20% vs usually 0% (non-zero in 12.5% of training windows)", top


def test_a_connection_lost_before_the_commit_retries_that_window_before_newer_ones(r: redis.Redis) -> None:
    registry.save(r, "payments", json.dumps({"limit": 200}), {"windows": 100})
    flow = [100, 300, 300, 900, 100, 100, 100]
    for i, value in enumerate(flow):
        add_window(r, "payments", 3000 + i, requests=value)
    det = make_detector(r, confirmation=Confirmation(k=2, n=3, cooldown=2))
    script, calls = det._committer._script, []

    def lost_once(**kw: object) -> object:
        calls.append(kw)
        if len(calls) == 3:  # the third window: the connection drops before the script ran
            raise redis.ConnectionError("connection lost (test)")
        return script(**kw)

    det._committer._script = lost_once  # type: ignore[assignment]
    with pytest.raises(redis.ConnectionError):
        det.step()
    assert json.loads(r.hget(K.detector_states, "payments"))["last_window"] == 3001
    assert drain(det) == len(flow) - 2
    assert json.loads(r.hget(K.detector_states, "payments"))["last_window"] == 3000 + len(flow) - 1
    assert [a["kind"] for a in alerts(r)] == ["new", "escalated", "resolved"]  # window 3002 was not skipped
    assert r.xpending(K.fingerprints("payments"), "detectors")["pending"] == 0


@pytest.mark.parametrize("recorded", [True, False], ids=["state-with-length", "state-from-before"])
def test_after_a_window_length_change_windows_are_judged_again_and_old_incidents_end(r: redis.Redis,
                                                                                     recorded: bool) -> None:
    """`setup --window 10 --force` after 5-s windows: the new windows' numbers are about half the old
    ones, and the detector took every one for a window handled before (incidents stayed open for good,
    no new one ever opened, restarting it did not help). The open incident ends at the first window of
    the new length, saying why; windows of the new length are judged, and repeats of them are still
    recognised. `state-from-before`: a state written before the length was recorded in it."""
    registry.save(r, "payments", json.dumps({"limit": 200}), {"windows": 100})  # scores any length
    det = make_detector(r, confirmation=Confirmation(k=2, n=3, cooldown=2))
    base = 359_000_000
    for i in range(3):
        add_window(r, "payments", base + i, requests=500, ws=5)
    assert drain(det) == 3
    old = alerts(r)
    assert [a["kind"] for a in old] == ["new"] and incidents.get(r, old[0]["incident_id"]).is_open
    stored = json.loads(r.hget(K.detector_states, "payments"))
    assert stored["window_s"] == 5 and stored["last_window"] == base + 2
    if not recorded:
        del stored["window_s"]
        r.hset(K.detector_states, "payments", json.dumps(stored))
    first = -(-(base + 3) * 5 // 10)  # the first 10-s window begins at or after the last 5-s one ended
    for i, value in enumerate([100, 100, 100, 500, 500, 500]):
        window = first + i
        fields: dict[str, object] = {name: 0 for name in fpmod.FEATURE_NAMES}
        fields.update(requests=value, window=window, start=window * 10, ws=10, schema=fpmod.SCHEMA_VERSION,
                      no_data=0, kpis="")
        r.xadd(K.fingerprints("payments"), fields, id=f"{window * 10 * 1000}-1")
    assert drain(det) == 6
    got = alerts(r)[len(old):]
    assert [a["kind"] for a in got] == ["resolved", "new"], got
    ended, opened = got
    assert ended["incident_id"] == old[0]["incident_id"] and ended["window"] == first
    assert "window length changed" in ended["message"] and "to 10 s" in ended["message"], ended["message"]
    assert ("from 5 s" in ended["message"]) is recorded
    assert not incidents.get(r, old[0]["incident_id"]).is_open
    new = incidents.get(r, opened["incident_id"])
    assert new.is_open and (new.first_window, opened["window"]) == (first + 3, first + 4)
    state_now = json.loads(r.hget(K.detector_states, "payments"))
    assert state_now["window_s"] == 10 and state_now["last_window"] == first + 5
    # a repeat at the new length is still recognised: nothing is written twice
    r.xgroup_setid(K.fingerprints("payments"), "detectors", id="0")
    det.release()
    again = make_detector(r, confirmation=Confirmation(k=2, n=3, cooldown=2))
    drain(again, 5)
    assert alerts(r)[len(old):] == got


def test_every_alert_written_is_in_the_log(r: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    """`detect.log` stayed empty while the detector opened incidents, so the `diagnose` zip said nothing
    of them: each alert written is logged at INFO (the log file's default level) with its message."""
    import logging

    registry.save(r, "payments", json.dumps({"limit": 200}), {"windows": 100})
    for i in range(3):
        add_window(r, "payments", 5000 + i, requests=500)
    with caplog.at_level(logging.INFO, logger="anomalydesk.detect.detector"):
        assert drain(make_detector(r)) == 3
    [new] = alerts(r)
    lines = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.INFO]
    assert any(new["id"] in line and "warning new alert" in line and "score 80" in line
               and new["message"] in line for line in lines), lines


def test_a_false_positive_is_not_raised_again_by_the_same_run_of_windows(r: redis.Redis) -> None:
    """An operator marked an incident a false positive while its fault went on, and the next windows
    opened a new critical incident at once (a 60-s fault gave three notifications). The run of
    anomalous windows it was part of opens nothing more; after `cooldown` normal windows a new run does.
    A resolve is different: the operator says it is fixed, and a continuing anomaly opens a new one."""
    registry.save(r, "payments", json.dumps({"limit": 200}), {"windows": 100})
    det = make_detector(r, confirmation=Confirmation(k=2, n=3, cooldown=2))
    for i in range(3):
        add_window(r, "payments", 6000 + i, requests=900)
    drain(det)
    [first] = alerts(r)
    incidents.false_positive(r, first["incident_id"], "erin")
    for i, value in enumerate([900, 900, 900, 100, 900, 900, 100, 100, 900, 900]):  # the run goes on
        add_window(r, "payments", 6003 + i, requests=value)
    drain(det, 12)
    new = [a for a in alerts(r) if a["kind"] == "new"]
    # 6003–6005 and 6007–6008 continue the dismissed run (one normal window in between is no end);
    # 6009–6010 are two normal windows (cooldown): the run at 6011–6012 is a new one and opens
    assert [a["window"] for a in new] == [first["window"], 6012], [(a["kind"], a["window"]) for a in alerts(r)]
    incidents.resolve(r, new[-1]["incident_id"], "erin")
    for i in range(3):
        add_window(r, "payments", 6013 + i, requests=900)
    drain(det)
    assert [a["window"] for a in alerts(r) if a["kind"] == "new"][-1] == 6014  # after a resolve: at once


def _add(r: redis.Redis, service: str, window: int, length: int, requests: float) -> None:
    fields: dict[str, object] = {name: 0 for name in fpmod.FEATURE_NAMES}
    fields.update(requests=requests, window=window, start=window * length, ws=length, schema=fpmod.SCHEMA_VERSION,
                  no_data=0, kpis="")
    r.sadd(K.services, service)
    r.xadd(K.fingerprints(service), fields, id=f"{window * length * 1000}-1")


def test_a_change_to_a_shorter_window_length_ends_the_incident_and_judges_the_new_windows(r: redis.Redis) -> None:
    """10 s → 5 s: the new numbers are about twice the old ones, so no window was refused, but the open
    incident went on in the new numbering, its tracker mixing both. The first 5-s window ends it."""
    registry.save(r, "payments", json.dumps({"limit": 200}), {"windows": 100})
    det = make_detector(r, confirmation=Confirmation(k=2, n=3, cooldown=2))
    base = 179_500_000
    for i in range(3):
        _add(r, "payments", base + i, 10, 500)
    drain(det)
    first = (base + 3) * 2
    for i, value in enumerate([100, 100, 100, 500, 500]):
        _add(r, "payments", first + i, 5, value)
    drain(det)
    kinds = [(a["kind"], a["window"]) for a in alerts(r)]
    assert kinds == [("new", base + 1), ("resolved", first), ("new", first + 4)], kinds
    assert "from 10 s to 5 s" in alerts(r)[1]["message"]


def test_a_state_from_before_is_not_taken_for_a_change_by_windows_read_again_from_far_back(r: redis.Redis) -> None:
    """A state recorded before window lengths and starts were (only `last_window`): a window read again
    from more than a day back (a new consumer group catches up 720 windows, more than a day at 2 min)
    is a repeat, not a new length: acknowledged, nothing written, no incident closed."""
    registry.save(r, "payments", json.dumps({"limit": 200}), {"windows": 100})
    now = int(time.time())
    last = now // 5
    r.hset(K.detector_states, "payments", json.dumps({"last_window": last}))
    _add(r, "payments", last - 20_000, 5, 900)  # 28 h before the last window handled
    assert drain(make_detector(r)) == 1
    assert alerts(r) == [] and json.loads(r.hget(K.detector_states, "payments")) == {"last_window": last}
