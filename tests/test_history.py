"""History whenever it is sent, and training that refuses gaps (on a real redis-server).

A backfill after live traffic lands in the service's history (`Keys.history`); training reads it
with the live stream; silent windows of a gap are left out (docs/engine.md "History").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import redis

from anomalydesk import config
from anomalydesk.config import SketchSettings
from anomalydesk.contract import WINDOW_ENDPOINTS_CAP
from anomalydesk.detect.service_state import service_states
from anomalydesk.detect.training_run import gap_mask, train_service, training_data
from anomalydesk.events import parse_metric
from anomalydesk.fingerprint import FEATURE_INDEX
from anomalydesk.ingest.demo import DemoTraffic, run_fast
from anomalydesk.store import admin
from anomalydesk.store.keys import Keys
from anomalydesk.store.sink import ingest, seal_all

pytestmark = pytest.mark.backends  # runs once per sketch backend (conftest.BOTH_BACKENDS)

K = Keys()
SERVICES = ["gateway", "users", "orders", "payments", "inventory"]


def cli(url: str, *argv: str, timeout: float = 300) -> dict:
    done = subprocess.run([sys.executable, "-m", "anomalydesk.cli", "--redis", url, "--json", *argv],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ})  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def zero_share(r: redis.Redis, service: str) -> tuple[int, float]:
    data = training_data(r, service)
    return len(data), float(np.mean(data.X[:, FEATURE_INDEX["requests"]] == 0))


def test_backfill_after_live_traffic_lands_as_history_and_trains(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=1))
    live = DemoTraffic(r, rate=400, seed=2, duration=3).start()
    assert live.wait(30) and live.error is None
    time.sleep(1.1)  # the demo's last window closes
    seal_all(r)
    before = {service: r.xrange(K.fingerprints(service)) for service in SERVICES}
    history = run_fast(r, duration=3600, rate=400, seed=3)
    assert history["late"] == 0 and history["events_late"] == 0 and history["kpis_late"] == 0, history["summary"]
    assert history["kpis_accepted"] > 0 and history["events_accepted"] == history["events"]
    assert set(history["left_out"]) == set(SERVICES)  # each service's history stops where its stream begins
    assert "KPI reports" in history["summary"] and "refused" not in history["summary"]
    after = {s["name"]: s for s in admin.list_services(r)}
    for service in SERVICES:
        live = r.xrange(K.fingerprints(service))
        assert live[:len(before[service])] == before[service]  # the live stream got none of the history
        assert all(fields[b"silent"] == b"1" for _id, fields in live[len(before[service]):])  # time went on
        assert after[service]["history_fingerprints"] >= 3590
        stream_start = int(r.hget(K.state(service), "first"))
        last_history = r.xrevrange(K.history(service, 1), count=1)[0][1]
        assert int(last_history[b"window"]) < stream_start
        windows, zeros = zero_share(r, service)
        assert windows >= 3590 and zeros <= 0.01, (service, windows, zeros)
        outcome = train_service(r, service)
        assert outcome.version is not None and outcome.windows >= 3590, outcome.skipped
        assert outcome.metadata["history_windows"] >= 3590
    assert all(s["state"] == "ready" for s in service_states(r).values())


def test_backfill_while_live_traffic_runs_does_not_touch_the_live_windows(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=1))
    live = DemoTraffic(r, rate=300, seed=4, duration=6).start()
    time.sleep(1.5)
    history = run_fast(r, duration=1800, rate=300, seed=5)  # while the live demo goes on
    assert live.wait(30) and live.error is None
    time.sleep(1.1)
    seal_all(r)
    assert history["late"] == 0, history["summary"]
    status = admin.status(r)
    assert status["events_late"] == 0
    for service in SERVICES:
        live_windows = [int(f[b"requests"]) for _id, f in r.xrange(K.fingerprints(service))]
        # no live window got the backfill's traffic on top of its own (the demo is ~60/s per service)
        assert max(live_windows) < 40 * max(1, np.median(live_windows)), live_windows
    assert r.xlen(K.history("gateway", 1)) >= 1790


def test_history_is_written_in_time_order_and_an_older_backfill_is_late(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=1))
    now = time.time()
    ingest(r, [parse_metric({"service": "svc", "endpoint": "GET:/a", "status_code": 200, "response_time": 3})])
    seal_all(r, now=now + 2)  # the live stream has begun and is sealed
    def replay(t0: float, seconds: int) -> object:
        return ingest(r, [parse_metric({"service": "svc", "endpoint": "GET:/a", "status_code": 200,
                                        "response_time": 3, "timestamp": t0 + i}) for i in range(seconds)],
                      replay=True)  # fmt: skip
    first = replay(now - 100, 50)
    assert first.late == 0 and first.accepted == 50
    seal_all(r)  # history sealed up to its last window once it is complete
    older = replay(now - 200, 50)  # before what history holds already
    assert older.late == 50 and older.accepted == 0
    later = replay(now - 40, 20)  # after it: accepted
    assert later.late == 0 and later.accepted == 20
    assert admin.list_services(r)[0]["history_events"] == 70


def _event(endpoint: str, timestamp: float | None = None) -> object:
    fields = {"service": "svc", "endpoint": endpoint, "status_code": 200, "response_time": 3}
    return parse_metric(fields if timestamp is None else {**fields, "timestamp": timestamp})


@pytest.mark.parametrize("sealed_first", [False, True])
def test_endpoints_a_later_backfill_holds_are_not_new_in_the_open_live_window(r: redis.Redis,
                                                                              sealed_first: bool) -> None:
    """Live traffic first, then a backfill: the live window sighted every endpoint first, and after
    training the detector read "new endpoints 0 to N" on every service (the app's screenshot journey).
    An endpoint the history holds was not new in the open live window; one it does not hold still is."""
    admin.setup(r, SketchSettings(window_seconds=60))
    now = time.time()
    assert ingest(r, [_event(e) for e in ("GET:/a", "GET:/b", "GET:/c")]).accepted == 3  # one live window
    if sealed_first:  # its fingerprint is out before the history comes: it keeps its count
        seal_all(r, now=now + 180)
    history = ingest(r, [_event(e, now - 3600 + 60 * i) for i, e in enumerate(("GET:/a", "GET:/b", "GET:/d"))],
                     replay=True)  # fmt: skip
    assert history.accepted == 3 and history.late == 0
    seal_all(r, now=now + 180)
    live = [(int(f[b"requests"]), float(f[b"new_interactions"])) for _id, f in r.xrange(K.fingerprints("svc"))]
    # /c only: /a and /b were there an hour before (the windows after it are silent)
    assert live[0] == (3, 3.0 if sealed_first else 1.0) and all(n == 0 for n, _new in live[1:])
    past = [float(f[b"new_interactions"]) for _id, f in r.xrange(K.history("svc", 60))]
    assert sum(past) == 1.0  # /d, first seen in the history
    assert not r.keys(K.window_new("svc", "*"))  # the sighting sets go with their windows


def test_first_sightings_are_remembered_up_to_the_window_cap(r: redis.Redis) -> None:
    """The set of an open window's first sightings stops at WINDOW_ENDPOINTS_CAP (its memory is bounded
    like the window's endpoint counts): history clears those it holds, the rest stay new."""
    admin.setup(r, SketchSettings(window_seconds=60))
    now, names = time.time(), [f"GET:/e{i}" for i in range(WINDOW_ENDPOINTS_CAP + 88)]
    assert ingest(r, [_event(e) for e in names]).accepted == len(names)
    assert max(r.scard(k) for k in r.scan_iter(match=K.window_new("svc", "*"))) == WINDOW_ENDPOINTS_CAP
    assert ingest(r, [_event(e, now - 3600) for e in names], replay=True).late == 0
    seal_all(r, now=now + 180)
    first = r.xrange(K.fingerprints("svc"), count=1)[0][1]
    assert (int(first[b"requests"]), float(first[b"new_interactions"])) == (len(names), 88.0)


def test_a_history_that_is_mostly_a_gap_leaves_the_service_learning(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=1))
    t0 = 1_790_000_000.0
    events = [parse_metric({"service": "svc", "endpoint": "GET:/a", "status_code": 200, "response_time": 3,
                            "timestamp": t0 + i / 20}) for i in range(300 * 20)]  # 300 windows of traffic
    ingest(r, events, replay=True)
    seal_all(r, now=t0 + 300 + 700)  # then 700 windows without any event: a gap
    outcome = train_service(r, "svc")
    assert outcome.version is None
    assert "gap" in (outcome.skipped or "") and "700" in (outcome.skipped or ""), outcome.skipped
    assert outcome.metadata["gap_windows"] == 700
    state = service_states(r)["svc"]
    # learning, not "ready to train" (1,000 windows stored): until its windows with data outnumber the gap's
    assert state["state"] == "learning" and state["needed"] == 700 - outcome.windows > 0
    # the same traffic without the gap trains: the refusal is the gap's
    ingest(r, [parse_metric({"service": "svc2", "endpoint": "GET:/a", "status_code": 200, "response_time": 3,
                             "timestamp": e.timestamp}) for e in events], replay=True)  # fmt: skip
    seal_all(r, now=t0 + 301)
    assert train_service(r, "svc2").version is not None


def test_gap_mask_takes_long_silent_runs_only() -> None:
    windows = np.arange(20)
    silent = np.zeros(20, dtype=bool)
    silent[2:4] = True  # 2 s: zero traffic, kept
    silent[6:18] = True  # 12 windows of 5 s = 60 s: a gap
    assert gap_mask(windows, silent, 5).tolist() == [False] * 6 + [True] * 12 + [False] * 2
    assert not gap_mask(windows, silent, 1)[6:18].any()  # 12 s at W=1 is not a gap
    broken = windows.copy()
    broken[12:] += 5  # not consecutive windows: two runs of 6, neither long enough at W=5
    assert not gap_mask(broken, silent, 5).any()


@pytest.mark.slow
def test_cli_live_then_a_day_of_history_then_train(redis_url: str) -> None:
    """The issue's journey: `demo --rate 200 --duration 15`, `demo --fast --duration 86400`, `train`."""
    cli(redis_url, "setup")
    cli(redis_url, "demo", "--rate", "200", "--duration", "15")
    history = cli(redis_url, "demo", "--fast", "--duration", "86400")
    assert history["late"] == 0, history["summary"]
    trained = cli(redis_url, "train")
    assert sorted(t["service"] for t in trained["trained"]) == sorted(SERVICES), trained
    r = redis.Redis.from_url(redis_url)
    for outcome in trained["trained"]:
        assert outcome["windows"] >= 17_000
        windows, zeros = zero_share(r, outcome["service"])
        assert windows >= 17_000 and zeros <= 0.01


def test_the_first_live_windows_after_a_backfill_are_scored_with_the_history_before_them(r: redis.Redis) -> None:
    """Live traffic first, then a backfill: the live stream starts after the history, so right after
    training the detector had one or two live windows of context ("p50 latency unusually steady … over
    the last 3 windows" in the README journey). The newest sealed history windows fill the context."""
    from anomalydesk.detect.owned_services import OwnedService, history
    from anomalydesk.fingerprint import from_stream_entry

    admin.setup(r, SketchSettings(window_seconds=1))
    live = DemoTraffic(r, rate=400, seed=2, duration=3).start()
    assert live.wait(30) and live.error is None
    time.sleep(1.1)
    seal_all(r)
    service = SERVICES[0]
    entries = r.xrange(K.fingerprints(service))
    assert len(entries) >= 2
    second = from_stream_entry(service, entries[1][1])
    alone = [fp.window for fp in history(r, K, service, OwnedService(), entries[1][0].decode(), second, 1)]
    assert alone == [int(entries[0][1][b"window"])]  # no history yet: the one live window before it
    run_fast(r, duration=600, rate=400, seed=3)
    context = history(r, K, service, OwnedService(), entries[1][0].decode(), second, 1)
    want = config.DETECTOR_HISTORY_WINDOWS - 1
    sealed = [int(f[b"window"]) for _, f in r.xrevrange(K.history(service, 1), count=want - 1)][::-1]
    assert [fp.window for fp in context] == [*sealed, int(entries[0][1][b"window"])]
    assert sealed[-1] < int(entries[0][1][b"window"]) and not any(fp.no_data for fp in context)
    # history that ended long before the live window is no context: only windows the context could reach
    last = r.xrevrange(K.history(service, 1), count=1)[0][1]
    later = from_stream_entry(service, {**last, b"window": str(int(last[b"window"]) + want + 5).encode()})
    assert list(history(r, K, service, OwnedService(), "0-1", later, 1)) == []
    adjacent = from_stream_entry(service, {**last, b"window": str(int(last[b"window"]) + 3).encode()})
    reached = [fp.window for fp in history(r, K, service, OwnedService(), "0-1", adjacent, 1)]
    assert reached and reached[-1] == int(last[b"window"]) and reached[0] >= adjacent.window - want
