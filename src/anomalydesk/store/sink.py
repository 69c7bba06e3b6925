"""The ingestion API (direct sink): validated events → pre-aggregated batches → one FCALL per service.

Pre-aggregation loses nothing the server keeps: a window's aggregates are sums (requests, 4xx, 5xx,
latency sum, histogram bucket counts, per-endpoint and per-status counts), and the sketches take
increments per distinct item. So a batch of thousands of events becomes one small payload per
service (per window in replay mode) and one atomic FCALL. A batch id per service makes a retry after
a lost reply a no-op on the server.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import orjson
import redis
import redis.asyncio

from anomalydesk.config import (
    MAX_SILENT_WINDOWS_SEALED,
    RAW_STREAM_MAXLEN,
    REPLAY_CLOCK_HOLD_SECONDS,
    SINK_FLUSH_SECONDS,
    SINK_MAX_BATCH_EVENTS,
    SINK_MAX_BUFFERED_EVENTS,
    SINK_RETRY_ATTEMPTS,
    SINK_RETRY_BASE_SECONDS,
    SINK_RETRY_MAX_SECONDS,
    SketchSettings,
    key_prefix,
)
from anomalydesk.events import BusinessMetric, Metric, normalize_endpoint
from anomalydesk.fingerprint import latency_buckets
from anomalydesk.store.admin import read_settings, setup
from anomalydesk.store.gears import ensure_library, library_source
from anomalydesk.store.keys import Keys

log = logging.getLogger(__name__)

_CONFIG_TTL_SECONDS = 5.0
_RAW_RNG = np.random.default_rng()
MAX_ENDPOINTS_PER_CALL = 2_000
_RETRYABLE = (redis.ConnectionError, redis.TimeoutError)
Event = Metric | BusinessMetric


class IngestResult(NamedTuple):
    accepted: int = 0
    late: int = 0
    duplicate_batches: int = 0
    sealed: int = 0

    def __add__(self, other: tuple) -> IngestResult:  # type: ignore[override]
        return IngestResult(*(a + b for a, b in zip(self, other, strict=True)))


class BufferFull(RuntimeError):
    """The sink's bounded buffer is full (Redis unreachable for too long); the event was not taken."""


class NotSetUp(RuntimeError):
    """`anomalydesk setup` never ran on this server."""


class InvalidBatch(ValueError):
    """The server refused a batch as invalid (nothing of it was written)."""


# ------------------------------------------------------------------------------------------------
# encoding: columns → per-service payloads
# ------------------------------------------------------------------------------------------------
@dataclass
class _Columns:
    """One service's buffered events, column-wise."""

    vocab: dict[str, int] = field(default_factory=dict)
    ep: list[np.ndarray] = field(default_factory=list)
    status: list[np.ndarray] = field(default_factory=list)
    latency: list[np.ndarray] = field(default_factory=list)
    ts: list[np.ndarray] = field(default_factory=list)
    # per-event path, converted to arrays at encode time
    ep_list: list[int] = field(default_factory=list)
    status_list: list[int] = field(default_factory=list)
    latency_list: list[float] = field(default_factory=list)
    ts_list: list[float] = field(default_factory=list)
    kpis: list[tuple[str, float, float | None, float | None, float | None]] = field(default_factory=list)
    count: int = 0

    def add_metric(self, m: Metric) -> None:
        self.ep_list.append(self.vocab.setdefault(m.endpoint, len(self.vocab)))
        self.status_list.append(m.status)
        self.latency_list.append(m.latency_ms)
        self.ts_list.append(math.nan if m.timestamp is None else m.timestamp)
        self.count += 1

    def add_arrays(self, endpoints: Sequence[str], idx: np.ndarray, status: np.ndarray,
                   latency: np.ndarray, ts: np.ndarray | None) -> None:
        remap = np.fromiter((self.vocab.setdefault(e, len(self.vocab)) for e in endpoints),
                            dtype=np.int64, count=len(endpoints))
        self.ep.append(remap[np.asarray(idx, dtype=np.int64)])
        self.status.append(np.asarray(status, dtype=np.int64))
        self.latency.append(np.asarray(latency, dtype=np.float64))
        self.ts.append(np.full(len(idx), math.nan) if ts is None else np.asarray(ts, dtype=np.float64))
        self.count += len(idx)

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        ep, st, lat, ts = list(self.ep), list(self.status), list(self.latency), list(self.ts)
        if self.ep_list:
            ep.append(np.asarray(self.ep_list, dtype=np.int64))
            st.append(np.asarray(self.status_list, dtype=np.int64))
            lat.append(np.asarray(self.latency_list, dtype=np.float64))
            ts.append(np.asarray(self.ts_list, dtype=np.float64))
        if not ep:
            empty_i, empty_f = np.empty(0, np.int64), np.empty(0, np.float64)
            return empty_i, empty_i, empty_f, empty_f
        return np.concatenate(ep), np.concatenate(st), np.concatenate(lat), np.concatenate(ts)


def _pairs(keys: np.ndarray, counts: np.ndarray, lo: int, hi: int, key_of) -> list:
    out: list = []
    for k, c in zip(keys[lo:hi].tolist(), counts[lo:hi].tolist(), strict=True):
        out.append(key_of(k))
        out.append(c)
    return out


def _window_groups(ep: np.ndarray, st: np.ndarray, lat: np.ndarray, ts: np.ndarray, names: list[str],
                   replay: bool, window_s: int) -> list[dict[str, Any]]:
    if len(ep) == 0:
        return []
    if replay:
        if np.isnan(ts).any():
            raise ValueError("replay mode needs a timestamp on every event")
        win = np.floor(ts / window_s).astype(np.int64)
    else:
        win = np.zeros(len(ep), dtype=np.int64)
    windows, winv = np.unique(win, return_inverse=True)
    nwin = len(windows)
    n = np.bincount(winv, minlength=nwin)
    e4 = np.bincount(winv, weights=(st >= 400) & (st < 500), minlength=nwin)
    e5 = np.bincount(winv, weights=st >= 500, minlength=nwin)
    ls = np.bincount(winv, weights=lat, minlength=nwin)
    vsize = max(len(names), 1)

    def grouped(keys: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        uniq, counts = np.unique(winv * base + keys, return_counts=True)
        bounds = np.searchsorted(uniq // base, np.arange(nwin + 1))
        return uniq % base, counts, bounds

    hk, hc, hb = grouped(latency_buckets(lat), 256)
    ek, ec, eb = grouped(ep, vsize)
    sk, sc, sb = grouped(st, 1000)
    groups = []
    for i in range(nwin):
        groups.append({
            "win": int(windows[i]) if replay else 0,
            "n": int(n[i]), "e4": int(e4[i]), "e5": int(e5[i]), "ls": float(ls[i]),
            "h": _pairs(hk, hc, hb[i], hb[i + 1], int),
            "ep": _pairs(ek, ec, eb[i], eb[i + 1], names.__getitem__),
            "st": _pairs(sk, sc, sb[i], sb[i + 1], int),
        })
    return groups


def _raw_rows(ep: np.ndarray, st: np.ndarray, lat: np.ndarray, ts: np.ndarray, names: list[str],
              sample: float) -> list[list[Any]]:
    """Full-fidelity mode: a random `sample` share of the events, kept raw by the server."""
    if sample <= 0 or len(ep) == 0:
        return []
    picked = np.flatnonzero(_RAW_RNG.random(len(ep)) < sample) if sample < 1 else np.arange(len(ep))
    return [[names[e], s, la, None if t != t else t]
            for e, s, la, t in zip(ep[picked].tolist(), st[picked].tolist(), lat[picked].tolist(),
                                   ts[picked].tolist(), strict=True)]


def _kpi_rows(cols: _Columns, replay: bool, window_s: int) -> list[list[Any]]:
    agg: dict[tuple[int, str], list[Any]] = {}
    for name, value, low, high, ts in cols.kpis:
        if replay and ts is None:
            raise ValueError("replay mode needs a timestamp on every business metric")
        win = int(ts // window_s) if replay and ts is not None else 0
        row = agg.setdefault((win, name), [win, name, 0.0, 0, 0, None, None, value, value])
        row[2] += value
        row[3] += 1
        row[7], row[8] = min(row[7], value), max(row[8], value)
        if low is not None and high is not None:
            row[5], row[6] = low, high
            if not low <= value <= high:
                row[4] += 1
    return list(agg.values())


@dataclass(frozen=True)
class _Config:
    window_s: int
    payload_cfg: dict[str, Any]
    retention: int
    read_at: float
    raw_sample: float = 0.0


def _config_from(settings: SketchSettings, backend: str) -> _Config:
    width, depth = settings.cms_dims()
    cfg = {"W": settings.window_seconds, "cw": width, "cd": depth, "fc": settings.filter_capacity,
           "fe": settings.filter_error, "tk": settings.topk, "ret": settings.retention, "be": backend,
           "rm": RAW_STREAM_MAXLEN}
    return _Config(settings.window_seconds, cfg, settings.retention, time.monotonic(), settings.raw_sample)


def encode(columns: dict[str, _Columns], config: _Config, replay: bool, batch_id: str | None,
           sparse: bool = False) -> list[tuple[str, bytes]]:
    """Per-service FCALL payloads for buffered columns: [(service, payload JSON)]."""
    out = []
    for service, cols in columns.items():
        ep, st, lat, ts = cols.columns()
        names = list(cols.vocab)
        # one FCALL's work grows with the distinct endpoints it updates: split a high-cardinality
        # batch by endpoint so no call blocks the server for long (each part has its own batch id)
        parts = max(1, math.ceil(len(names) / MAX_ENDPOINTS_PER_CALL))
        for part in range(parts):
            sel = slice(None) if parts == 1 else (ep // MAX_ENDPOINTS_PER_CALL) == part
            groups = _window_groups(ep[sel], st[sel], lat[sel], ts[sel], names, replay, config.window_s)
            raw = _raw_rows(ep[sel], st[sel], lat[sel], ts[sel], names, config.raw_sample)
            kpis = _kpi_rows(cols, replay, config.window_s) if part == 0 else []
            if not groups and not kpis:
                continue
            payload = {"v": 1, "mode": "replay" if replay else "live",
                       "batch": batch_id if parts == 1 or batch_id is None else f"{batch_id}:{part}",
                       "sparse": 1 if sparse else 0, "cfg": config.payload_cfg, "w": groups, "k": kpis}
            if raw:
                payload["raw"] = raw
            out.append((service, orjson.dumps(payload)))
    return out


@dataclass
class WindowAggregate:
    """One window's pre-aggregated traffic of a service, as the gears payload takes it.

    `hist` maps latency buckets (`fingerprint.latency_bucket`) to counts; `hist`, `endpoints` and
    `statuses` each add up to `n`. `window` is the window index in replay mode (ignored live).
    """

    n: int = 0
    e4: int = 0
    e5: int = 0
    latency_sum_ms: float = 0.0
    hist: dict[int, int] = field(default_factory=dict)
    endpoints: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    window: int = 0

    def check(self) -> None:
        """Raise ValueError naming the part that does not add up (the server would refuse it)."""
        for name, part in (("hist", self.hist), ("endpoints", self.endpoints), ("statuses", self.statuses)):
            if sum(part.values()) != self.n:
                raise ValueError(f"window aggregate: {name} counts add up to {sum(part.values())}, not n={self.n}")
        if not (0 <= self.e4 <= self.n and 0 <= self.e5 <= self.n and self.e4 + self.e5 <= self.n):
            raise ValueError(f"window aggregate: e4={self.e4}/e5={self.e5} must lie within n={self.n}")
        if len(self.endpoints) > MAX_ENDPOINTS_PER_CALL:
            raise ValueError(f"window aggregate: {len(self.endpoints)} endpoints, at most {MAX_ENDPOINTS_PER_CALL}")
        if not math.isfinite(self.latency_sum_ms) or self.latency_sum_ms < 0:
            raise ValueError("window aggregate: latency_sum_ms must be finite and >= 0")


def encode_aggregates(service: str, windows: Sequence[WindowAggregate], config: _Config, *,
                      kpis: Sequence[BusinessMetric] = (), replay: bool = False, batch_id: str | None = None,
                      sparse: bool = False) -> list[tuple[str, bytes]]:
    """The FCALL payload for pre-aggregated windows (and business KPIs) of one service: [(service, JSON)]."""
    groups = []
    for w in windows:
        w.check()
        if w.n == 0:
            continue
        groups.append({
            "win": int(w.window) if replay else 0, "n": int(w.n), "e4": int(w.e4), "e5": int(w.e5),
            "ls": float(w.latency_sum_ms),
            "h": [x for b, c in sorted(w.hist.items()) if c for x in (int(b), int(c))],
            "ep": [x for e, c in w.endpoints.items() if c for x in (e, int(c))],
            "st": [x for s, c in sorted(w.statuses.items()) if c for x in (int(s), int(c))],
        })
    cols = _Columns()
    cols.kpis = [(k.name, k.value, k.low, k.high, k.timestamp) for k in kpis]
    rows = _kpi_rows(cols, replay, config.window_s)
    if not groups and not rows:
        return []
    payload = {"v": 1, "mode": "replay" if replay else "live", "batch": batch_id, "sparse": 1 if sparse else 0,
               "cfg": config.payload_cfg, "w": groups, "k": rows}
    return [(service, orjson.dumps(payload))]


def ingest_aggregates(r: redis.Redis, service: str, windows: Sequence[WindowAggregate], *,
                      kpis: Sequence[BusinessMetric] = (), batch_id: str | None = None, replay: bool = False,
                      sparse: bool = False, keys: Keys | None = None) -> IngestResult:
    """Write pre-aggregated windows of one service now (the synchronous twin of AsyncWriter's)."""
    writer = _Writer(r, keys or Keys(key_prefix()))
    return writer.write(encode_aggregates(service, windows, writer.config(), kpis=kpis, replay=replay,
                                          batch_id=batch_id or uuid.uuid4().hex, sparse=sparse))


def columns_of(events: Iterable[Event]) -> dict[str, _Columns]:
    columns: dict[str, _Columns] = {}
    for e in events:
        cols = columns.get(e.service)
        if cols is None:
            cols = columns[e.service] = _Columns()
        if type(e) is BusinessMetric:
            cols.kpis.append((e.name, e.value, e.low, e.high, e.timestamp))
        else:
            cols.add_metric(e)  # type: ignore[arg-type]
    return columns


def _result_of(service: str, reply: Any) -> IngestResult:
    if isinstance(reply, redis.ResponseError):
        raise InvalidBatch(f"{service}: {reply}")
    accepted, late, sealed, duplicate = (int(x) for x in reply)
    return IngestResult(accepted, late, duplicate, sealed)


def _is_missing_function(err: Exception) -> bool:
    return isinstance(err, redis.ResponseError) and "function not found" in str(err).lower()


# ------------------------------------------------------------------------------------------------
# synchronous writes
# ------------------------------------------------------------------------------------------------
class _Writer:
    """Sends encoded payloads; remembers the services it registered and the server config."""

    def __init__(self, r: redis.Redis, keys: Keys):
        self.r = r
        self.keys = keys
        self._known: set[str] = set()
        self._config: _Config | None = None

    def config(self) -> _Config:
        if self._config is None or time.monotonic() - self._config.read_at > _CONFIG_TTL_SECONDS:
            stored = read_settings(self.r, self.keys)
            if not stored.configured:
                setup(self.r, SketchSettings(), keys=self.keys)
                stored = read_settings(self.r, self.keys)
            elif self._config is None:
                ensure_library(self.r)
            self._config = _config_from(stored.settings, stored.backend)
            self._known.clear()  # re-register services now and then: the server may have lost them
        return self._config

    def write(self, payloads: list[tuple[str, bytes]]) -> IngestResult:
        if not payloads:
            return IngestResult()
        pipe = self.r.pipeline(transaction=False)
        new = [s for s, _ in payloads if s not in self._known]
        if new:
            pipe.sadd(self.keys.services, *new)
            pipe.srem(self.keys.retired, *new)
        for service, body in payloads:
            pipe.fcall("ad_ingest", 1, self.keys.state(service), self.keys.prefix, service, body)
        replies = pipe.execute(raise_on_error=False)[2 if new else 0:]
        if any(_is_missing_function(x) for x in replies):
            ensure_library(self.r)  # the server lost its functions (restart without persistence)
            self._known.clear()
            return self.write(payloads)
        self._known.update(new)
        total = IngestResult()
        for (service, _), reply in zip(payloads, replies, strict=True):
            total = total + _result_of(service, reply)
        return total

    def write_retrying(self, payloads: list[tuple[str, bytes]], attempts: int = SINK_RETRY_ATTEMPTS) -> IngestResult:
        delay = SINK_RETRY_BASE_SECONDS
        for attempt in range(attempts):
            try:
                return self.write(payloads)
            except _RETRYABLE:
                if attempt == attempts - 1:
                    raise
                log.warning("Redis unreachable, retrying batch in %.2fs", delay)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, SINK_RETRY_MAX_SECONDS)
        raise AssertionError("unreachable")


def ingest(r: redis.Redis, events: Iterable[Event], *, batch_id: str | None = None,
           replay: bool = False, keys: Keys | None = None) -> IngestResult:
    """Write validated events now: one pre-aggregated FCALL per service, pipelined."""
    writer = _Writer(r, keys or Keys(key_prefix()))
    return writer.write(encode(columns_of(events), writer.config(), replay, batch_id or uuid.uuid4().hex))


# ------------------------------------------------------------------------------------------------
# asynchronous writes (the collector)
# ------------------------------------------------------------------------------------------------
class AsyncWriter:
    """The async twin of the sink's writer, for one long-lived redis.asyncio client."""

    def __init__(self, ar: redis.asyncio.Redis, keys: Keys | None = None):
        self.ar = ar
        self.keys = keys or Keys(key_prefix())
        self._known: set[str] = set()
        self._config: _Config | None = None

    async def config(self) -> _Config:
        """The server's settings (re-read every few seconds); setup must have run (the collector does it)."""
        if self._config is None or time.monotonic() - self._config.read_at > _CONFIG_TTL_SECONDS:
            stored = read_settings(_DictReader(await self.ar.hgetall(self.keys.config)), self.keys)
            if not stored.configured:
                raise NotSetUp("AnomalyDesk is not set up on this server: run `anomalydesk setup`")
            self._config = _config_from(stored.settings, stored.backend)
            self._known.clear()
        return self._config

    async def ingest(self, events: Iterable[Event], *, batch_id: str | None = None,
                     replay: bool = False, sparse: bool = False) -> IngestResult:
        payloads = encode(columns_of(events), await self.config(), replay, batch_id or uuid.uuid4().hex, sparse)
        if not payloads:
            return IngestResult()
        pipe = self.ar.pipeline(transaction=False)
        new = [s for s, _ in payloads if s not in self._known]
        if new:
            pipe.sadd(self.keys.services, *new)
            pipe.srem(self.keys.retired, *new)
        for service, body in payloads:
            pipe.fcall("ad_ingest", 1, self.keys.state(service), self.keys.prefix, service, body)
        replies = (await pipe.execute(raise_on_error=False))[2 if new else 0:]
        if any(_is_missing_function(x) for x in replies):
            # the server lost its functions (restarted without persistence): the version was
            # checked at start-up, so loading our library is safe
            await self.ar.function_load(library_source()[0], replace=True)
            self._known.clear()
            return await self.ingest(events, batch_id=batch_id, replay=replay, sparse=sparse)
        self._known.update(new)
        total = IngestResult()
        for (service, _), reply in zip(payloads, replies, strict=True):
            total = total + _result_of(service, reply)
        return total


    async def write(self, payloads: list[tuple[str, bytes]]) -> IngestResult:
        """Send already-encoded payloads (from `encode` or `encode_aggregates`): one FCALL each, pipelined."""
        if not payloads:
            return IngestResult()
        pipe = self.ar.pipeline(transaction=False)
        new = sorted({s for s, _ in payloads if s not in self._known})
        if new:
            pipe.sadd(self.keys.services, *new)
            pipe.srem(self.keys.retired, *new)
        for service, body in payloads:
            pipe.fcall("ad_ingest", 1, self.keys.state(service), self.keys.prefix, service, body)
        replies = (await pipe.execute(raise_on_error=False))[2 if new else 0:]
        if any(_is_missing_function(x) for x in replies):
            await self.ar.function_load(library_source()[0], replace=True)
            self._known.clear()
            return await self.write(payloads)
        self._known.update(new)
        total = IngestResult()
        for (service, _), reply in zip(payloads, replies, strict=True):
            total = total + _result_of(service, reply)
        return total

    async def ingest_aggregates(self, service: str, windows: Sequence[WindowAggregate], *,
                                kpis: Sequence[BusinessMetric] = (), batch_id: str | None = None,
                                replay: bool = False, sparse: bool = False) -> IngestResult:
        """Write pre-aggregated windows (OTLP histograms, scrapes) without inventing single events."""
        payloads = encode_aggregates(service, windows, await self.config(), kpis=kpis, replay=replay,
                                     batch_id=batch_id or uuid.uuid4().hex, sparse=sparse)
        return await self.write(payloads)


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
        self._columns: dict[str, _Columns] = {}
        self._buffered = 0
        self._pending: list[tuple[list[tuple[str, bytes]], int]] = []  # encoded, not yet acknowledged
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

    def _cols(self, service: str) -> _Columns:
        cols = self._columns.get(service)
        if cols is None:
            cols = self._columns[service] = _Columns()
        return cols

    def add(self, event: Event) -> None:
        with self._lock:
            self._reserve(1)
            cols = self._cols(event.service)
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
                    try:
                        payloads = encode(columns, self._writer.config(), self.replay, uuid.uuid4().hex)
                    except Exception:
                        self._columns, self._buffered = columns, taken
                        raise
                    self._pending.append((payloads, taken))
                    self._pending_events += taken
            result = IngestResult()
            while self._pending:
                payloads, count = self._pending[0]
                try:
                    result = result + self._writer.write_retrying(payloads, self.retry_attempts)
                except _RETRYABLE as err:
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


# ------------------------------------------------------------------------------------------------
# sealing
# ------------------------------------------------------------------------------------------------
def seal_all(r: redis.Redis, now: float | None = None, keys: Keys | None = None) -> int:
    """Seal every known, non-retired service's closed windows (`now`: epoch seconds, None = server time)."""
    keys = keys or Keys(key_prefix())
    stored = read_settings(r, keys)
    window_s = stored.settings.window_seconds
    services = [s.decode() if isinstance(s, bytes) else s for s in r.smembers(keys.services)]
    if not services:
        return 0
    now_window = "" if now is None else str(int(now // window_s))
    pipe = r.pipeline(transaction=False)
    for service in services:
        pipe.fcall("ad_seal", 1, keys.state(service), keys.prefix, service, window_s, now_window,
                   stored.settings.retention, MAX_SILENT_WINDOWS_SEALED, REPLAY_CLOCK_HOLD_SECONDS)
    replies = pipe.execute(raise_on_error=False)
    if any(_is_missing_function(x) for x in replies):
        ensure_library(r)
        return seal_all(r, now, keys)
    for service, reply in zip(services, replies, strict=True):
        if isinstance(reply, Exception):
            raise RuntimeError(f"sealing {service} failed: {reply}")
    return sum(int(x) for x in replies)


class SealTicker:
    """Runs `seal_all` every half window in a thread, so silent windows are sealed too."""

    def __init__(self, r: redis.Redis, keys: Keys | None = None, interval: float | None = None):
        self.r = r
        self.keys = keys or Keys(key_prefix())
        self.interval = interval
        self.sealed = 0
        self.last_error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SealTicker:
        if self.interval is None:
            self.interval = read_settings(self.r, self.keys).settings.window_seconds / 2
        self._thread = threading.Thread(target=self._run, name="anomalydesk-seal", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sealed += seal_all(self.r, keys=self.keys)
                self.last_error = None
            except Exception as err:
                self.last_error = err

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
