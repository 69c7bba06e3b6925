"""Demo traffic against a real redis-server: fault signatures in fingerprints, ground truth, determinism."""

from __future__ import annotations

import json
import math
import signal
import threading
import time

import numpy as np
import pytest
import redis

from anomalydesk.config import SketchSettings
from anomalydesk.fingerprint import FEATURE_NAMES, Fingerprint
from anomalydesk.ingest.demo import DemoTraffic, run_fast
from anomalydesk.ingest.demo_model import parse_inject
from anomalydesk.ingest.demo_services import build_services
from anomalydesk.store import admin, fingerprints, sketches
from anomalydesk.store.keys import Keys
from anomalydesk.store.sink import seal_all

W = 5  # the default window: the tests run on a fresh setup
END = 20_782 * 86_400.0 + 12 * 3600  # 2026-11-25 12:00 UTC, a whole window
SERVICES = ["gateway", "users", "orders", "payments", "inventory"]


def read_all(r: redis.Redis) -> dict[str, list[Fingerprint]]:
    return {service: fingerprints.read(r, service) for service in SERVICES}


def inside(fp: Fingerprint, start: float, end: float) -> bool:
    """The window lies wholly inside [start, end)."""
    return fp.start >= start and fp.start + W <= end


def overlaps(fp: Fingerprint, start: float, end: float) -> bool:
    return fp.start < end and start < fp.start + W


# --- the interval is exact --------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["errors@30+20", "errors@32+20"])
def test_errors_raise_5xx_in_exactly_the_windows_inside_the_fault(r: redis.Redis, spec: str) -> None:
    summary = run_fast(r, duration=300, seed=11, injects=[parse_inject(spec)], end=END)
    start = summary["start"]
    fault = summary["faults"][0]
    assert fault == {"kind": "errors", "service": "payments", "start": fault["start"], "end": fault["end"]}
    offset, length = (float(x) for x in spec.split("@")[1].split("+"))
    assert (fault["start"], fault["end"]) == (start + offset, start + offset + length)
    high = []
    for service, fps in read_all(r).items():
        assert len(fps) == 60, service
        for fp in fps:
            if service == "payments" and inside(fp, fault["start"], fault["end"]):
                assert fp.get("rate_5xx") > 0.1, (service, fp.start - start)
                high.append(fp.start - start)
            elif service != "payments" or not overlaps(fp, fault["start"], fault["end"]):
                assert fp.get("rate_5xx") < 0.05, (service, fp.start - start, fp.get("rate_5xx"))
    assert high == ([30, 35, 40, 45] if spec == "errors@30+20" else [35, 40, 45])


def test_a_fault_leaves_every_other_service_exactly_as_it_was(r: redis.Redis) -> None:
    run_fast(r, duration=300, seed=11, injects=[parse_inject("errors@30+20")], end=END)
    faulty = read_all(r)
    r.flushall()
    run_fast(r, duration=300, seed=11, end=END)
    clean = read_all(r)
    for service in SERVICES:
        same = [np.array_equal(a.vector, b.vector) for a, b in zip(faulty[service], clean[service], strict=True)]
        if service == "payments":
            assert not all(same)
        else:
            assert all(same), service


# --- each fault kind moves its own features, and only those -------------------------------------------
# (feature, how, low, high): "ratio" = injected median / baseline median, "level" = injected median,
# "delta" = injected median − baseline median
SIGNATURES: dict[str, list[tuple[str, str, float, float]]] = {
    "latency": [("latency_p50_ms", "ratio", 4.0, 6.0), ("latency_p95_ms", "ratio", 4.0, 6.0),
                ("latency_p99_ms", "ratio", 4.0, 6.0), ("latency_mean_ms", "ratio", 4.5, 5.5)],
    "errors": [("rate_5xx", "level", 0.15, 0.25)],
    "drop": [("requests", "ratio", 0.12, 0.28)],
    "spike": [("requests", "ratio", 4.2, 5.8)],
    "new-dependency": [("endpoints_distinct", "delta", 5, 5), ("endpoint_entropy", "delta", 0.3, 0.9),
                       ("top_endpoint_share", "ratio", 0.75, 0.95), ("new_interactions", "level", 0, 0)],
    "business": [("kpi_level", "ratio", 0.25, 0.35), ("kpi_out_of_range", "level", 5, 1000)],
}  # fmt: skip
# a feature "did not move" when its injected median is within 3 robust standard deviations of the
# baseline median; these floors stand in for the spread of features that hardly vary at all
SPREAD_FLOOR = {"requests": 2.0, "rate_4xx": 0.005, "rate_5xx": 0.005, "endpoints_distinct": 0.5,
                "new_interactions": 0.5, "top_endpoint_share": 0.01, "endpoint_entropy": 0.02,
                "kpi_level": 0.01, "kpi_out_of_range": 0.5}  # fmt: skip


def _medians(fps: list[Fingerprint], start: float, end: float, warmup: float):
    injected = np.array([fp.vector for fp in fps if inside(fp, start, end)])
    baseline = np.array([fp.vector for fp in fps if not overlaps(fp, start, end) and fp.start >= warmup])
    q1, q3 = np.percentile(baseline, [25, 75], axis=0)
    return np.median(baseline, axis=0), np.median(injected, axis=0), (q3 - q1) / 1.349, injected, baseline


@pytest.mark.parametrize("kind", list(SIGNATURES))
def test_fault_signature_in_fingerprints(r: redis.Redis, kind: str) -> None:
    summary = run_fast(r, duration=600, seed=7, injects=[parse_inject(f"{kind}@240+180")], end=END)
    fault = summary["faults"][0]
    warmup = summary["start"] + 2 * W  # every endpoint is new in the first window
    for service in ("payments", "users"):
        base, injected, spread, inj_rows, base_rows = _medians(
            fingerprints.read(r, service), fault["start"], fault["end"], warmup)
        assert len(inj_rows) == 36 and len(base_rows) == 82
        moved = {name for name, *_ in SIGNATURES[kind]} if service == "payments" else set()
        for name, how, low, high in SIGNATURES[kind] if service == "payments" else []:
            i = FEATURE_NAMES.index(name)
            value = injected[i] if how == "level" else (
                injected[i] - base[i] if how == "delta" else injected[i] / base[i])
            assert low <= value <= high, f"{kind}: {name} {how} {value:.3f} not in [{low}, {high}]"
        for i, name in enumerate(FEATURE_NAMES):
            if name in moved:
                continue
            floor = SPREAD_FLOOR.get(name, 0.02 * abs(base[i]))
            assert abs(injected[i] - base[i]) <= 3 * max(spread[i], floor), (
                f"{kind} moved {service}'s {name}: baseline {base[i]:.3f}, injected {injected[i]:.3f}")
    if kind == "new-dependency":  # each new endpoint is a first sighting exactly once, inside the fault
        payments = fingerprints.read(r, "payments")
        assert sum(fp.get("new_interactions") for fp in payments if inside(fp, fault["start"], fault["end"])) == 5
        assert sum(fp.get("new_interactions") for fp in payments
                   if not overlaps(fp, fault["start"], fault["end"]) and fp.start >= warmup) == 0


# --- determinism -----------------------------------------------------------------------------------------
def _snapshot(r: redis.Redis) -> dict[str, list[tuple[int, list[float], dict | None]]]:
    return {s: [(fp.window, fp.vector.tolist(), dict(fp.kpis or {})) for fp in fps] for s, fps in read_all(r).items()}


def test_same_seed_gives_identical_fingerprints(r: redis.Redis) -> None:
    injects = [parse_inject("latency@100+50:users"), parse_inject("new-dependency@200+40")]
    run_fast(r, duration=400, seed=42, injects=injects, end=END)
    first = _snapshot(r)
    r.flushall()
    run_fast(r, duration=400, seed=42, injects=injects, end=END)
    assert _snapshot(r) == first
    r.flushall()
    run_fast(r, duration=400, seed=43, injects=injects, end=END)
    assert _snapshot(r) != first


def test_same_seed_same_traffic_for_the_same_windows_whenever_it_runs(r: redis.Redis) -> None:
    """Traffic depends on the seed and the absolute window, so runs ending at other times agree where they overlap."""
    run_fast(r, duration=300, seed=5, end=END)
    early = {s: {fp.window: fp for fp in fps} for s, fps in read_all(r).items()}
    r.flushall()
    summary = run_fast(r, duration=300, seed=5, end=END + 125)
    compared = 0
    skip = FEATURE_NAMES.index("new_interactions")  # first sightings depend on where a run starts
    for service, fps in read_all(r).items():
        for fp in fps[1:]:  # the first window's orders count has no trailing history in the later run
            other = early[service].get(fp.window)
            if other is not None:
                assert np.array_equal(np.delete(fp.vector, skip), np.delete(other.vector, skip)), (service, fp.window)
                compared += 1
    assert compared == 5 * ((END - summary["start"]) // W - 1)


# --- ground truth ---------------------------------------------------------------------------------------
def test_ground_truth_goes_to_the_stream_and_the_file(r: redis.Redis, tmp_path) -> None:
    truth_file = tmp_path / "truth.jsonl"
    summary = run_fast(r, duration=120, seed=1, end=END, truth_path=truth_file,
                       injects=[parse_inject("spike@10+20:gateway"), parse_inject("business@100+60:orders")])
    start = summary["start"]
    expected = [
        {"kind": "spike", "service": "gateway", "start": start + 10, "end": start + 30},
        {"kind": "business", "service": "orders", "start": start + 100, "end": END},  # clipped at the end
    ]
    assert summary["faults"] == expected
    assert [json.loads(line) for line in truth_file.read_text().splitlines()] == expected
    entries = r.xrange(Keys().demo_truth)
    stream = [{k.decode(): v.decode() for k, v in fields.items()} for _id, fields in entries]
    assert stream == [{k: str(v) for k, v in e.items()} for e in expected]


def test_a_fault_after_the_end_is_refused(r: redis.Redis) -> None:
    with pytest.raises(ValueError, match="starts after the demo ends"):
        run_fast(r, duration=60, seed=1, end=END, injects=[parse_inject("drop@60")])
    with pytest.raises(ValueError, match="not part of this demo"):
        run_fast(r, duration=60, services=3, seed=1, end=END, injects=[parse_inject("drop@10")])


def test_endpoints_arrive_normalised(r: redis.Redis) -> None:
    run_fast(r, duration=120, seed=3, end=END)
    for model in build_services(5):
        names = {e.name for e in model.endpoints}
        assert {name for name, _ in sketches.topk(r, model.name)} <= names
        assert all(fp.get("endpoints_distinct") <= len(names) for fp in fingerprints.read(r, model.name))


# --- fast then live --------------------------------------------------------------------------------------
def test_fast_history_ends_now_and_live_traffic_follows_without_late_events(r: redis.Redis) -> None:
    before = time.time()
    summary = run_fast(r, duration=120, seed=2)
    assert before - W < summary["end"] <= time.time() and summary["late"] == 0
    assert max(fp.start for fp in fingerprints.read(r, "gateway")) == summary["end"] - W
    demo = DemoTraffic(r, rate=2000, seed=2, duration=1.5).start()
    assert demo.wait(60)
    assert demo.error is None
    assert demo.events > 0 and demo.result.late == 0
    assert demo.result.accepted == demo.events + demo.business_metrics


def test_the_catch_up_at_the_end_of_fast_history_counts_each_order_once(r: redis.Redis, redis_url: str) -> None:
    """The windows `run_fast` adds while catching up with the clock equal those of a run that ends there."""
    admin.setup(r, SketchSettings(window_seconds=1))
    caught_up = run_fast(r, duration=1800, rate=2000, seed=12)
    assert caught_up["caught_up_s"] >= 1, "the run should have taken more than a window of wall time"
    other = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/1")
    try:
        other.flushdb()
        admin.setup(other, SketchSettings(window_seconds=1))
        straight = run_fast(other, duration=caught_up["end"] - caught_up["start"], end=caught_up["end"], rate=2000,
                            seed=12)  # fmt: skip
        assert straight["start"] == caught_up["start"]
        lo = caught_up["end"] - caught_up["caught_up_s"] - 5
        for service in ("orders", "gateway"):
            mine = [(fp.start, fp.get("requests"), fp.kpis) for fp in fingerprints.read(r, service, lo)]
            theirs = [(fp.start, fp.get("requests"), fp.kpis) for fp in fingerprints.read(other, service, lo)]
            assert len(mine) >= 6 and mine == theirs
    finally:
        other.flushdb()
        other.close()


def test_live_traffic_continuing_history_fills_the_windows_the_clock_passed_meanwhile(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=1))
    history = run_fast(r, duration=60, rate=3000, seed=6)
    time.sleep(max(0.0, history["end"] + 2.2 - time.time()))  # two window boundaries pass before live starts
    demo = DemoTraffic(r, rate=3000, seed=6, duration=1.5, since=history["end"]).start()
    assert demo.wait(60) and demo.error is None and demo.result.late == 0
    seal_all(r)
    requests = {int(fp.start): fp.get("requests") for fp in fingerprints.read(r, "gateway")}
    end = int(history["end"])
    typical = sorted(requests[w] for w in range(end - 20, end))[10]
    assert typical > 100
    for w in range(end - 5, end + 3):  # the passed windows written as history, then live from the start of one
        assert requests[w] >= 0.25 * typical, (w - end, requests[w], typical)  # 0 without `since`


def test_fast_history_catches_up_with_the_clock_so_live_traffic_leaves_no_silent_window(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=1))  # short windows: the run itself takes several
    summary = run_fast(r, duration=3 * 3600, rate=400, seed=4)
    assert summary["caught_up_s"] >= 1, "the run should have taken more than a window of wall time"
    # live traffic continuing the history: under load its start can cross a window boundary, which
    # without `since` left the window the history ended in empty (seen in CI)
    demo = DemoTraffic(r, rate=2000, seed=4, duration=2, since=summary["end"]).start()
    assert demo.wait(60) and demo.error is None
    seal_all(r)
    history = [fp for fp in fingerprints.read(r, "gateway") if fp.start >= summary["start"]]
    assert len(history) >= 3 * 3600 + summary["caught_up_s"]
    assert [fp.start for fp in history if fp.get("requests") == 0] == []


@pytest.mark.parametrize("into_window", [0.0, 0.8, 0.97])
def test_live_traffic_started_just_before_a_window_boundary_leaves_no_silent_window(r: redis.Redis,
                                                                                   into_window: float) -> None:
    """Live events land in the window of the server clock when they arrive: a first step generated
    from the window start but sent after its end left that window silent (seen at 0.95–0.99 of it)."""
    admin.setup(r, SketchSettings(window_seconds=1))
    summary = run_fast(r, duration=60, rate=400, seed=5)
    seconds, micros = r.time()
    now = seconds + micros / 1e6
    time.sleep(math.floor(now) + 1 + into_window - now)  # a whole window later: one passed meanwhile
    demo = DemoTraffic(r, rate=2000, seed=5, duration=1.5, since=summary["end"]).start()
    assert demo.wait(60) and demo.error is None and demo.result.late == 0
    seal_all(r)
    for service in ("gateway", "orders"):
        history = [fp for fp in fingerprints.read(r, service) if fp.start >= summary["start"]]
        assert [fp.start - summary["end"] for fp in history if fp.get("requests") == 0] == []
        assert [fp.start for fp in history] == [summary["start"] + i for i in range(len(history))]


# --- the Python API the desktop app uses -------------------------------------------------------------------
def _until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_demo_traffic_api(redis_url: str, r: redis.Redis) -> None:
    demo = DemoTraffic(redis_url, rate=1000, services=6, seed=9)
    assert demo.services[-1] == "svc-6" and not demo.running
    with pytest.raises(RuntimeError, match="not running"):
        demo.inject("errors", 10, "payments")
    demo.start()
    try:
        _until(lambda: demo.events > 0 and demo.events_per_second > 0)
        demo.set_rate(500)
        assert demo.rate == 500
        with pytest.raises(ValueError, match="--rate"):
            demo.set_rate(0)
        fault = demo.inject("latency", 30, "svc-6")
        assert fault in demo.faults and str(fault).startswith("latency on svc-6 until ")
        with pytest.raises(ValueError, match="business KPIs"):
            demo.inject("business", 10, "users")
        with pytest.raises(ValueError, match="not part of this demo"):
            demo.inject("errors", 10, "svc-9")
        _until(lambda: r.scard(Keys().services) == 6)
    finally:
        demo.stop()
    assert not demo.running and demo.error is None
    entries = r.xrange(Keys().demo_truth)
    assert [{k.decode(): v.decode() for k, v in f.items()} for _id, f in entries] == [
        {k: str(v) for k, v in fault.truth().items()}]
    summary = demo.summary()
    assert summary["mode"] == "live" and summary["faults"] == [fault.truth()] and summary["late"] == 0


def test_stop_after_ctrl_c_in_wait_still_waits_for_the_last_flush(r: redis.Redis) -> None:
    # Python 3.11's Thread.join, interrupted by KeyboardInterrupt, marks the running thread as finished;
    # stop() must still wait until the thread has written what it generated (the Ctrl-C summary counts it)
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    demo = DemoTraffic(r, rate=2000, seed=3).start()
    try:
        _until(lambda: demo.events > 0)
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(KeyboardInterrupt):
            demo.wait(30)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        demo.stop()
    assert "anomalydesk-demo" not in [t.name for t in threading.enumerate()]
    assert not demo.running and demo.error is None
    assert demo.result.accepted == demo.events + demo.business_metrics > 0


def test_scheduled_faults_in_live_mode_are_recorded_when_they_begin(r: redis.Redis, tmp_path) -> None:
    truth_file = tmp_path / "truth.jsonl"
    demo = DemoTraffic(r, rate=500, seed=1, duration=1.0, truth_path=truth_file,
                       injects=[parse_inject("errors@0.2+0.5"), parse_inject("drop@0.4+5:users")])
    demo.start()
    assert demo.wait(60) and demo.error is None
    t0 = demo.started_at
    expected = [{"kind": "errors", "service": "payments", "start": round(t0 + 0.2, 3), "end": round(t0 + 0.7, 3)},
                {"kind": "drop", "service": "users", "start": round(t0 + 0.4, 3), "end": round(t0 + 1.0, 3)}]
    assert demo.truth == expected
    assert [json.loads(line) for line in truth_file.read_text().splitlines()] == expected


@pytest.mark.slow
def test_a_day_of_history(r: redis.Redis) -> None:
    """`demo --fast` default: 24 simulated hours of 5 services, every window sealed, nothing late."""
    summary = run_fast(r, duration=86_400, seed=1, end=END, injects=[parse_inject("latency@13h+10m")])
    assert summary["late"] == 0 and summary["windows_sealed"] == 5 * 86_400 // W
    assert summary["accepted"] == summary["events"] + summary["business_metrics"]
    for service in SERVICES:
        fps = fingerprints.read(r, service)
        assert len(fps) == 86_400 // W
        hours = np.array([int(fp.start % 86_400) // 3600 for fp in fps])
        hourly = np.bincount(hours, weights=[fp.get("requests") for fp in fps], minlength=24)
        assert hourly.argmax() in range(13, 18) and hourly.argmin() in range(0, 6)  # the daily cycle (UTC)
