"""Ingest → windows → fingerprints against a real redis-server."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import orjson
import pytest
import redis

from anomalydesk.config import SketchSettings
from anomalydesk.events import BusinessMetric, Metric
from anomalydesk.fingerprint import FEATURE_NAMES, LAT_QUANTILE_REL_ERROR
from anomalydesk.store import admin, fingerprints
from anomalydesk.store.keys import Keys
from anomalydesk.store.sink import IngestSink, InvalidBatch, ingest, seal_all

pytestmark = pytest.mark.backends  # runs once per sketch backend (conftest.BOTH_BACKENDS)

W = 5
T0 = 1_790_000_000.0  # a window boundary (divisible by 5)


def metric(service: str, endpoint: str, status: int, ms: float, ts: float | None = None) -> Metric:
    return Metric(service, endpoint, status, ms, ts)


def test_fingerprint_fields_per_service_and_window(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=W))
    events = []
    for i in range(100):  # window 0: 100 requests, 10 x 5xx, 5 x 4xx, two endpoints
        status = 503 if i < 10 else 404 if i < 15 else 200
        endpoint = "GET:/users/17" if i % 4 else "POST:/orders"
        events.append(metric("api", endpoint, status, 10.0 + (i % 10), T0 + i * 0.04))
    events.append(BusinessMetric("api", "orders", 50.0, 40.0, 60.0, T0 + 1))
    events.append(BusinessMetric("api", "orders", 90.0, 40.0, 60.0, T0 + 2))  # out of range
    events += [metric("db", "GET:/q", 200, 1.0, T0 + 2), metric("api", "GET:/users/1", 200, 10, T0 + W + 1)]
    result = ingest(r, events, replay=True)
    assert result.accepted == len(events)
    fps = fingerprints.read(r, "api")
    assert [fp.window for fp in fps] == [int(T0 // W)]
    fp = fps[0]
    assert fp.start == T0
    assert fp.get("requests") == 100
    assert fp.get("rate_5xx") == pytest.approx(0.10)
    assert fp.get("rate_4xx") == pytest.approx(0.05)
    assert fp.get("latency_mean_ms") == pytest.approx(14.5)
    assert fp.get("latency_p50_ms") == pytest.approx(14.0, rel=LAT_QUANTILE_REL_ERROR * 2)
    assert fp.get("latency_p99_ms") == pytest.approx(19.0, rel=LAT_QUANTILE_REL_ERROR * 2)
    assert fp.get("endpoints_distinct") == 2  # /users/17 normalised to /users/{id}
    assert fp.get("new_interactions") == 2
    assert fp.get("top_endpoint_share") == pytest.approx(0.75)
    assert fp.get("endpoint_entropy") == pytest.approx(0.8113, abs=1e-3)
    assert fp.get("kpi_level") == pytest.approx(70.0 / 50.0)
    assert fp.get("kpi_out_of_range") == 1
    assert fp.kpis == {"orders": 70.0}
    raw = r.xrange(Keys().fingerprints("api"))[0][1]
    assert {k.decode() for k in raw} >= {*FEATURE_NAMES, "window", "start", "schema", "no_data", "kpis"}
    # the other service has its own stream; nothing of it leaked into api's
    assert fingerprints.read(r, "db") == [] and admin.status(r)["services"] == ["api", "db"]


def test_silent_window_is_a_zero_traffic_fingerprint(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=W))
    ingest(r, [metric("svc", "GET:/a", 200, 5, T0 + 1), metric("svc", "GET:/a", 200, 5, T0 + 3 * W + 1)],
           replay=True)
    fps = fingerprints.read(r, "svc")
    assert [fp.get("requests") for fp in fps] == [1, 0, 0]
    assert fps[1].get("latency_p99_ms") == 0 and not fps[1].no_data
    # the ticker seals silent windows up to a given clock even when nothing is sent
    assert seal_all(r, now=T0 + 6 * W) == 3
    assert [fp.get("requests") for fp in fingerprints.read(r, "svc")] == [1, 0, 0, 1, 0, 0]


def test_live_mode_windows_by_server_time_and_ticker_seals_silence(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=1))
    # a client timestamp far in the past does not move a live event's window
    ingest(r, [metric("live", "GET:/a", 200, 5, T0)])
    deadline = time.monotonic() + 10
    while len(fingerprints.read(r, "live")) < 3 and time.monotonic() < deadline:
        seal_all(r)
        time.sleep(0.1)
    fps = fingerprints.read(r, "live")
    assert len(fps) >= 3
    assert fps[0].get("requests") == 1 and abs(fps[0].start - time.time()) < 30
    assert all(fp.get("requests") == 0 for fp in fps[1:])
    windows = [fp.window for fp in fps]
    assert windows == list(range(windows[0], windows[0] + len(windows)))


def test_repeated_batch_id_counts_once(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=W))
    events = [metric("pay", "POST:/charge", 200, 20, T0 + i * 0.1) for i in range(30)]
    first = ingest(r, events, batch_id="b-1", replay=True)
    second = ingest(r, events, batch_id="b-1", replay=True)
    assert (first.accepted, first.duplicate_batches) == (30, 0)
    assert (second.accepted, second.duplicate_batches) == (0, 1)
    assert admin.status(r)["events_total"] == 30
    assert ingest(r, events, batch_id="b-2", replay=True).accepted == 30


def test_late_event_in_replay_mode_is_rejected_and_counted(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=W))
    ingest(r, [metric("pay", "GET:/a", 200, 5, T0 + i) for i in range(0, 30, 2)], replay=True)
    sealed = len(fingerprints.read(r, "pay"))
    result = ingest(r, [metric("pay", "GET:/a", 200, 5, T0 + 1), metric("pay", "GET:/a", 200, 5, T0 + 29)],
                    replay=True)
    assert (result.accepted, result.late) == (1, 1)
    status = admin.status(r)
    assert status["events_late"] == 1 and status["events_rejected"] >= 1
    assert fingerprints.read(r, "pay")[0].get("requests") == 3  # the sealed window did not change
    assert len(fingerprints.read(r, "pay")) == sealed


def test_invalid_batch_is_rejected_whole_and_changes_nothing(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=W))
    ingest(r, [metric("pay", "GET:/a", 200, 5, T0)], replay=True)
    keys = Keys()
    before = {k: r.dump(k) for k in r.keys("*")}
    cfg = {"W": W, "cw": 100, "cd": 3, "fc": 100, "fe": 0.01, "tk": 5, "ret": 100, "be": "functions"}
    good = {"win": int(T0 // W) + 1, "n": 1, "e4": 0, "e5": 0, "ls": 1.0, "h": [10, 1], "ep": ["GET:/a", 1],
            "st": [200, 1]}
    bad = dict(good, win=int(T0 // W) + 2, n=2)  # counts do not add up to n
    payload = {"v": 1, "mode": "replay", "batch": "x", "cfg": cfg, "w": [good, bad], "k": []}
    with pytest.raises(redis.ResponseError, match=r"invalid batch: w\[2\]\.h counts add up to 1, not n=2"):
        r.fcall("ad_ingest", 1, keys.state("pay"), keys.prefix, "pay", orjson.dumps(payload))
    for garbage, message in [(b"{not json", "not JSON"), (orjson.dumps({"v": 2}), "version must be 1"),
                             (orjson.dumps(dict(payload, w=[dict(good, st=[700, 1])])), "status must be")]:
        with pytest.raises(redis.ResponseError, match=message):
            r.fcall("ad_ingest", 1, keys.state("pay"), keys.prefix, "pay", garbage)
    assert {k: r.dump(k) for k in r.keys("*")} == before  # nothing written, the batch id not burnt


def test_client_side_invalid_service_is_refused_by_the_server_too(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=W))
    with pytest.raises(InvalidBatch, match="service must match"):
        ingest(r, [metric("bad name!", "GET:/a", 200, 5)])


def test_sealing_is_exactly_once_with_two_processes_ingesting(redis_url: str, r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=1))
    producer = textwrap.dedent(f"""
        import time, redis
        from anomalydesk.events import Metric
        from anomalydesk.store.sink import ingest, seal_all
        r = redis.Redis.from_url({redis_url!r})
        sent = 0
        end = time.monotonic() + 3.5
        while time.monotonic() < end:
            ingest(r, [Metric("shared", "GET:/x", 200, 3.0, None)] * 50)
            sent += 50
            seal_all(r)
        print(sent)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", producer], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    sent = sum(int(p.communicate(timeout=60)[0]) for p in procs)
    assert all(p.returncode == 0 for p in procs)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # let the last open window close, then seal it
        seal_all(r)
        total = sum(fp.get("requests") for fp in fingerprints.read(r, "shared"))
        if total == sent:
            break
        time.sleep(0.2)
    fps = fingerprints.read(r, "shared")
    windows = [fp.window for fp in fps]
    assert windows == list(range(windows[0], windows[0] + len(windows)))  # no window twice, none skipped
    assert sum(fp.get("requests") for fp in fps) == sent


def test_sink_buffers_while_redis_is_down_and_never_drops_silently(tmp_path) -> None:
    from conftest import RedisServer

    server = RedisServer(tmp_path / "redis")
    try:
        client = server.client(socket_timeout=1, socket_connect_timeout=0.5)
        admin.setup(client, SketchSettings(window_seconds=W))
        sink = IngestSink(client, replay=True, max_batch=10_000, max_buffered=100, retry_attempts=2)
        for i in range(60):
            sink.add(metric("pay", "GET:/a", 200, 5, T0 + i * 0.01))
        server.stop()
        with pytest.raises(redis.ConnectionError):
            sink.flush()
        assert sink.buffered == 60  # kept, not dropped
        for i in range(40):
            sink.add(metric("pay", "GET:/a", 200, 5, T0 + 1 + i * 0.01))
        from anomalydesk.store.sink import BufferFull

        with pytest.raises(BufferFull, match="buffer full"):
            sink.add(metric("pay", "GET:/a", 200, 5, T0 + 2))
        server.start()
        sink.flush()
        assert sink.buffered == 0
        assert admin.status(client)["events_total"] == 100
    finally:
        server.stop()


def test_full_fidelity_mode_keeps_raw_events_once(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=W))
    events = [metric("pay", "GET:/a/{id}", 200, 5.5, T0 + i * 0.01) for i in range(50)]
    ingest(r, events, replay=True, batch_id="raw-1")
    assert r.xlen(Keys().raw("pay")) == 0  # off by default
    admin.setup(r, SketchSettings(window_seconds=W, raw_sample=1.0))
    producer = redis.Redis(connection_pool=r.connection_pool)  # running producers see it within 5 s
    ingest(producer, events, replay=True, batch_id="raw-2")
    ingest(producer, events, replay=True, batch_id="raw-2")  # a retry adds nothing
    entries = r.xrange(Keys().raw("pay"))
    assert len(entries) == 50
    assert entries[0][1] == {b"endpoint": b"GET:/a/{id}", b"status": b"200", b"latency_ms": b"5.5",
                             b"timestamp": b"%d" % T0}


def test_kpi_ranges_carry_the_window_extremes(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=W))
    values = [50.0, 52.0, 400.0, 48.0]  # one stray payment; the mean (137.5) is out too, but by less
    ingest(r, [BusinessMetric("pay", "amount", v, 10.0, 100.0, T0 + i) for i, v in enumerate(values)]
           + [metric("pay", "GET:/a", 200, 1, T0 + W + 1)], replay=True)
    entry = r.xrange(Keys().fingerprints("pay"))[0][1]
    assert orjson.loads(entry[b"kpi_ranges"]) == {"amount": [10.0, 100.0, 48.0, 400.0]}
    assert float(entry[b"kpi_out_of_range"]) == 1


def test_fingerprints_are_read_in_pages(r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    admin.setup(r, SketchSettings(window_seconds=W))
    ingest(r, [metric("pay", "GET:/a", 200, 1, T0 + i * W) for i in range(31)], replay=True)
    everything = fingerprints.read(r, "pay")
    assert len(everything) == 30
    monkeypatch.setattr(fingerprints, "PAGE", 7)
    windows = [fp.window for fp in everything]
    assert [fp.window for fp in fingerprints.read(r, "pay")] == windows
    assert [fp.window for fp in fingerprints.read(r, "pay", count=16)] == windows[:16]
    assert [fp.window for fp in fingerprints.read(r, "pay", start=T0 + 3 * W, end=T0 + 20 * W)] == windows[3:21]
    assert [fp.window for fp in fingerprints.latest(r, "pay", 17)] == windows[-17:]
    assert [fp.window for fp in fingerprints.latest(r, "pay", 100)] == windows
