"""Traffic stopped on purpose (`store.traffic_stops`) against a real redis-server and a real detector.

A tester stopped the demo traffic from the app and, a few windows later, got the notification
"(system) no service sent anything (3 services silent)": the detector took the deliberate stop for a
gap in the data. A demo that ends (Stop, its `--duration`, `demo --fast` ending at the present) now
records it, and its silence alarms nothing; real traffic stopping still opens the gap incident.
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
from anomalydesk.detect.system_gap import SYSTEM
from anomalydesk.detect.training_run import train_service
from anomalydesk.ingest.demo import DemoTraffic, run_fast
from anomalydesk.store import admin, fingerprints, traffic_stops
from anomalydesk.store.ingest_buffer import IngestSink
from anomalydesk.store.keys import Keys
from anomalydesk.store.sealing import seal_all

K = Keys()
SERVICES = ["gateway", "users", "orders"]


def drain(det: Detector) -> None:
    while det.step().processed > 0:
        pass


def system_alerts(r: redis.Redis) -> list[dict]:
    alerts = [json.loads(f[b"alert"]) for _, f in r.xrange(K.alerts_log)]
    return [a for a in alerts if a["service"] == SYSTEM]


def wait_silent_windows(r: redis.Redis, services: list[str], n: int, timeout: float = 20.0) -> None:
    """Seal (as the app's ticker does) until each service's last `n` windows are sealed silent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seal_all(r)
        if all(len(fps := fingerprints.latest(r, s, n)) == n and all(fp.silent for fp in fps) for s in services):
            return
        time.sleep(0.1)
    raise AssertionError(f"{services}: not {n} silent windows in a row after {timeout} s")


def send_live(r: redis.Redis, services: list[str], seconds: float) -> float:
    """Real (non-demo) live traffic on `services` for `seconds`; when it ended (server clock)."""
    sink = IngestSink(r, replay=False)
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        for service in services:
            sink.add_arrays(service, ["GET:/a", "POST:/b"], np.array([0, 1, 0, 1]), np.array([200] * 4),
                            np.array([10.0, 20.0, 12.0, 25.0]), None)  # fmt: skip
        sink.flush()
        time.sleep(0.05)
    sink.close()
    seconds_now, micros = r.time()
    return seconds_now + micros / 1e6


def test_demo_traffic_stopped_raises_no_gap_and_real_traffic_stopping_on_the_same_services_does(
        r: redis.Redis) -> None:  # fmt: skip
    admin.setup(r, SketchSettings(window_seconds=1))
    det = Detector(r, seal=False, block_ms=10)
    demo = DemoTraffic(r, rate=600, services=3, seed=1).start()
    try:
        wait_until = time.monotonic() + 2.5
        while time.monotonic() < wait_until and demo.running:
            drain(det)  # the detector joins the streams while the traffic runs
            time.sleep(0.1)
    finally:
        demo.stop()  # the Demo panel's Stop
    assert demo.error is None
    stops = traffic_stops.read(r)
    assert set(stops) == set(SERVICES) and all(s.resumed is None for s in stops.values())
    ended = stops["gateway"].since
    assert ended == math.ceil(ended)  # the stop filled its last window: the stop begins at its end
    wait_silent_windows(r, SERVICES, 3)
    drain(det)
    assert system_alerts(r) == []  # before: "no service sent anything (3 services silent)"
    # nothing was scored or counted as context: the windows are the service's own gap windows
    state = json.loads(r.hget(K.detector_states, "orders"))
    assert len(state["gap_windows"]) >= 3

    # real traffic on the same services: the stop is over, and real traffic stopping is a gap again
    back = send_live(r, SERVICES, 2.5)
    wait_silent_windows(r, SERVICES, 3)
    drain(det)
    assert all(stop.resumed is not None and ended <= stop.resumed < back for stop in traffic_stops.read(r).values())
    opened = [a for a in system_alerts(r) if a["kind"] == "new"]
    assert len(opened) == 1 and opened[0]["window"] >= math.floor(back) - 1, opened
    assert "no service sent anything (3 services silent)" in opened[0]["reasons"][0]["text"]


def test_a_demo_run_to_its_duration_and_a_fast_run_to_the_present_record_their_end(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=1))
    summary = run_fast(r, duration=60, rate=200, services=2, seed=3)  # ends at the present
    assert {s: stop.since for s, stop in traffic_stops.read(r).items()} == dict.fromkeys(["gateway", "users"],
                                                                                          summary["end"])
    demo = DemoTraffic(r, rate=400, services=2, seed=3, duration=1.2, since=summary["end"]).start()
    assert demo.wait(30) and demo.error is None
    stops = traffic_stops.read(r)  # the live run resumed the fast run's stop, then recorded its own
    assert all(stop.since == demo.started_at + 1.2 and stop.resumed is None for stop in stops.values()), stops
    # a replay of a past period (explicit end) is no stop: its end is not the present
    run_fast(r, duration=60, rate=200, services=3, seed=4, end=summary["end"] - 3600)
    assert "orders" not in traffic_stops.read(r)


def test_next_to_a_real_service_the_stopped_demo_services_are_not_scored_and_make_no_gap(r: redis.Redis) -> None:
    """Demo services stopped on purpose beside a real one: their zeros were scored ("requests 0"
    incidents: a service silent alone is its own incident). When the real service stops as well, that
    is its own outage, as when it was the only service (the stopped ones are no witnesses of a gap)."""
    admin.setup(r, SketchSettings(window_seconds=5))
    end = math.floor(time.time() / 86400) * 86400 - 2 * 86400 + 12 * 3600  # noon UTC, two days back
    run_fast(r, duration=3 * 3600, rate=120, services=3, seed=21, end=end)
    for service in SERVICES:
        assert train_service(r, service).version is not None
    det = Detector(r, seal=False, block_ms=10)
    drain(det)  # joins the groups at the end of the history
    traffic_stops.record(r, ["users", "orders"], end)  # the demo fed these two and was stopped at `end`
    run_fast(r, duration=600, rate=40, services=1, seed=22, end=end + 600)  # gateway (real) goes on
    drain(det)
    stopped = [fp for s in ("users", "orders") for fp in fingerprints.read(r, s, end, end + 600)]
    assert len(stopped) >= 2 * 100 and all(fp.silent for fp in stopped)  # their windows were sealed silent
    def alerted() -> set[str]:  # (gateway's own are its business: it alone sends, at another rate)
        return {a["service"] for _, f in r.xrange(K.alerts_log) if (a := json.loads(f[b"alert"]))} - {"gateway"}

    assert alerted() == set()  # before: users and orders opened "requests 0" incidents
    assert all(not json.loads(r.hget(K.detector_states, s)).get("incident") for s in ("users", "orders"))
    seal_all(r, now=end + 600 + 120)  # the real service stops too, not on purpose: its own outage
    drain(det)
    assert alerted() == set()  # no gap: the stopped two are no witnesses of one


def test_retiring_a_service_forgets_its_stop(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=5))
    r.sadd(K.services, "gateway", "users")
    traffic_stops.record(r, ["gateway", "users"], 1_000.0)
    assert admin.retire_service(r, "gateway")
    assert set(traffic_stops.read(r)) == {"users"}  # one small entry per service, not kept for ever


@pytest.mark.parametrize("raw", ["5", "[1, 2]", '"demo"', "true", "null", "not json", '{"since": "5"}',
                                 '{"by": "demo"}', '{"since": 5, "resumed": "x"}', '{"since": 5, "cut": "x"}',
                                 b"\xff\xfe"])  # fmt: skip
def test_a_record_that_is_not_a_stop_is_no_stop_and_stops_nothing(r: redis.Redis, raw: str | bytes) -> None:
    """A malformed record (written by hand, or by another version) must not stall the detector (it read
    the hash for every window: an AttributeError failed every window of every service) nor the demo's
    start (the resume script raised on it)."""
    r.hset(K.traffic_stops, "gateway", raw)
    traffic_stops.record(r, ["users"], 10.0)
    assert set(traffic_stops.read(r)) == {"users"}
    assert traffic_stops.resume(r, ["gateway", "users"], 20.0) == 1  # users' stop ended; gateway's left
    assert r.hget(K.traffic_stops, "gateway") == (raw if isinstance(raw, bytes) else raw.encode())


def test_the_last_events_of_a_stopped_demo_sent_after_the_boundary_move_the_stop_behind_them(
        r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The demo records its stop at the end of the current window, then sends the rest of that window as
    live events, whose window is the server's when they arrive. Held up past the boundary (the GIL in a
    busy app; here a record that returns only then), they landed in the stop's first window: the
    detector took that for traffic coming back, and the silence after it was a gap."""
    from anomalydesk.ingest import demo_live

    admin.setup(r, SketchSettings(window_seconds=1))
    det = Detector(r, seal=False, block_ms=10)
    real_record = traffic_stops.record

    def late_record(client: redis.Redis, services: list[str], since: float, **kw: object) -> None:
        real_record(client, services, since, **kw)
        while True:  # the thread is held up until the server's clock passed the stop's start
            seconds, micros = client.time()
            if seconds + micros / 1e6 > since + 0.05:
                return
            time.sleep(0.005)

    monkeypatch.setattr(demo_live.traffic_stops, "record", late_record)
    demo = DemoTraffic(r, rate=600, services=3, seed=1).start()
    try:
        until = time.monotonic() + 2.5
        while time.monotonic() < until:
            drain(det)
            time.sleep(0.1)
    finally:
        demo.stop()
    assert demo.error is None
    stop = traffic_stops.read(r)["gateway"]
    wait_silent_windows(r, SERVICES, 3)
    drain(det)
    for service in SERVICES:
        first = fingerprints.read(r, service, stop.since, stop.since + 0.5)
        assert [fp.silent for fp in first] == [True], service  # the events are all before the stop
    assert traffic_stops.read(r)["gateway"].resumed is None
    assert system_alerts(r) == []


@pytest.mark.parametrize("before_ms", [2, 15, 60])
def test_a_demo_stopped_just_before_a_window_boundary_leaves_the_stop_silent(r: redis.Redis, before_ms: int) -> None:
    """Whenever Stop comes, the stop's first window holds none of the demo's events (they are all in the
    window before it, sent at once), so nothing ends the stop but traffic that really comes back."""
    admin.setup(r, SketchSettings(window_seconds=1))
    demo = DemoTraffic(r, rate=600, services=3, seed=1).start()
    time.sleep(1.5)
    seconds, micros = r.time()
    now = seconds + micros / 1e6
    target = math.ceil(now) + 1 - before_ms / 1000  # `before_ms` before a window boundary (server clock)
    time.sleep(max(0.0, target - now))
    demo.stop()
    assert demo.error is None
    stop = traffic_stops.read(r)["gateway"]
    wait_silent_windows(r, SERVICES, 2)
    for service in SERVICES:
        first = fingerprints.read(r, service, stop.since, stop.since + 0.5)
        assert [fp.silent for fp in first] == [True], (service, stop, first)


@pytest.mark.parametrize("moved", [False, True])
def test_the_window_a_demo_duration_ended_in_is_not_scored(r: redis.Redis, moved: bool) -> None:
    """`demo --duration` ends where the time runs out, mid-window: that window held part of its traffic
    and was scored as a drop on every service ("requests 94 vs 200 normal" at the end of every run). A
    window the stop begins inside is neither scored nor context; the whole windows before it are.
    `moved`: the last events landed late, in the next window, and the stop was moved behind them (`cut`
    keeps where the traffic ended): both part-filled windows are left out."""
    from anomalydesk.detect import window_scores

    admin.setup(r, SketchSettings(window_seconds=5))
    end = math.floor(time.time() / 86400) * 86400 - 2 * 86400 + 12 * 3600  # noon UTC, two days back
    run_fast(r, duration=3 * 3600, rate=120, services=1, seed=21, end=end)
    assert train_service(r, "gateway").version is not None
    det = Detector(r, seal=False, block_ms=10)
    drain(det)  # joins the group at the end of the history
    ended = end + 602.5  # half of the last window's traffic
    late = 5.0 if moved else 0.0  # how far the last events reach past the end
    run_fast(r, duration=602.5 + late, rate=120, services=1, seed=22, end=ended + late)
    if moved:
        traffic_stops.record(r, ["gateway"], end + 610, cut=ended)  # as `_stop_after_the_last_events` does
    else:
        traffic_stops.record(r, ["gateway"], ended)  # as the live demo does when its duration is over
    seal_all(r, now=ended + 30)
    drain(det)
    partial = fingerprints.read(r, "gateway", end + 595, end + 600)
    assert [(fp.start, fp.silent) for fp in partial] == [(end + 595, False), (end + 600, False)]
    scored = {s.start for s in window_scores.read(r, "gateway")}
    assert end + 595 in scored and end + 600 not in scored and end + 605 not in scored
    assert (end + 610 in scored) is False  # (silent, inside the stop)
    assert traffic_stops.read(r)["gateway"].resumed is None  # its traffic did not end the stop
    assert not json.loads(r.hget(K.detector_states, "gateway")).get("incident")
