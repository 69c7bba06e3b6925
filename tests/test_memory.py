"""Memory bounds (slow): Redis memory after 10 million events, producer buffers while Redis is down 60 s.

The bounds and policies are documented in docs/reliability.md; run with
`pytest -m slow tests/test_memory.py -s` to see the figures.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from anomalydesk_client import AnomalyClient, QueueFull

from anomalydesk.config import SketchSettings
from anomalydesk.events import parse_metric
from anomalydesk.ingest.collector import CollectorSettings
from anomalydesk.ingest.collector_server import BackgroundCollector
from anomalydesk.store import admin, sink
from anomalydesk.store.connection import connect
from conftest import RedisServer

pytestmark = pytest.mark.slow

# the documented bound (docs/reliability.md): per service, the sketches plus one fingerprint per
# retained window; nothing grows with the number of events
SKETCH_BYTES_PER_SERVICE = 256 * 1024
FINGERPRINT_BYTES = 256
OUTAGE_SECONDS = 60


def test_ten_million_events_keep_redis_memory_under_the_documented_bound(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    r = server.client()
    settings = SketchSettings()  # defaults: 5 s windows, retention 34,560 windows (two days)
    admin.setup(r, settings)
    before = r.info("memory")["used_memory"]
    services = ["gateway", "users", "orders", "payments", "inventory"]
    endpoints = [f"GET:/api/v1/res{i}" for i in range(200)]
    rng = np.random.default_rng(1)
    total, chunk = 10_000_000, 500_000
    span = settings.retention * settings.window_seconds  # the events fill exactly the retained history
    end = (time.time() // settings.window_seconds) * settings.window_seconds - 60
    producer = sink.IngestSink(r, replay=True, max_batch=2**62, max_buffered=2**40)
    done, samples = 0, []
    while done < total:
        n = min(chunk, total - done)
        ts = np.sort(rng.uniform(end - span + span * done / total, end - span + span * (done + n) / total, n))
        owner = rng.integers(0, len(services), n)
        for i, service in enumerate(services):
            mine = owner == i
            k = int(mine.sum())
            producer.add_arrays(service, endpoints, rng.zipf(1.3, k) % len(endpoints),
                                np.where(rng.random(k) < 0.02, 500, 200), rng.gamma(2.0, 20.0, k), ts[mine])
        producer.flush()
        done += n
        samples.append((done, r.info("memory")["used_memory"] - before))
    producer.close()
    status = admin.status(r)
    used = r.info("memory")["used_memory"] - before
    bound = len(services) * (SKETCH_BYTES_PER_SERVICE + settings.retention * FINGERPRINT_BYTES)
    print(f"\n10M events: used_memory grew by {used:,} bytes (bound {bound:,}); "
          f"{status['fingerprints']:,} fingerprints; samples (events, bytes): {samples[::4]}")
    assert status["events_total"] == total
    assert status["fingerprints"] >= len(services) * (settings.retention - 2)  # the history is full
    assert used <= bound
    r.close()
    server.stop()


# --- producers while Redis is down --------------------------------------------------------------
class Producer(threading.Thread):
    """Calls `send()` in a loop; counts what was taken and what was refused (and why)."""

    def __init__(self, send, refused: type[Exception]):
        super().__init__(daemon=True)
        self.send, self.refused_type = send, refused
        self.taken = self.refused = 0
        self.messages: set[str] = set()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                for _ in range(20):
                    try:
                        self.send()
                        self.taken += 1
                    except self.refused_type as err:
                        self.refused += 1
                        self.messages.add(str(err).split(";")[0])
                time.sleep(0.01)
        except BaseException as err:
            self.error = err


def health(url: str) -> dict:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", "/health")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def test_buffers_stay_bounded_while_redis_is_down_for_a_minute(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis", "--appendonly", "yes")
    r = connect(server.url)
    admin.setup(r, SketchSettings())
    collector = BackgroundCollector(CollectorSettings(port=0), server.url).start()
    sdk_options = {"batch_size": 200, "flush_interval": 0.2, "max_queue": 2_000, "max_retries": 1_000,
                   "backoff": 0.2, "backoff_max": 1.0}  # fmt: skip
    raising = AnomalyClient(collector.url, service="sdk-raise", overflow="raise", **sdk_options)
    dropping = AnomalyClient(collector.url, service="sdk-drop", overflow="drop_oldest", **sdk_options)
    direct = sink.IngestSink(r, max_batch=2**62, max_buffered=20_000, flush_interval=0.2).start()
    event = parse_metric({"service": "direct", "endpoint": "GET:/d", "status_code": 200, "response_time": 2})
    producers = [Producer(lambda: raising.send_metric("GET:/r", 200, 3.0), QueueFull),
                 Producer(lambda: dropping.send_metric("GET:/d", 200, 3.0), QueueFull),
                 Producer(lambda: direct.add(event), sink.BufferFull)]  # fmt: skip
    for p in producers:
        p.start()
    time.sleep(2)
    server.stop(signal.SIGTERM)
    peaks = {"raise": 0, "drop": 0, "direct": 0, "collector_pending": 0}
    outage_end = time.monotonic() + OUTAGE_SECONDS
    while time.monotonic() < outage_end:
        peaks["raise"] = max(peaks["raise"], len(raising.queue))
        peaks["drop"] = max(peaks["drop"], len(dropping.queue))
        peaks["direct"] = max(peaks["direct"], direct.buffered)
        answer = health(collector.url)
        assert answer["redis"]["reachable"] is False
        peaks["collector_pending"] = max(peaks["collector_pending"], answer["backlog"]["pending_events"])
        time.sleep(0.2)
    server.start()
    time.sleep(2)
    for p in producers:
        p.stop.set()
        p.join(30)
        assert p.error is None, p.error
    raising.close()
    dropping.close()
    direct.close()
    collector.stop()
    counted = {s["name"]: s["events"] for s in admin.list_services(r)}
    print(f"\noutage {OUTAGE_SECONDS}s: peaks {peaks}; raise {producers[0].taken}/{producers[0].refused} "
          f"{raising.stats}; drop {producers[1].taken} {dropping.stats}; direct {producers[2].taken}/"
          f"{producers[2].refused} {direct.totals}; counted {counted}; messages "
          f"{[sorted(p.messages) for p in producers]}")  # fmt: skip

    # bounded: never more waiting than the limits, and the collector keeps nothing while Redis is away
    assert peaks["raise"] <= 2_000 and peaks["drop"] <= 2_000 and peaks["direct"] <= 20_000
    assert peaks["collector_pending"] == 0
    # policy "raise": the caller is told (QueueFull), and everything taken is stored or counted as failed
    assert producers[0].refused > 0 and producers[0].messages == {"anomalydesk client queue is full (2000 events)"}
    assert raising.stats.dropped == 0
    assert producers[0].taken == raising.stats.sent + raising.stats.failed + raising.stats.rejected
    assert counted.get("sdk-raise", 0) == raising.stats.sent
    # policy "drop_oldest": never raises, drops are counted, every event is accounted for
    assert producers[1].refused == 0 and dropping.stats.dropped > 0
    assert producers[1].taken == dropping.stats.sent + dropping.stats.dropped + dropping.stats.failed
    assert counted.get("sdk-drop", 0) == dropping.stats.sent
    # the direct sink: BufferFull names the reason; what it took is all stored after the outage
    assert producers[2].refused > 0
    assert all(m.startswith("ingest buffer full") for m in producers[2].messages)
    assert counted.get("direct", 0) == producers[2].taken == direct.totals.accepted
    r.close()
    server.stop()
