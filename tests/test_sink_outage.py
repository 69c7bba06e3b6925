"""The sink through a Redis outage: a failed settings re-read keeps the cached settings (real redis-server)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from anomalydesk.events import Metric
from anomalydesk.store import admin, ingest_core
from anomalydesk.store.sink import IngestSink
from conftest import RedisServer

EVENT = Metric("orders", "GET:/orders/{id}", 200, 12.5, None)


def test_cached_settings_serve_while_redis_is_down_and_events_land_after_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = RedisServer(tmp_path / "redis")  # our own server: this test stops it
    client = server.client(socket_timeout=2, socket_connect_timeout=1)
    try:
        sink = IngestSink(client, retry_attempts=1)
        sink.add(EVENT)
        assert sink.flush().accepted == 1  # the first read: setup written, settings cached
        cached = sink._writer.config()
        monkeypatch.setattr(ingest_core, "CONFIG_TTL_SECONDS", 0.0)  # every call now wants a re-read
        monkeypatch.setattr(ingest_core, "CONFIG_RETRY_SECONDS", 0.0)

        server.stop()
        assert sink._writer.config() is cached  # the re-read failed: no exception, the cached settings
        sink.add(EVENT)
        with pytest.raises(redis.ConnectionError):
            sink.flush()  # the write is what fails; the event stays buffered for the next flush
        assert sink.buffered == 1

        server.start()  # no persistence: the server comes back empty, without functions or setup
        assert sink.flush().accepted == 1  # settings re-read (setup again), library reloaded, written
        assert sink._writer.config() is not cached
        assert admin.status(client)["events_total"] == 1
    finally:
        client.close()
        server.stop()


def test_the_first_settings_read_still_raises_when_redis_is_down(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    client = server.client(socket_timeout=2, socket_connect_timeout=1)
    server.stop()
    try:
        sink = IngestSink(client, retry_attempts=1)
        sink.add(EVENT)
        with pytest.raises(redis.ConnectionError):
            sink.flush()  # nothing cached to fall back on: the caller learns Redis is down
        assert sink.buffered == 1
    finally:
        client.close()


async def test_async_writer_single_call_path_reloads_lost_functions_and_names_refusals(redis_url: str) -> None:
    """One known service's payload goes without a pipeline: replies, lost functions and errors as before."""
    from anomalydesk.config import SketchSettings
    from anomalydesk.store.connection import connect_async
    from anomalydesk.store.gears import ensure_library
    from anomalydesk.store.sink import AsyncWriter, InvalidBatch

    plain = redis.Redis.from_url(redis_url)
    admin.setup(plain, SketchSettings())
    ensure_library(plain)
    ar = connect_async(redis_url)
    try:
        writer = AsyncWriter(ar)
        assert (await writer.ingest([EVENT])).accepted == 1  # new service: pipeline with its registration
        assert (await writer.ingest([EVENT, EVENT])).accepted == 2  # known service: the single call
        plain.function_flush()  # as after a restart without persistence
        assert (await writer.ingest([EVENT])).accepted == 1  # library loaded again, then written
        with pytest.raises(InvalidBatch, match="orders"):
            await writer.write([("orders", b'{"v": 1, "not": "a payload"}')])
        assert admin.status(plain)["events_total"] == 4
    finally:
        await ar.aclose()
        plain.close()
