"""The direct sink's synchronous writer: `store.ingest_core`'s write logic over one redis.Redis client.

`ingest` and `ingest_aggregates` write now (one pre-aggregated FCALL per service, pipelined) and keep
one writer per client and key prefix, so one-off calls do not re-read the settings every time.

Where it differs from `AsyncWriter`, it is I/O the async client cannot do: on a server that was never
set up it runs `store.admin.setup` with the defaults (a producer on a fresh server just works; the
collector does that for its async writer), and the first settings read checks the gears library
version (`ensure_library`, on every primary of a cluster).
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from anomalydesk.config import SketchSettings, key_prefix
from anomalydesk.events import BusinessMetric
from anomalydesk.store.admin import StoredSettings, read_settings, setup
from anomalydesk.store.encoding import Config, Event, WindowAggregate
from anomalydesk.store.gears import ensure_library
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
    run,
)
from anomalydesk.store.keys import Keys


class Writer:
    """Sends encoded payloads over one redis.Redis client; remembers the services it registered and the
    server's settings (`WriterCore`)."""

    def __init__(self, r: redis.Redis, keys: Keys):
        self.r = r
        self.keys = keys
        self.core = WriterCore(keys)

    def config(self, *, fresh: bool = False) -> Config:
        """The server's settings (`WriterCore.config`): a failed routine re-read serves the cached ones."""
        return run(self.core.config(fresh=fresh), self._perform)

    def write(self, payloads: Payloads, reencode: Reencode | None = None, *,
              per_service: dict[str, IngestResult] | None = None) -> IngestResult:
        """Send encoded payloads (`WriterCore.write`)."""
        return run(self.core.write(payloads, reencode, per_service=per_service), self._perform)

    def ingest(self, events: Iterable[Event], batch_id: str, replay: bool = False,
               sparse: bool = False) -> IngestResult:
        """Encode validated events and write them now."""
        return run(self.core.ingest(events, batch_id, replay, sparse), self._perform)

    def ingest_aggregates(self, service: str, windows: Sequence[WindowAggregate], kpis: Sequence[BusinessMetric],
                          batch_id: str, replay: bool = False, sparse: bool = False) -> IngestResult:
        """Encode pre-aggregated windows of one service and write them now."""
        return run(self.core.ingest_aggregates(service, windows, kpis, batch_id, replay, sparse), self._perform)

    def _perform(self, request: Request) -> Any:
        if isinstance(request, IngestCalls):
            if request.single:
                try:
                    return [self.r.fcall(*ingest_args(self.keys, *request.payloads[0]))]
                except redis.ResponseError as err:
                    return [err]
            pipe = self.r.pipeline(transaction=False)
            queue_ingest(pipe, self.keys, request)
            return pipe.execute(raise_on_error=False)
        if isinstance(request, RegisterServices):
            pipe = self.r.pipeline(transaction=False)
            queue_register(pipe, self.keys, request)
            return pipe.execute()
        if isinstance(request, ReadSettings):
            return self._read_settings(request.first)
        if isinstance(request, ConfigureCalls):
            pipe = self.r.pipeline(transaction=False)
            queue_configure(pipe, self.keys, request)
            return pipe.execute(raise_on_error=False)
        if isinstance(request, ReloadLibrary):
            return ensure_library(self.r)
        raise TypeError(f"unknown request {request!r}")

    def _read_settings(self, first: bool) -> StoredSettings:
        stored = read_settings(self.r, self.keys)
        if not stored.configured:  # never set up (or flushed): the defaults, as `anomalydesk setup` would
            setup(self.r, SketchSettings(), keys=self.keys)
            return read_settings(self.r, self.keys)
        if first:
            ensure_library(self.r)
        return stored


# one writer per client and key prefix, so one-off `ingest` calls do not re-read the config and
# re-check the library (FUNCTION LIST) every time
_WRITERS: weakref.WeakKeyDictionary[redis.Redis, dict[str, Writer]] = weakref.WeakKeyDictionary()
_WRITERS_LOCK = threading.Lock()


def writer_for(r: redis.Redis, keys: Keys | None = None) -> Writer:
    """The writer kept for this client and key prefix."""
    keys = keys or Keys(key_prefix())
    with _WRITERS_LOCK:
        per_prefix = _WRITERS.setdefault(r, {})
        writer = per_prefix.get(keys.prefix)
        if writer is None:
            writer = per_prefix[keys.prefix] = Writer(r, keys)
        return writer


def ingest(r: redis.Redis, events: Iterable[Event], *, batch_id: str | None = None,
           replay: bool = False, sparse: bool = False, keys: Keys | None = None) -> IngestResult:
    """Write validated events now: one pre-aggregated FCALL per service, pipelined."""
    return writer_for(r, keys).ingest(events, batch_id or uuid.uuid4().hex, replay, sparse)


def ingest_aggregates(r: redis.Redis, service: str, windows: Sequence[WindowAggregate], *,
                      kpis: Sequence[BusinessMetric] = (), batch_id: str | None = None, replay: bool = False,
                      sparse: bool = False, keys: Keys | None = None) -> IngestResult:
    """Write pre-aggregated windows of one service now (the synchronous twin of AsyncWriter's)."""
    return writer_for(r, keys).ingest_aggregates(service, windows, kpis, batch_id or uuid.uuid4().hex, replay, sparse)
