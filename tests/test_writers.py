"""The sync `Writer` and the `AsyncWriter` run one write logic (`store.ingest_core`): the same scenario on
both gives the same answers (real redis-server)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from anomalydesk.config import SketchSettings
from anomalydesk.events import Metric
from anomalydesk.store import admin
from anomalydesk.store.async_writer import AsyncWriter
from anomalydesk.store.connection import connect_async
from anomalydesk.store.encoding import Config, columns_of, encode
from anomalydesk.store.ingest_core import IngestResult, InvalidBatch, NotSetUp, Payloads, only
from anomalydesk.store.keys import Keys
from anomalydesk.store.writer import Writer

EVENT = Metric("orders", "GET:/orders/{id}", 200, 12.5, None)
OTHER = Metric("users", "GET:/me", 500, 3.0, None)
K = Keys("ad:")


class Either:
    """One awaitable face over either writer, so the scenario is written once."""

    def __init__(self, kind: str, url: str):
        self.kind = kind
        self.ar = connect_async(url) if kind == "async" else None
        self.sync_client = redis.Redis.from_url(url) if kind == "sync" else None
        self.writer: Any = AsyncWriter(self.ar, K) if self.ar is not None else Writer(self.sync_client, K)

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.writer, name)(*args, **kwargs)
        return await result if self.kind == "async" else result

    async def ingest(self, events: list) -> IngestResult:
        if self.kind == "async":
            return await self.writer.ingest(events, batch_id=uuid.uuid4().hex)
        return self.writer.ingest(events, uuid.uuid4().hex)

    async def close(self) -> None:
        if self.ar is not None:
            await self.ar.aclose()
        if self.sync_client is not None:
            self.sync_client.close()


@pytest.fixture
def plain(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_both_writers_give_the_same_answers(redis_url: str, plain: redis.Redis, kind: str) -> None:
    admin.setup(plain, SketchSettings(window_seconds=1))
    writer = Either(kind, redis_url)
    try:
        assert (await writer.ingest([EVENT])).accepted == 1  # a new service: pipelined with its registration
        assert plain.sismember(K.services, "orders")
        assert (await writer.ingest([EVENT, EVENT])).accepted == 2  # a known one: the single call
        plain.function_flush()  # as after a restart without persistence
        assert (await writer.ingest([EVENT])).accepted == 1  # library loaded again, then written
        with pytest.raises(InvalidBatch, match="orders"):
            await writer.call("write", [("orders", b'{"v": 1, "not": "a payload"}')])

        # the setup changes under the writer (its cached settings are still fresh): refused as stale,
        # settings read again, the services configured, the batch encoded again and resent
        admin.setup(plain, SketchSettings(window_seconds=3), force=True)
        assert (await writer.ingest([EVENT, EVENT, OTHER])).accepted == 3
        assert (await writer.call("config")).window_s == 3

        # `users` was new to the server and took the batch as it was encoded (the old window length):
        # this write is refused until it is configured for the setup, then resent
        columns, batch = columns_of([EVENT, OTHER, OTHER]), uuid.uuid4().hex

        def reencode(config: Config, services: set[str] | None) -> Payloads:
            return encode(only(columns, services), config, False, batch)

        per_service: dict[str, IngestResult] = {}
        total = await writer.call("write", reencode(await writer.call("config"), None), reencode,
                                  per_service=per_service)
        assert total.accepted == 3
        assert {s: r.accepted for s, r in per_service.items()} == {"orders": 1, "users": 2}
        assert admin.status(plain)["events_total"] == 10
    finally:
        await writer.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_server_never_set_up(redis_url: str, plain: redis.Redis, kind: str) -> None:
    """The one difference, and it is I/O: the sync writer runs setup itself, the async one leaves it to its
    owner (the collector sets up in a thread and resends)."""
    writer = Either(kind, redis_url)
    try:
        if kind == "sync":
            assert (await writer.ingest([EVENT])).accepted == 1
            assert admin.read_settings(plain).configured
        else:
            with pytest.raises(NotSetUp):
                await writer.ingest([EVENT])
            assert not admin.read_settings(plain).configured
    finally:
        await writer.close()
