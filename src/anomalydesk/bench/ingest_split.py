"""Where an ingest case's time goes, measured inside the run: client parse/validate, buffering, flushes
(encoding + Redis), and Redis's own share from `INFO commandstats` and `INFO cpu`.

A case runs the real producer path (`IngestSink.add` / `add_arrays`, then `flush` every `per_flush`
events — the sink's own size trigger, made explicit so a flush can be timed apart from the adds).
Encoding is timed apart on the same events after the run (client only, no Redis), so `flush` splits
into `encode`, `redis_commands` (the server's time inside the commands, from commandstats) and the
rest of the flush (`round_trips`: sending, waiting, reading replies); `other` is the wall time outside
those parts (the benchmark's own loop and timers). The columnar cases split their columns per service
before the timer, as a producer that builds arrays has them. `redis_process_cpu` is the
server process's CPU over the whole case (commands plus protocol parsing, networking, AOF).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from anomalydesk.events import Metric
from anomalydesk.store.admin import read_settings
from anomalydesk.store.encoding import Columns, Config, config_from, encode
from anomalydesk.store.keys import Keys
from anomalydesk.store.sink import IngestSink, columns_of


@dataclass(frozen=True)
class RedisSnapshot:
    """The server's cumulative command time (µs) and calls per command, and its process CPU seconds."""

    usec: dict[str, int]
    calls: dict[str, int]
    cpu_s: float


def redis_snapshot(r: redis.Redis) -> RedisSnapshot:
    """INFO commandstats and INFO cpu now (deltas of two snapshots need no CONFIG RESETSTAT)."""
    stats = r.info("commandstats")
    usec = {name.removeprefix("cmdstat_"): int(v["usec"]) for name, v in stats.items()}
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    cpu = r.info("cpu")
    return RedisSnapshot(usec, calls, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]))


def command_us(before: RedisSnapshot, after: RedisSnapshot, command: str) -> tuple[float, int]:
    """(µs the server spent inside `command`, calls of it) between two snapshots."""
    return (after.usec.get(command, 0) - before.usec.get(command, 0),
            after.calls.get(command, 0) - before.calls.get(command, 0))


@dataclass
class Timing:
    """Seconds one case spent in each part; `encode_s` is measured apart (see the module doc)."""

    events: int = 0
    total_s: float = 0.0
    parse_validate_s: float = 0.0
    buffer_s: float = 0.0
    flush_s: float = 0.0
    encode_s: float = 0.0
    redis_commands_s: float = 0.0
    redis_process_cpu_s: float = 0.0

    def rate(self) -> float:
        return self.events / self.total_s

    def split_us(self) -> dict[str, float]:
        """µs per event of each part; the parts of the wall time add up to `total`."""
        per = 1e6 / max(self.events, 1)
        round_trips = self.flush_s - self.encode_s - self.redis_commands_s
        unaccounted = self.total_s - self.parse_validate_s - self.buffer_s - self.flush_s
        return {name: round(seconds * per, 3) for name, seconds in (
            ("total", self.total_s), ("parse_validate", self.parse_validate_s), ("buffer", self.buffer_s),
            ("encode", self.encode_s), ("redis_commands", self.redis_commands_s), ("round_trips", round_trips),
            ("other", unaccounted), ("redis_process_cpu", self.redis_process_cpu_s))}


def _config(r: redis.Redis, keys: Keys) -> Config:
    stored = read_settings(r, keys)
    return config_from(stored.settings, stored.backend, stored.generation)


def _encode_seconds(columns: dict[str, Columns], config: Config) -> float:
    start = time.perf_counter()
    encode(columns, config, False, uuid.uuid4().hex)
    return time.perf_counter() - start


def _finish(r: redis.Redis, timing: Timing, before: RedisSnapshot) -> None:
    after = redis_snapshot(r)
    timing.redis_commands_s = command_us(before, after, "fcall")[0] / 1e6
    timing.redis_process_cpu_s = after.cpu_s - before.cpu_s


def per_event(r: redis.Redis, keys: Keys, bodies: Sequence[bytes], decode: Callable[[bytes], list[Metric]],
              per_flush: int) -> Timing:
    """Bodies as the collector receives them: `decode` (parse + validate) each, `IngestSink.add` every event."""
    sink = IngestSink(r, max_batch=per_flush + 1, max_buffered=per_flush + 1, keys=keys)
    add, clock = sink.add, time.perf_counter
    timing = Timing()
    before = redis_snapshot(r)
    buffered = 0
    start = clock()
    for body in bodies:
        t0 = clock()
        events = decode(body)
        t1 = clock()
        for event in events:
            add(event)
        t2 = clock()
        timing.parse_validate_s += t1 - t0
        timing.buffer_s += t2 - t1
        timing.events += len(events)
        buffered += len(events)
        if buffered >= per_flush:
            sink.flush()
            timing.flush_s += clock() - t2
            buffered = 0
    t3 = clock()
    sink.close()
    end = clock()
    timing.flush_s += end - t3
    timing.total_s = end - start
    _finish(r, timing, before)
    # encoding apart, on the same events in the same flush sizes (client only)
    config = _config(r, keys)
    chunk: list[Metric] = []
    for body in bodies:
        chunk.extend(decode(body))
        if len(chunk) >= per_flush:
            timing.encode_s += _encode_seconds(columns_of(chunk), config)
            chunk = []
    if chunk:
        timing.encode_s += _encode_seconds(columns_of(chunk), config)
    return timing


def columnar(r: redis.Redis, keys: Keys, cols: tuple[np.ndarray, ...], services: Sequence[str],
             endpoints: Sequence[Sequence[str]], per_service: int) -> Timing:
    """Pre-built numpy columns through `add_arrays` (vectorised checks), `per_service` events per service per flush."""
    chunk = per_service * len(services)
    chunks = list(_chunks(cols, chunk, len(services)))  # split per service before the timer, as a producer has them
    sink = IngestSink(r, max_batch=chunk + 1, max_buffered=chunk + 1, keys=keys)
    clock = time.perf_counter
    timing = Timing(events=len(cols[0]))
    before = redis_snapshot(r)
    start = clock()
    for parts in chunks:
        t0 = clock()
        for i, (ep, st, lat) in enumerate(parts):
            sink.add_arrays(services[i], endpoints[i], ep, st, lat)
        t1 = clock()
        sink.flush()
        timing.buffer_s += t1 - t0
        timing.flush_s += clock() - t1
    timing.total_s = clock() - start
    sink.close()
    _finish(r, timing, before)
    config = _config(r, keys)
    for parts in chunks:
        columns: dict[str, Columns] = {}
        for i, (ep, st, lat) in enumerate(parts):
            columns.setdefault(services[i], Columns()).add_arrays(endpoints[i], ep, st, lat, None)
        timing.encode_s += _encode_seconds(columns, config)
    return timing


def _chunks(cols: tuple[np.ndarray, ...], chunk: int, services: int
            ) -> Iterable[list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Per chunk of events: each service's (endpoint index, status, latency) columns, in service order."""
    service, endpoint, status, latency = cols
    for lo in range(0, len(service), chunk):
        sl = slice(lo, lo + chunk)
        svc, ep, st, lat = service[sl], endpoint[sl], status[sl], latency[sl]
        if services == 1:
            yield [(ep, st, lat)]
            continue
        yield [(ep[mask], st[mask], lat[mask]) for mask in (svc == i for i in range(services))]


def xadd_server_us(r: redis.Redis, run: Callable[[], Any]) -> tuple[Any, float]:
    """`run()`'s result and the server's µs per XADD meanwhile (INFO commandstats)."""
    before = redis_snapshot(r)
    result = run()
    usec, calls = command_us(before, redis_snapshot(r), "xadd")
    return result, usec / max(calls, 1)
