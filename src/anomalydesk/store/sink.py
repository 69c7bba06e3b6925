"""The ingestion API (direct sink): validated events → pre-aggregated batches → one FCALL per service.

A batch of thousands of events becomes one small payload per service (per window in replay mode,
`store.encoding`) and one atomic FCALL. A batch id per service makes a retry after a lost reply a
no-op on the server. `seal_all`/`SealTicker` (`store.sealing`) are re-exported here for producers.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson
import redis
import redis.asyncio

from anomalydesk.config import (
    SINK_FLUSH_SECONDS,
    SINK_MAX_BATCH_EVENTS,
    SINK_MAX_BUFFERED_EVENTS,
    SINK_RETRY_ATTEMPTS,
    SINK_RETRY_BASE_SECONDS,
    SINK_RETRY_MAX_SECONDS,
    SketchSettings,
    key_prefix,
)
from anomalydesk.contract import IngestReply
from anomalydesk.events import BusinessMetric, normalize_endpoint
from anomalydesk.store.admin import configure_services, read_settings, setup
from anomalydesk.store.encoding import (
    Columns,
    Config,
    Event,
    WindowAggregate,
    columns_of,
    config_from,
    encode,
    encode_aggregates,
)
from anomalydesk.store.gears import STALE_CONFIG, ensure_library, is_missing_function, is_stale_config, library_source
from anomalydesk.store.keys import Keys
from anomalydesk.store.sealing import SealTicker, seal_all

__all__ = [
    "AsyncWriter", "BufferFull", "ConfigChanged", "IngestResult", "IngestSink", "InvalidBatch", "NotSetUp",
    "SealTicker", "WindowAggregate", "columns_of", "encode", "ingest", "ingest_aggregates", "ingest_async", "seal_all",
]

log = logging.getLogger(__name__)

_CONFIG_TTL_SECONDS = 5.0
_CONFIG_RETRY_SECONDS = 1.0  # a failed re-read is tried again after this long (the cached config serves)
_RETRYABLE = (redis.ConnectionError, redis.TimeoutError)
# replies of a Redis Cluster during a failover (CLUSTERDOWN, TRYAGAIN): nothing of the call was written
_TRANSIENT = (redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError)
# a setup that changed the window length or sketch sizes makes gears refuse older configs: re-read the
# config, encode again and resend this many times (one is enough unless setup runs again meanwhile)
_CONFIG_RETRIES = 3
Payloads = list[tuple[str, bytes]]
# encodes (again) for a config: all services, or only those named (None = all)
Reencode = Callable[[Config, "set[str] | None"], Payloads]


class IngestResult(NamedTuple):
    """What the server did with a batch. `accepted`/`late` count request events and KPI reports;
    `kpis_accepted`/`kpis_late` the KPI reports among them; `sealed`/`history_sealed` windows sealed
    into the live stream / into history."""

    accepted: int = 0
    late: int = 0
    duplicate_batches: int = 0
    sealed: int = 0
    kpis_accepted: int = 0
    kpis_late: int = 0
    history_sealed: int = 0

    @property
    def events_accepted(self) -> int:
        """Request events accepted (KPI reports not counted)."""
        return self.accepted - self.kpis_accepted

    @property
    def events_late(self) -> int:
        """Request events refused as late (KPI reports not counted)."""
        return self.late - self.kpis_late

    def __add__(self, other: tuple) -> IngestResult:  # type: ignore[override]
        return IngestResult(*(a + b for a, b in zip(self, other, strict=True)))


class BufferFull(RuntimeError):
    """The sink's bounded buffer is full (Redis unreachable for too long); the event was not taken."""


class NotSetUp(RuntimeError):
    """`anomalydesk setup` never ran on this server."""


class InvalidBatch(ValueError):
    """The server refused a batch as invalid (nothing of it was written)."""


class ConfigChanged(RuntimeError):
    """The server's setup kept changing while a batch was re-encoded and resent (nothing of it was lost:
    the batch stays with the producer)."""


def _queue(pipe: Any, keys: Keys, payloads: Payloads, known: set[str]) -> list[str]:
    """Queue the registration of services new to this writer and one FCALL per payload."""
    new = sorted({s for s, _ in payloads if s not in known})
    if new:  # a service that sends again is no longer retired
        pipe.sadd(keys.services, *new)
        pipe.srem(keys.retired, *new)
    for service, body in payloads:
        pipe.fcall("ad_ingest", 1, keys.state(service), keys.prefix, service, body)
    return new


def _tally(payloads: Payloads, replies: list[Any],
           per_service: dict[str, IngestResult] | None = None) -> tuple[IngestResult, set[str]]:
    """The server's answers added up (also per service into `per_service`), and the services that refused
    the config as stale."""
    total = IngestResult()
    stale: set[str] = set()
    for (service, _), reply in zip(payloads, replies, strict=True):
        if is_stale_config(reply):
            stale.add(service)
            continue
        if isinstance(reply, _TRANSIENT):  # a failover in progress: retried like an unreachable server
            raise redis.ConnectionError(f"{service}: {reply}")
        if isinstance(reply, redis.ResponseError):
            raise InvalidBatch(f"{service}: {reply}")
        n = IngestReply.parse(reply)
        result = IngestResult(n.accepted, n.late, n.duplicate, n.sealed, n.kpis_accepted, n.kpis_late,
                              n.history_sealed)
        total = total + result
        if per_service is not None:
            per_service[service] = per_service.get(service, IngestResult()) + result
    return total, stale


def _only(columns: dict[str, Columns], services: set[str] | None) -> dict[str, Columns]:
    return columns if services is None else {s: c for s, c in columns.items() if s in services}


def _stale_error(stale: set[str]) -> ConfigChanged:
    return ConfigChanged(f"the server's setup kept changing while sending to {', '.join(sorted(stale))}; "
                         f"the batch was not stored")


# ------------------------------------------------------------------------------------------------
# synchronous writes
# ------------------------------------------------------------------------------------------------
class _Writer:
    """Sends encoded payloads; remembers the services it registered and the server config."""

    def __init__(self, r: redis.Redis, keys: Keys):
        self.r = r
        self.keys = keys
        self._known: set[str] = set()
        self._config: Config | None = None
        self._retry_at = 0.0

    def config(self) -> Config:
        """The server's settings, re-read every few seconds; while a re-read fails, the cached ones.

        Only the first read may raise: during a Redis outage a producer (the demo's traffic thread)
        keeps encoding with what it knows, and its write is what fails and is retried.
        """
        now = time.monotonic()
        if self._config is not None and (now - self._config.read_at <= _CONFIG_TTL_SECONDS or now < self._retry_at):
            return self._config
        return self.refresh()

    def refresh(self) -> Config:
        """Read the server's settings now (see `config`)."""
        now = time.monotonic()
        try:
            stored = read_settings(self.r, self.keys)
            if not stored.configured:
                setup(self.r, SketchSettings(), keys=self.keys)
                stored = read_settings(self.r, self.keys)
            elif self._config is None:
                ensure_library(self.r)
        except _RETRYABLE as err:
            if self._config is None:
                raise
            log.debug("keeping the cached settings: re-reading them failed (%s)", err)
            self._retry_at = now + _CONFIG_RETRY_SECONDS
            return self._config
        self._config = config_from(stored.settings, stored.backend, stored.generation)
        self._known.clear()  # re-register services now and then: the server may have lost them
        return self._config

    def write(self, payloads: Payloads, reencode: Reencode | None = None) -> IngestResult:
        """Send encoded payloads: one FCALL each, pipelined. Services that refuse the config as changed
        get `reencode`'s payloads for the config read again (ConfigChanged without it, or if it keeps changing)."""
        total = IngestResult()
        for attempt in range(_CONFIG_RETRIES + 1):
            result, stale = self._send(payloads)
            total = total + result
            if not stale:
                return total
            if reencode is None or attempt == _CONFIG_RETRIES:
                raise _stale_error(stale)
            log.info("setup changed on the server: re-encoding for %s", ", ".join(sorted(stale)))
            config = self.refresh()
            configure_services(self.r, sorted(stale), config, self.keys)
            payloads = reencode(config, stale)
        raise AssertionError("unreachable")

    def _send(self, payloads: Payloads) -> tuple[IngestResult, set[str]]:
        if not payloads:
            return IngestResult(), set()
        pipe = self.r.pipeline(transaction=False)
        new = _queue(pipe, self.keys, payloads, self._known)
        replies = pipe.execute(raise_on_error=False)[2 if new else 0:]
        if any(is_missing_function(x) for x in replies):
            ensure_library(self.r)  # the server lost its functions (restart without persistence)
            self._known.clear()
            return self._send(payloads)
        self._known.update(new)
        return _tally(payloads, replies)

    def write_retrying(self, payloads: Payloads, attempts: int = SINK_RETRY_ATTEMPTS,
                       reencode: Reencode | None = None) -> IngestResult:
        delay = SINK_RETRY_BASE_SECONDS
        for attempt in range(attempts):
            try:
                return self.write(payloads, reencode)
            except _RETRYABLE:
                if attempt == attempts - 1:
                    raise
                log.warning("Redis unreachable, retrying batch in %.2fs", delay)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, SINK_RETRY_MAX_SECONDS)
        raise AssertionError("unreachable")


# one writer per client and key prefix, so one-off `ingest` calls do not re-read the config and
# re-check the library (FUNCTION LIST) every time
_WRITERS: weakref.WeakKeyDictionary[redis.Redis, dict[str, _Writer]] = weakref.WeakKeyDictionary()
_WRITERS_LOCK = threading.Lock()


def _writer_for(r: redis.Redis, keys: Keys | None) -> _Writer:
    keys = keys or Keys(key_prefix())
    with _WRITERS_LOCK:
        per_prefix = _WRITERS.setdefault(r, {})
        writer = per_prefix.get(keys.prefix)
        if writer is None:
            writer = per_prefix[keys.prefix] = _Writer(r, keys)
        return writer


def ingest(r: redis.Redis, events: Iterable[Event], *, batch_id: str | None = None,
           replay: bool = False, keys: Keys | None = None) -> IngestResult:
    """Write validated events now: one pre-aggregated FCALL per service, pipelined."""
    writer = _writer_for(r, keys)
    columns, batch = columns_of(events), batch_id or uuid.uuid4().hex

    def reencode(config: Config, services: set[str] | None) -> Payloads:
        return encode(_only(columns, services), config, replay, batch)

    return writer.write(reencode(writer.config(), None), reencode)


def ingest_aggregates(r: redis.Redis, service: str, windows: Sequence[WindowAggregate], *,
                      kpis: Sequence[BusinessMetric] = (), batch_id: str | None = None, replay: bool = False,
                      sparse: bool = False, keys: Keys | None = None) -> IngestResult:
    """Write pre-aggregated windows of one service now (the synchronous twin of AsyncWriter's)."""
    writer = _writer_for(r, keys)
    batch = batch_id or uuid.uuid4().hex

    def reencode(config: Config, _services: set[str] | None) -> Payloads:
        return encode_aggregates(service, windows, config, kpis=kpis, replay=replay, batch_id=batch, sparse=sparse)

    return writer.write(reencode(writer.config(), None), reencode)


# ------------------------------------------------------------------------------------------------
# asynchronous writes (the collector)
# ------------------------------------------------------------------------------------------------
class AsyncWriter:
    """The async twin of the sink's writer, for one long-lived redis.asyncio client."""

    def __init__(self, ar: redis.asyncio.Redis, keys: Keys | None = None):
        self.ar = ar
        self.keys = keys or Keys(key_prefix())
        self._known: set[str] = set()
        self._config: Config | None = None

    async def config(self, *, fresh: bool = False) -> Config:
        """The server's settings (re-read every few seconds, or now); setup must have run (the collector does it)."""
        if fresh or self._config is None or time.monotonic() - self._config.read_at > _CONFIG_TTL_SECONDS:
            stored = read_settings(_DictReader(await self.ar.hgetall(self.keys.config)), self.keys)
            if not stored.configured:
                raise NotSetUp("AnomalyDesk is not set up on this server: run `anomalydesk setup`")
            self._config = config_from(stored.settings, stored.backend, stored.generation)
            self._known.clear()
        return self._config

    async def ingest(self, events: Iterable[Event], *, batch_id: str | None = None,
                     replay: bool = False, sparse: bool = False) -> IngestResult:
        """Encode validated events and write them now."""
        columns, batch = columns_of(events), batch_id or uuid.uuid4().hex

        def reencode(config: Config, services: set[str] | None) -> Payloads:
            return encode(_only(columns, services), config, replay, batch, sparse)

        return await self.write(reencode(await self.config(), None), reencode)

    async def write(self, payloads: Payloads, reencode: Reencode | None = None, *,
                    per_service: dict[str, IngestResult] | None = None) -> IngestResult:
        """Send encoded payloads (from `encode` or `encode_aggregates`): one FCALL each, pipelined; services
        that refuse the config as changed get `reencode`'s payloads for the config read again. The server's
        answers are also added up per service into `per_service` when given."""
        total = IngestResult()
        for attempt in range(_CONFIG_RETRIES + 1):
            result, stale = await self._send(payloads, per_service)
            total = total + result
            if not stale:
                return total
            if reencode is None or attempt == _CONFIG_RETRIES:
                raise _stale_error(stale)
            log.info("setup changed on the server: re-encoding for %s", ", ".join(sorted(stale)))
            config = await self.config(fresh=True)
            await self._configure(sorted(stale), config)
            payloads = reencode(config, stale)
        raise AssertionError("unreachable")

    async def _configure(self, services: list[str], config: Config) -> None:
        """`store.admin.configure_services` on the async client."""
        cfg = orjson.dumps(config.payload_cfg)
        pipe = self.ar.pipeline(transaction=False)
        for service in services:
            pipe.fcall("ad_configure", 1, self.keys.state(service), self.keys.prefix, service, cfg)
        for service, reply in zip(services, await pipe.execute(raise_on_error=False), strict=True):
            if isinstance(reply, redis.ResponseError) and not str(reply).startswith(STALE_CONFIG):
                raise InvalidBatch(f"{service}: configuring it for the new setup failed: {reply}")

    async def _send(self, payloads: Payloads,
                    per_service: dict[str, IngestResult] | None = None) -> tuple[IngestResult, set[str]]:
        if not payloads:
            return IngestResult(), set()
        if len(payloads) == 1 and payloads[0][0] in self._known:
            replies = [await self._fcall_one(*payloads[0])]  # a pipeline costs more client CPU than the call
            new: list[str] = []
        else:
            pipe = self.ar.pipeline(transaction=False)
            new = _queue(pipe, self.keys, payloads, self._known)
            replies = (await pipe.execute(raise_on_error=False))[2 if new else 0:]
        if any(is_missing_function(x) for x in replies):
            # the server lost its functions (restarted without persistence): the version was
            # checked at start-up, so loading our library is safe
            await self.ar.function_load(library_source()[0], replace=True)
            self._known.clear()
            return await self._send(payloads, per_service)
        self._known.update(new)
        return _tally(payloads, replies, per_service)

    async def _fcall_one(self, service: str, body: bytes) -> Any:
        """One ingest call without a pipeline; a server error is returned like a pipeline's reply."""
        try:
            return await self.ar.fcall("ad_ingest", 1, self.keys.state(service), self.keys.prefix, service, body)
        except redis.ResponseError as err:
            return err

    async def ingest_aggregates(self, service: str, windows: Sequence[WindowAggregate], *,
                                kpis: Sequence[BusinessMetric] = (), batch_id: str | None = None,
                                replay: bool = False, sparse: bool = False) -> IngestResult:
        """Write pre-aggregated windows (OTLP histograms, scrapes) without inventing single events."""
        batch = batch_id or uuid.uuid4().hex

        def reencode(config: Config, _services: set[str] | None) -> Payloads:
            return encode_aggregates(service, windows, config, kpis=kpis, replay=replay, batch_id=batch, sparse=sparse)

        return await self.write(reencode(await self.config(), None), reencode)


class _DictReader:
    """Just enough of a client for read_settings() over an already-fetched config hash."""

    def __init__(self, raw: dict):
        self._raw = raw

    def hgetall(self, _key: str) -> dict:
        return self._raw


async def ingest_async(ar: redis.asyncio.Redis, events: Iterable[Event], *, batch_id: str | None = None,
                       replay: bool = False, keys: Keys | None = None) -> IngestResult:
    """Async `ingest` for one-off calls; long-lived producers keep an AsyncWriter."""
    return await AsyncWriter(ar, keys).ingest(events, batch_id=batch_id, replay=replay)


# ------------------------------------------------------------------------------------------------
# the buffered producer
# ------------------------------------------------------------------------------------------------
class IngestSink:
    """A buffered, bounded, thread-safe producer; flushes on size, on time (after `start()`), on close."""

    def __init__(self, r: redis.Redis, *, replay: bool = False, max_batch: int = SINK_MAX_BATCH_EVENTS,
                 max_buffered: int = SINK_MAX_BUFFERED_EVENTS, flush_interval: float = SINK_FLUSH_SECONDS,
                 retry_attempts: int = SINK_RETRY_ATTEMPTS, keys: Keys | None = None):
        self.retry_attempts = retry_attempts
        self.replay = replay
        self.max_batch = max_batch
        self.max_buffered = max_buffered
        self.flush_interval = flush_interval
        self._writer = _Writer(r, keys or Keys(key_prefix()))
        self._lock = threading.Lock()  # guards the buffer
        self._flush_lock = threading.Lock()  # one flush at a time, in order
        self._columns: dict[str, Columns] = {}
        self._buffered = 0
        # encoded, not yet acknowledged: (payloads, their columns and batch id for a re-encoding, events)
        self._pending: list[tuple[Payloads, dict[str, Columns], str, int]] = []
        self._pending_events = 0
        self.totals = IngestResult()
        self.last_error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def buffered(self) -> int:
        """Events taken but not yet acknowledged by Redis."""
        return self._buffered + self._pending_events

    def _reserve(self, n: int) -> None:
        if self.buffered + n > self.max_buffered:
            raise BufferFull(
                f"ingest buffer full ({self.buffered} events waiting, limit {self.max_buffered}); "
                f"Redis unreachable? last error: {self.last_error}"
            )

    def _cols(self, service: str) -> Columns:
        cols = self._columns.get(service)
        if cols is None:
            cols = self._columns[service] = Columns()
        return cols

    def add(self, event: Event) -> None:
        """Buffer one validated event (flushes when `max_batch` are buffered); BufferFull when the buffer is."""
        # the per-event path of every producer: `_reserve` and `_cols` inlined
        with self._lock:
            if self._buffered + self._pending_events >= self.max_buffered:
                self._reserve(1)
            cols = self._columns.get(event.service)
            if cols is None:
                cols = self._columns[event.service] = Columns()
            if type(event) is BusinessMetric:
                cols.kpis.append((event.name, event.value, event.low, event.high, event.timestamp))
            else:
                cols.add_metric(event)  # type: ignore[arg-type]
            self._buffered += 1
            full = self._buffered >= self.max_batch
        if full:
            self.flush()

    def add_many(self, events: Iterable[Event]) -> None:
        for event in events:
            self.add(event)

    def add_business(self, service: str, name: str, value: float, low: float | None = None,
                     high: float | None = None, timestamp: float | None = None) -> None:
        self.add(BusinessMetric(service, name, value, low, high, timestamp))

    def add_arrays(self, service: str, endpoints: Sequence[str], endpoint_idx: np.ndarray, status: np.ndarray,
                   latency_ms: np.ndarray, timestamps: np.ndarray | None = None) -> None:
        """Vectorised path: `endpoints` are normalised names, `endpoint_idx` indexes them per event."""
        n = len(endpoint_idx)
        if not (len(status) == len(latency_ms) == n and (timestamps is None or len(timestamps) == n)):
            raise ValueError("add_arrays: endpoint_idx, status, latency_ms and timestamps differ in length")
        if n == 0:
            return
        for name in endpoints:
            if normalize_endpoint(name) != name:  # cached: costs a dict lookup per distinct name
                raise ValueError(f"add_arrays: endpoint {name!r} is not normalised ({normalize_endpoint(name)!r})")
        status = np.asarray(status)
        latency_ms = np.asarray(latency_ms, dtype=np.float64)
        if status.min() < 100 or status.max() > 599:
            raise ValueError("add_arrays: status codes must be within 100..599")
        if not np.isfinite(latency_ms).all() or latency_ms.min() < 0:
            raise ValueError("add_arrays: latencies must be finite and >= 0")
        with self._lock:
            self._reserve(n)
            self._cols(service).add_arrays(endpoints, endpoint_idx, status, latency_ms, timestamps)
            self._buffered += n
            full = self._buffered >= self.max_batch
        if full:
            self.flush()

    def flush(self) -> IngestResult:
        """Send everything buffered; raises when Redis stays unreachable (the events stay buffered)."""
        with self._flush_lock:
            with self._lock:
                columns, self._columns = self._columns, {}
                taken, self._buffered = self._buffered, 0
                if taken:
                    batch = uuid.uuid4().hex
                    try:
                        payloads = encode(columns, self._writer.config(), self.replay, batch)
                    except Exception:
                        self._columns, self._buffered = columns, taken
                        raise
                    self._pending.append((payloads, columns, batch, taken))
                    self._pending_events += taken
            result = IngestResult()
            while self._pending:
                payloads, columns, batch, count = self._pending[0]

                def reencode(config: Config, services: set[str] | None, columns=columns, batch=batch) -> Payloads:
                    return encode(_only(columns, services), config, self.replay, batch)

                try:
                    result = result + self._writer.write_retrying(payloads, self.retry_attempts, reencode)
                except (*_RETRYABLE, ConfigChanged) as err:
                    self.last_error = err
                    raise
                self._pending.pop(0)
                self._pending_events -= count
            self.totals = self.totals + result
            return result

    def start(self) -> IngestSink:
        """Flush every `flush_interval` seconds in a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="anomalydesk-sink", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval):
            try:
                self.flush()
            except _RETRYABLE:
                pass  # kept in the buffer, retried next tick; add() raises BufferFull when it fills
            except Exception as err:
                self.last_error = err
                log.exception("ingest flush failed")

    def close(self) -> IngestResult:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self.flush()

    def __enter__(self) -> IngestSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
