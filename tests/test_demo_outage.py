"""Live demo traffic rides out a Redis outage (a real redis-server stopped for longer than the sink's
retries, then started again empty): the thread keeps running, says why it waits, and resumes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from anomalydesk.ingest.demo import DemoTraffic
from anomalydesk.store import admin
from conftest import RedisServer


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@contextmanager
def demo_in_an_outage(tmp_path: Path) -> Iterator[tuple[RedisServer, redis.Redis, DemoTraffic, float]]:
    """Demo traffic on its own server, which is stopped once events arrived: (server, client, demo, when
    the server went down), the demo waiting out the outage."""
    server = RedisServer(tmp_path / "redis")
    client = server.client(socket_timeout=2, socket_connect_timeout=1)
    demo = DemoTraffic(client, rate=300, services=2)
    try:
        demo.start()
        _wait(lambda: admin.status(client)["events_total"] > 0, 20, "the first events")
        server.stop()
        down = time.time()
        _wait(lambda: bool(demo.outage), 30, "the demo to notice the outage")
        yield server, client, demo, down
    finally:
        demo.stop()
        client.close()
        server.stop()


def test_demo_traffic_waits_through_an_outage_and_resumes(tmp_path: Path) -> None:
    with demo_in_an_outage(tmp_path) as (server, client, demo, _down):
        time.sleep(8)  # longer than the sink's own retries (~6 s)
        assert demo.running and demo.error is None, demo.error
        server.start()  # no persistence: it comes back empty (no functions, no setup)
        _wait(lambda: not demo.outage, 60, "the demo to resume")
        _wait(lambda: admin.status(client)["events_total"] > 0, 30, "events written after the restart")
        assert demo.running and demo.error is None, demo.error


def test_demo_stopped_during_an_outage_is_no_error_and_records_its_stop_once_redis_is_back(tmp_path: Path) -> None:
    """Stop pressed while Redis was away failed the demo ("network:ConnectionError": recording the stop
    raised), and the silence after Redis came back read as a gap: "no service sent anything"."""
    from anomalydesk.store import traffic_stops

    with demo_in_an_outage(tmp_path) as (server, client, demo, down):
        time.sleep(2)
        demo.stop()
        assert not demo.running and demo.error is None, demo.error
        assert demo.stop_pending and demo.summary()["error"] is None
        server.start()
        _wait(lambda: not demo.stop_pending, 30, "the stop to be recorded")
        stops = traffic_stops.read(client)
        assert set(stops) == set(demo.services)
        # at the stop, not where the outage began: the outage before it was no stop (its silence is a gap)
        assert demo.stopped_at is not None
        assert all(stop.resumed is None and down + 1.5 <= stop.since <= demo.stopped_at
                   for stop in stops.values()), stops  # fmt: skip
