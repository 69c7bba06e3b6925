"""The buffered producer (`IngestSink`): events taken from many threads, written by size, by time, on close.

Two locks: `_lock` guards the buffer and is held only to add to it or to swap it out, never across a
call to Redis, so a producer's `add` does not wait for a slow or unreachable server; `_flush_lock`
keeps flushes one at a time and in order (the settings read, the encoding and the write happen under
it alone). A producer whose `add` fills a batch flushes it itself and waits for that flush: that is
the back-pressure; until then, or when Redis is away, events wait up to `max_buffered` (BufferFull).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import redis

from anomalydesk.config import (
    SINK_FLUSH_SECONDS,
    SINK_MAX_BATCH_EVENTS,
    SINK_MAX_BUFFERED_EVENTS,
    SINK_RETRY_ATTEMPTS,
    SINK_RETRY_BASE_SECONDS,
    SINK_RETRY_MAX_SECONDS,
    key_prefix,
)
from anomalydesk.events import BusinessMetric, normalize_endpoint
from anomalydesk.store.encoding import Columns, Config, Event, encode
from anomalydesk.store.ingest_core import RETRYABLE, ConfigChanged, IngestResult, InvalidBatch, Payloads, only
from anomalydesk.store.keys import Keys
from anomalydesk.store.writer import Writer

log = logging.getLogger(__name__)


class BufferFull(RuntimeError):
    """The sink's bounded buffer is full (Redis unreachable for too long); the event was not taken."""


@dataclass
class _Batch:
    """Events swapped out of the buffer, not yet acknowledged: encoded once (again only if the setup changed)."""

    columns: dict[str, Columns]
    batch_id: str
    events: int
    payloads: Payloads | None = None


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
        self._writer = Writer(r, keys or Keys(key_prefix()))
        self._lock = threading.Lock()  # guards the buffer; never held across a call to Redis
        self._flush_lock = threading.Lock()  # one flush at a time, in order
        self._columns: dict[str, Columns] = {}
        self._buffered = 0
        self._pending: list[_Batch] = []  # swapped out, in order; only touched under _flush_lock
        self._pending_events = 0
        self.totals = IngestResult()
        self.last_error: BaseException | None = None
        self.refused_batches = 0  # batches the server refused (InvalidBatch): dropped, not retried
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
            with self._lock:  # the swap: nothing but memory under the buffer's lock
                columns, self._columns = self._columns, {}
                taken, self._buffered = self._buffered, 0
                self._pending_events += taken
            if taken:
                self._pending.append(_Batch(columns, uuid.uuid4().hex, taken))
            result = IngestResult()
            while self._pending:
                batch = self._pending[0]
                try:
                    result = result + self._write(batch)
                except (*RETRYABLE, ConfigChanged) as err:
                    self.last_error = err
                    raise
                except InvalidBatch as err:  # refused as it is: it can never be written, the rest must be
                    self.last_error = err
                    self.refused_batches += 1
                    self._pending.pop(0)
                    with self._lock:
                        self._pending_events -= batch.events
                    log.error("batch of %d events refused by the server and dropped (%s); the other services' "
                              "payloads of it were stored", batch.events, err)
                    raise
                self._pending.pop(0)
                with self._lock:
                    self._pending_events -= batch.events
            self.totals = self.totals + result
            return result

    def _write(self, batch: _Batch) -> IngestResult:
        """Encode a swapped-out batch (once) and write it, retrying while Redis is unreachable."""
        def reencode(config: Config, services: set[str] | None) -> Payloads:
            return encode(only(batch.columns, services), config, self.replay, batch.batch_id)

        delay = SINK_RETRY_BASE_SECONDS
        for attempt in range(self.retry_attempts):
            try:
                if batch.payloads is None:
                    batch.payloads = reencode(self._writer.config(), None)
                return self._writer.write(batch.payloads, reencode)
            except RETRYABLE:
                if attempt == self.retry_attempts - 1:
                    raise
                log.warning("Redis unreachable, retrying batch in %.2fs", delay)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, SINK_RETRY_MAX_SECONDS)
        raise AssertionError("unreachable")

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
            except RETRYABLE:
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
