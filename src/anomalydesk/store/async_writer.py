"""The direct sink's asynchronous writer (the collector): `store.ingest_core`'s write logic over one
long-lived redis.asyncio client.

Where it differs from the sync `Writer`, it is I/O this client cannot do: a server that was never set
up raises `NotSetUp` (its owner, the collector's `StoreBinding`, sets it up in a thread and sends the
same batch again), and the gears library's version is checked by that owner at start-up, so a lost
library is loaded again as it is.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import redis
import redis.asyncio

from anomalydesk.config import key_prefix
from anomalydesk.events import BusinessMetric
from anomalydesk.store.admin import read_settings
from anomalydesk.store.encoding import Config, Event, WindowAggregate
from anomalydesk.store.gears import library_source
from anomalydesk.store.ingest_core import (
    ConfigureCalls,
    IngestCalls,
    IngestResult,
    Payloads,
    ReadSettings,
    Reencode,
    RegisterServices,
    ReloadLibrary,
    Request,
    WriterCore,
    ingest_args,
    queue_configure,
    queue_ingest,
    queue_register,
    run_async,
)
from anomalydesk.store.keys import Keys


class AsyncWriter:
    """The async twin of the sync `Writer`, for one long-lived redis.asyncio client."""

    def __init__(self, ar: redis.asyncio.Redis, keys: Keys | None = None):
        self.ar = ar
        self.keys = keys or Keys(key_prefix())
        self.core = WriterCore(self.keys)

    async def config(self, *, fresh: bool = False) -> Config:
        """The server's settings (`WriterCore.config`); NotSetUp when setup never ran."""
        return await run_async(self.core.config(fresh=fresh), self._perform)

    async def write(self, payloads: Payloads, reencode: Reencode | None = None, *,
                    per_service: dict[str, IngestResult] | None = None) -> IngestResult:
        """Send encoded payloads (`WriterCore.write`)."""
        return await run_async(self.core.write(payloads, reencode, per_service=per_service), self._perform)

    async def ingest(self, events: Iterable[Event], *, batch_id: str | None = None,
                     replay: bool = False, sparse: bool = False) -> IngestResult:
        """Encode validated events and write them now."""
        steps = self.core.ingest(events, batch_id or uuid.uuid4().hex, replay, sparse)
        return await run_async(steps, self._perform)

    async def ingest_aggregates(self, service: str, windows: Sequence[WindowAggregate], *,
                                kpis: Sequence[BusinessMetric] = (), batch_id: str | None = None,
                                replay: bool = False, sparse: bool = False) -> IngestResult:
        """Write pre-aggregated windows (OTLP histograms, scrapes) without inventing single events."""
        steps = self.core.ingest_aggregates(service, windows, kpis, batch_id or uuid.uuid4().hex, replay, sparse)
        return await run_async(steps, self._perform)

    async def _perform(self, request: Request) -> Any:
        if isinstance(request, IngestCalls):
            if request.single:
                try:
                    return [await self.ar.fcall(*ingest_args(self.keys, *request.payloads[0]))]
                except redis.ResponseError as err:
                    return [err]
            pipe = self.ar.pipeline(transaction=False)
            queue_ingest(pipe, self.keys, request)
            return await pipe.execute(raise_on_error=False)
        if isinstance(request, RegisterServices):
            pipe = self.ar.pipeline(transaction=False)
            queue_register(pipe, self.keys, request)
            return await pipe.execute()
        if isinstance(request, ReadSettings):
            return read_settings(_FetchedHash(await self.ar.hgetall(self.keys.config)), self.keys)
        if isinstance(request, ConfigureCalls):
            pipe = self.ar.pipeline(transaction=False)
            queue_configure(pipe, self.keys, request)
            return await pipe.execute(raise_on_error=False)
        if isinstance(request, ReloadLibrary):
            return await self.ar.function_load(library_source()[0], replace=True)
        raise TypeError(f"unknown request {request!r}")


class _FetchedHash:
    """Just enough of a client for read_settings() over an already-fetched config hash."""

    def __init__(self, raw: dict):
        self._raw = raw

    def hgetall(self, _key: str) -> dict:
        return self._raw


# one writer per client and key prefix, as the sync `writer_for` keeps
_WRITERS: weakref.WeakKeyDictionary[redis.asyncio.Redis, dict[str, AsyncWriter]] = weakref.WeakKeyDictionary()
_WRITERS_LOCK = threading.Lock()


def async_writer_for(ar: redis.asyncio.Redis, keys: Keys | None = None) -> AsyncWriter:
    """The async writer kept for this client and key prefix."""
    keys = keys or Keys(key_prefix())
    with _WRITERS_LOCK:
        per_prefix = _WRITERS.setdefault(ar, {})
        writer = per_prefix.get(keys.prefix)
        if writer is None:
            writer = per_prefix[keys.prefix] = AsyncWriter(ar, keys)
        return writer


async def ingest_async(ar: redis.asyncio.Redis, events: Iterable[Event], *, batch_id: str | None = None,
                       replay: bool = False, sparse: bool = False, keys: Keys | None = None) -> IngestResult:
    """Async `ingest` for one-off calls (the writer is kept per client, as the sync `ingest` keeps its own)."""
    return await async_writer_for(ar, keys).ingest(events, batch_id=batch_id, replay=replay, sparse=sparse)
