"""A gap is one thing: windows in which no service sent anything (real redis-server, offline replay).

Three demo services, trained; then two windows without any traffic on all of them, then traffic
again with a latency fault on orders. Before `detect.system_gap`, the empty windows opened a
"requests 0" incident on every service, kept the zeros in the scoring context and hid the fault.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import redis

from anomalydesk.config import SketchSettings
from anomalydesk.detect.detector import Detector
from anomalydesk.detect.incident_flow import Verdict, advance
from anomalydesk.detect.incident_model import severity_of
from anomalydesk.detect.system_gap import SYSTEM, gap_plan
from anomalydesk.detect.training_run import train_service
from anomalydesk.fingerprint import FEATURE_NAMES, Fingerprint
from anomalydesk.ingest.demo import run_fast
from anomalydesk.ingest.demo_model import parse_inject
from anomalydesk.store import admin
from anomalydesk.store.keys import Keys

K = Keys()
W = 5
SERVICES = ["gateway", "users", "orders"]
LATENCY = {"latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "latency_mean_ms"}


def drain(det: Detector) -> None:
    while det.step().processed > 0:
        pass


def alerts(r: redis.Redis) -> list[dict]:
    return [json.loads(f[b"alert"]) for _, f in r.xrange(K.alerts_log)]


@pytest.fixture()
def trained(r: redis.Redis) -> float:
    admin.setup(r, SketchSettings(window_seconds=W))
    end = math.floor(time.time() / 86400) * 86400 - 2 * 86400 + 12 * 3600  # noon UTC, two days back
    run_fast(r, duration=3 * 3600, rate=120, services=3, seed=21, end=end)
    for service in SERVICES:
        assert train_service(r, service).version is not None
    return float(end)


def test_two_empty_windows_on_every_service_are_one_system_alert_and_the_next_fault_is_named(
        r: redis.Redis, trained: float) -> None:  # fmt: skip
    det = Detector(r, seal=False, block_ms=10)
    drain(det)  # joins the groups at the end of the history
    gap_start = trained
    resume = gap_start + 2 * W  # windows gap_start/W and +1 stay empty on every service
    fault = parse_inject("latency@30+60:orders")
    run_fast(r, duration=900, rate=120, services=3, seed=22, end=resume + 900,
             injects=[fault])  # the fault starts 30 s into the run  # fmt: skip
    drain(det)
    logged = alerts(r)
    system = [a for a in logged if a["service"] == SYSTEM]
    assert [a["kind"] for a in system] == ["new", "resolved"], system
    assert system[0]["window"] == int(gap_start // W)
    assert system[1]["window"] == int(resume // W)  # traffic is back
    record = json.loads(r.hget(K.incidents, system[0]["incident_id"]))
    assert record["windows"] == 2 and record["status"] == "resolved"
    # no service opened an incident for the empty windows
    opened = [a for a in logged if a["kind"] == "new" and a["service"] != SYSTEM]
    fault_window = int((resume + 30) // W)
    seen = [(a["service"], a["window"], a["reasons"][:1]) for a in opened]
    assert all(a["service"] == "orders" for a in opened), seen
    orders = [a for a in opened if fault_window <= a["window"] <= fault_window + 12]
    assert orders and orders[0]["window"] - fault_window <= 2, opened
    assert orders[0]["reasons"][0]["feature"] in LATENCY, orders[0]["reasons"]
    states = {s: json.loads(r.hget(K.detector_states, s)) for s in SERVICES}
    assert all(st["gap_windows"] == [int(gap_start // W), int(gap_start // W) + 1] for st in states.values())


def test_one_service_silent_alone_is_its_own_incident_not_a_gap(r: redis.Redis, trained: float) -> None:
    det = Detector(r, seal=False, block_ms=10)
    drain(det)
    silent = parse_inject("drop@0+600:gateway")  # 80 % fewer is not silent: nothing system-wide here
    run_fast(r, duration=600, rate=120, services=3, seed=23, end=trained + 600, injects=[silent])
    drain(det)
    assert not [a for a in alerts(r) if a["service"] == SYSTEM]


def _fp(service: str, window: int, requests: float, window_s: int = 5) -> Fingerprint:
    vector = np.zeros(len(FEATURE_NAMES))
    vector[FEATURE_NAMES.index("requests")] = requests
    return Fingerprint(service, window, window * float(window_s), vector, silent=requests == 0,
                       window_seconds=window_s)


def test_gap_plan_opens_once_extends_per_window_and_resolves_on_traffic() -> None:
    writes, sent = gap_plan(None, _fp("a", 10, 0), True, 3, False)
    (record, rev), = writes
    assert rev == 0 and record.rev == 1 and record.id == f"{SYSTEM}:g10" and sent[0].kind == "new"
    # not scored: its score is its severity's cut-off (it was 100, past critical, beside "warning")
    assert record.score == sent[0].score == 70.0 and severity_of(record.score) == record.severity == "warning"
    writes, sent = gap_plan(record, _fp("b", 10, 0), True, 3, False)  # another service, same window
    assert writes == [] and sent == []
    writes, sent = gap_plan(record, _fp("a", 11, 0), True, 3, False)
    (record, rev), = writes
    assert rev == 1 and record.windows == 2 and sent == []
    assert gap_plan(record, _fp("c", 9, 40), False, 3, False) == ([], [])  # a lagging service's older window
    writes, sent = gap_plan(record, _fp("c", 12, 40), False, 3, False)
    assert writes[0][0].status == "resolved" and sent[0].kind == "resolved"
    # a service whose gap windows are handled after traffic returned elsewhere: covered, nothing new
    assert gap_plan(writes[0][0], _fp("b", 11, 0), True, 3, False) == ([], [])


def test_a_new_top_reason_for_two_windows_inside_an_incident_is_an_escalation() -> None:
    def verdict(feature: str, score: float = 80.0) -> Verdict:
        return Verdict(score, "warning", [{"feature": feature, "text": f"{feature} off", "actual": 1, "expected": 0}],
                       True)  # fmt: skip

    state: dict = {}
    incident = None
    kinds = []
    leads = ["rate_5xx"] * 3 + ["latency_p95_ms"] * 3 + ["latency_p50_ms"] * 2 + ["rate_5xx"]  # p50: latency still
    for window, feature in enumerate(leads, start=100):
        plan = advance(state, _fp("users", window, 50), verdict(feature), incident=incident, rule_incident=None,
                       model_version=1, silenced=False, now=0.0, window_seconds=5.0)  # fmt: skip
        state = plan.state
        if plan.incidents:
            incident = plan.incidents[-1][0]
        kinds += [(window, a.kind, a.reasons[0]["feature"]) for a in plan.alerts]
    assert kinds == [(101, "new", "rate_5xx"), (104, "escalated", "latency_p95_ms")]
    assert incident is not None and incident.named == ("latency", "rate_5xx")


def test_traffic_in_windows_of_a_new_length_ends_a_gap_counted_in_old_windows() -> None:
    """A gap at 5-s windows (numbers about 359 M), then `setup --window 10 --force`: traffic in a 10-s
    window (number about 180 M, later in time) ends the gap. Compared by number it never did: the gap
    stayed open for good. A 10-s window that began before the gap's last 5-s one is no return."""
    gap = 359_261_773
    writes, _ = gap_plan(None, _fp("a", gap, 0, window_s=5), True, 3, False)
    (record, _rev), = writes
    before = (gap * 5 - 10) // 10  # a 10-s window that started before the gap's last window
    assert gap_plan(record, _fp("b", before, 40, window_s=10), False, 3, False) == ([], [])
    after = -(-(gap + 1) * 5 // 10)
    writes, sent = gap_plan(record, _fp("b", after, 40, window_s=10), False, 3, False)
    assert writes[0][0].status == "resolved" and sent[0].kind == "resolved", (writes, sent)
    # shorter: a gap at 10 s, then silent 5-s windows (numbers about twice the gap's) do not grow it in
    # their numbering, which would put its end far in the future and keep it open for good
    writes, _ = gap_plan(None, _fp("a", gap // 2, 0, window_s=10), True, 3, False)
    (longer, _rev), = writes
    silent = (gap // 2 + 1) * 2
    assert gap_plan(longer, _fp("a", silent, 0, window_s=5), True, 3, False) == ([], [])
    writes, sent = gap_plan(longer, _fp("b", silent + 1, 40, window_s=5), False, 3, False)
    assert writes[0][0].status == "resolved" and sent[0].kind == "resolved", (writes, sent)


def test_a_gap_ended_by_business_values_says_so() -> None:
    """The pseudo-service `business` (KPIs sent without a service) ended a gap with "traffic is back
    (business sent 0 requests)", as if nothing had come: the message names the values."""
    writes, _ = gap_plan(None, _fp("a", 10, 0), True, 3, False)
    (record, _rev), = writes
    kpis = Fingerprint("business", 11, 55.0, np.zeros(len(FEATURE_NAMES)), silent=False, kpis={"orders": 5.0})
    _, sent = gap_plan(record, kpis, False, 3, False)
    assert sent[0].kind == "resolved" and "business sent values of orders" in sent[0].message, sent
    _, sent = gap_plan(record, _fp("b", 11, 40), False, 3, False)
    assert "b sent 40 requests" in sent[0].message
