"""Ingest throughput on both sketch backends, several paths and cardinalities, beside the naive design (same run).

Every case runs on a "functions" server (the library's own Lua sketches, any Redis 7) and on a "native"
one (the same redis-server with RedisBloom loaded: CMS/BF/TOPK), each a throwaway of its own; the native
figures carry a `native_` prefix, and are None with a `native_unavailable` reason when RedisBloom is not
found (bench/server.py `find_redisbloom`). With `--redis URL` only that server is measured, under the
prefix of its own backend (`sketch_backend`); the other backend's figures are None with the reason.

The cases (settings: `SketchSettings()`; raw-event stream off):
- `events_per_s` — the full columnar path: 5 services, 10 endpoint names, pre-built numpy columns →
  `IngestSink.add_arrays` (vectorised validation) → pre-aggregation per service and window → one FCALL
  per service batch of 10,000 events updating window aggregates, HLL, interaction filter, two Count-Min
  Sketches and Top-K.
- `endpoints_5000_events_per_s` — the same path and batch size with 5,000 distinct endpoint names over
  50 services (100 each, Zipf-ish): Redis merges one aggregate per distinct key of a batch, so its work
  grows with the distinct endpoints per batch, not with the events.
- `event_objects_per_s` — `Metric` objects built before the timer, then `IngestSink.add` one by one
  (the SDK's path once events exist; no parsing).
- `parsed_events_per_s` — events as the collector receives them: plain dicts as `orjson.loads` gives
  them, built before the timer; inside it each is `events.parse_metric(d)` then `IngestSink.add`.
  `parse_events_per_s` is `parse_metric` alone over the same dicts (client only, measured once), so
  the split between parsing and the rest is visible.
- `endpoints_50000_events_per_s` — the same path with 50,000 distinct endpoint names on one service,
  drawn uniformly (the hardest case for the per-key work: nearly every event of a 10,000-event FCALL
  names an endpoint of its own).
- `per_event_5000_events_per_s` — the per-event path at 5,000 endpoints over 50 services: JSON bodies
  of 500 events as the collector receives them (bytes, built before the timer), each decoded and
  validated by `wire.decode_metrics` (msgspec, compiled), then every event through `IngestSink.add`,
  a flush every 10,000 events per service. `per_event_5000_python_events_per_s` is the previous
  Python path on the same bytes in the same run: `orjson.loads`, then `parse_metric` and `add` per event.

`split_us_per_event` says, per case, where the time went (bench/ingest_split.py): `parse_validate`,
`buffer` (`add`/`add_arrays`), `encode`, `redis_commands` (INFO commandstats: the server's time inside
FCALL), `round_trips` (the rest of the flushes), `other`, and `redis_process_cpu` (INFO cpu).

The naive design is what the public demo did: one XADD per event, pipelined 1,000 at a time, with the
same client library on the same server (`raw_xadd_per_s`); each case's `*_ratio` is against it. For
context, `server_xadd_per_s` is the same XADD from redis-benchmark's C client (pipelined 1,000): the
server's own ceiling for the naive design, whatever the client language; `xadd_redis_us_per_event`
is the server's time inside one XADD during the naive run (INFO commandstats) and
`xadd_redis_ceiling_per_s` its inverse: what one Redis core could take of the naive design. Memory is
Redis `used_memory` before and after the full columnar case (after sealing).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import redis

from anomalydesk.bench import ingest_split
from anomalydesk.config import SketchSettings
from anomalydesk.events import Metric, parse_metric
from anomalydesk.store import capabilities
from anomalydesk.store.admin import setup
from anomalydesk.store.keys import Keys
from anomalydesk.store.sink import IngestSink, seal_all
from anomalydesk.wire import decode_metrics

SERVICES = ("gateway", "users", "orders", "payments", "inventory")
ENDPOINTS = tuple(f"{m}:/api/v1/{r}" for r in ("users", "orders", "items", "cart", "pay") for m in ("GET", "POST"))
# the cardinality case: 50 services with 100 endpoint names each, 5,000 distinct names in all
WIDE_SERVICES = tuple(f"svc{i:02d}" for i in range(50))
WIDE_ENDPOINTS = tuple(tuple(f"{m}:/api/v1/{svc}/res{j}" for j in range(50) for m in ("GET", "POST"))
                       for svc in WIDE_SERVICES)
# the 50,000-endpoint case: one service
HUGE_SERVICE = "svc-huge"
HUGE_ENDPOINTS = tuple(f"GET:/api/v1/huge/res{j}" for j in range(50_000))
BATCH_PER_SERVICE = 10_000  # events per service in one FCALL
BODY_EVENTS = 500  # events per JSON body of the per-event cases (the collector benchmark's batch)
NAIVE_PIPELINE = 1_000
NATIVE = "native_"  # key prefix of the native backend's figures; the functions backend's have none


@dataclass(frozen=True)
class Sizes:
    """Events per case."""

    full: int
    wide: int  # at least BATCH_PER_SERVICE x 50: fewer events per call would measure another batch size
    objects: int
    parsed: int
    naive: int
    huge: int  # the 50,000-endpoint case
    per_event: int  # the per-event cases at 5,000 endpoints (a multiple of BODY_EVENTS)


QUICK = Sizes(full=500_000, wide=500_000, objects=200_000, parsed=100_000, naive=200_000, huge=50_000,
              per_event=200_000)
FULL = Sizes(full=5_000_000, wide=5_000_000, objects=1_000_000, parsed=1_000_000, naive=1_000_000, huge=300_000,
             per_event=1_000_000)


def _columns(n: int, seed: int = 1, services: int = len(SERVICES), endpoints: int = len(ENDPOINTS),
             uniform: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Service index, endpoint index (within the service's names, Zipf-ish or uniform), status and latency."""
    rng = np.random.default_rng(seed)
    service = rng.integers(0, services, n)
    endpoint = rng.integers(0, endpoints, n) if uniform else rng.zipf(1.5, n) % endpoints
    status = rng.choice([200, 201, 404, 500, 503], size=n, p=[0.9, 0.05, 0.03, 0.01, 0.01])
    latency = rng.lognormal(3.0, 0.6, n)
    return service, endpoint, status, latency


def _wide_bodies(n: int, seed: int) -> list[bytes]:
    """n events at 5,000 endpoints over 50 services as JSON bodies of BODY_EVENTS, as a client sends them."""
    service, endpoint, status, latency = _columns(n, seed=seed, services=len(WIDE_SERVICES),
                                                  endpoints=len(WIDE_ENDPOINTS[0]))
    events = [{"service": WIDE_SERVICES[s], "endpoint": WIDE_ENDPOINTS[s][e], "status_code": c, "response_time": ms}
              for s, e, c, ms in zip(service.tolist(), endpoint.tolist(), status.tolist(), latency.tolist(),
                                     strict=True)]
    return [orjson.dumps(events[lo:lo + BODY_EVENTS]) for lo in range(0, n, BODY_EVENTS)]


def _decode_compiled(body: bytes) -> list[Metric]:
    events = decode_metrics(body)
    if events is None:  # every body here is valid: None would mean the benchmark measures the wrong path
        raise RuntimeError("bench ingest: a generated body left the compiled path")
    return events


def _decode_python(body: bytes) -> list[Metric]:
    return [parse_metric(obj) for obj in orjson.loads(body)]


def _object_path(r: redis.Redis, n: int, keys: Keys) -> float:
    """The per-event path once events exist (the SDK's): Metric tuples through `add`."""
    service, endpoint, status, latency = _columns(n, seed=2)
    events = [Metric(SERVICES[s], ENDPOINTS[e], int(c), float(ms), None)
              for s, e, c, ms in zip(service.tolist(), endpoint.tolist(), status.tolist(), latency.tolist(),
                                     strict=True)]
    sink = IngestSink(r, max_batch=BATCH_PER_SERVICE * len(SERVICES), keys=keys)
    start = time.perf_counter()
    for event in events:
        sink.add(event)
    sink.close()
    return n / (time.perf_counter() - start)


def _received_events(n: int) -> list[dict[str, Any]]:
    """n events as the collector's JSON decoder hands them over (the object path's traffic, another seed)."""
    service, endpoint, status, latency = _columns(n, seed=4)
    dicts = [{"service": SERVICES[s], "endpoint": ENDPOINTS[e], "status_code": c, "response_time": ms}
             for s, e, c, ms in zip(service.tolist(), endpoint.tolist(), status.tolist(), latency.tolist(),
                                    strict=True)]
    return orjson.loads(orjson.dumps(dicts))


def _parsed_path(r: redis.Redis, n: int, keys: Keys) -> float:
    """The collector's per-event path: each received dict through `parse_metric`, then `add`."""
    received = _received_events(n)
    sink = IngestSink(r, max_batch=BATCH_PER_SERVICE * len(SERVICES), keys=keys)
    start = time.perf_counter()
    for obj in received:
        sink.add(parse_metric(obj))
    sink.close()
    return n / (time.perf_counter() - start)


def _parse_only(n: int) -> float:
    """Events/s of `parse_metric` alone over the parsed case's dicts: the client's share of that path."""
    received = _received_events(n)
    start = time.perf_counter()
    for obj in received:
        parse_metric(obj)
    return n / (time.perf_counter() - start)


def _naive_xadd(r: redis.Redis, cols: tuple[np.ndarray, ...], stream: str) -> float:
    service, endpoint, status, latency = (c.tolist() for c in cols)
    n = len(service)
    start = time.perf_counter()
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        # the leanest redis-py call for XADD (no per-call argument processing), to keep the ceiling honest
        pipe.execute_command("XADD", stream, "*", "service", SERVICES[service[i]], "endpoint", ENDPOINTS[endpoint[i]],
                             "status_code", status[i], "response_time", latency[i])
        if (i + 1) % NAIVE_PIPELINE == 0:
            pipe.execute()
    pipe.execute()
    rate = n / (time.perf_counter() - start)
    r.delete(stream)
    return rate


def _server_xadd_ceiling(url: str, n: int, stream: str) -> float | None:
    """XADD rate of redis-benchmark (C client, pipelined 1,000) on the same server: the server's own ceiling."""
    binary = shutil.which("redis-benchmark")
    kwargs = redis.connection.parse_url(url)
    if binary is None or "unix_socket_path" in kwargs or kwargs.get("ssl"):
        return None
    args = [binary, "-h", kwargs.get("host", "127.0.0.1"), "-p", str(kwargs.get("port", 6379)), "-P", "1000",
            "-n", str(n), "-q", "--csv"]
    if kwargs.get("password"):
        args += ["-a", kwargs["password"], "--no-auth-warning"]
    if kwargs.get("username"):
        args += ["--user", kwargs["username"]]
    args += ["XADD", stream, "*", "service", "payments", "endpoint", "GET:/api/v1/pay", "status_code", "200",
             "response_time", "12.5"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300)
    rows = [line.split(",") for line in out.stdout.splitlines() if line.startswith('"XADD')]
    return float(rows[-1][1].strip('"')) if out.returncode == 0 and rows else None


def _measure(url: str, sizes: Sizes, given: bool) -> dict[str, Any]:
    """Every case on the server at `url`, keys without a backend prefix; `given`: remove what we wrote."""
    r = redis.Redis.from_url(url)
    keys = Keys(f"adbench{int(time.time())}:")
    timings: dict[str, ingest_split.Timing] = {}
    try:
        setup(r, SketchSettings(), keys=keys)
        r.memory_purge() if hasattr(r, "memory_purge") else None
        used_before = int(r.info("memory")["used_memory"])
        timings["events"] = ingest_split.columnar(r, keys, _columns(sizes.full), SERVICES,
                                                  (ENDPOINTS,) * len(SERVICES), BATCH_PER_SERVICE)
        seal_all(r, keys=keys)
        used_after = int(r.info("memory")["used_memory"])
        objects_per_s = _object_path(r, sizes.objects, keys)
        wide_cols = _columns(sizes.wide, seed=5, services=len(WIDE_SERVICES), endpoints=len(WIDE_ENDPOINTS[0]))
        timings["endpoints_5000"] = ingest_split.columnar(r, keys, wide_cols, WIDE_SERVICES, WIDE_ENDPOINTS,
                                                          BATCH_PER_SERVICE)
        huge_cols = _columns(sizes.huge, seed=6, services=1, endpoints=len(HUGE_ENDPOINTS), uniform=True)
        timings["endpoints_50000"] = ingest_split.columnar(r, keys, huge_cols, (HUGE_SERVICE,), (HUGE_ENDPOINTS,),
                                                           BATCH_PER_SERVICE)
        bodies = _wide_bodies(sizes.per_event, seed=7)
        per_flush = BATCH_PER_SERVICE * len(WIDE_SERVICES)
        timings["per_event_5000"] = ingest_split.per_event(r, keys, bodies, _decode_compiled, per_flush)
        timings["per_event_5000_python"] = ingest_split.per_event(r, keys, bodies, _decode_python, per_flush)
        parsed_per_s = _parsed_path(r, sizes.parsed, keys)
        naive, xadd_us = ingest_split.xadd_server_us(
            r, lambda: _naive_xadd(r, _columns(sizes.naive, seed=3), f"{keys.prefix}naive"))
        server_xadd = _server_xadd_ceiling(url, sizes.naive, f"{keys.prefix}naive-c")
        r.delete(f"{keys.prefix}naive-c")
    finally:
        if given:  # on the user's server: remove what we wrote
            for key in r.scan_iter(match=f"{keys.prefix}*", count=1000):
                r.delete(key)
        r.close()
    events_per_s = timings["events"].rate()
    report: dict[str, Any] = {
        "events_per_s": round(events_per_s),
        "raw_xadd_per_s": round(naive),
        "ratio": _ratio(events_per_s, naive),
        "used_memory_before": used_before,
        "used_memory_after": used_after,
        "event_objects_per_s": round(objects_per_s),
        "event_objects_ratio": _ratio(objects_per_s, naive),
        "parsed_events_per_s": round(parsed_per_s),
        "parsed_ratio": _ratio(parsed_per_s, naive),
    }
    for case in ("endpoints_5000", "endpoints_50000", "per_event_5000", "per_event_5000_python"):
        rate = timings[case].rate()
        report[f"{case}_events_per_s"] = round(rate)
        report[f"{case}_ratio"] = _ratio(rate, naive)
    return {
        **report,
        # the naive design's ceilings in the same run: the C client's XADD (None when redis-benchmark is not
        # installed) and what the server's own time per XADD allows on one core
        "server_xadd_per_s": None if server_xadd is None else round(server_xadd),
        "xadd_redis_us_per_event": round(xadd_us, 3),
        "xadd_redis_ceiling_per_s": round(1e6 / xadd_us) if xadd_us > 0 else None,
        "split_us_per_event": {case: timing.split_us() for case, timing in timings.items()},
    }


def _ratio(rate: float, ceiling: float) -> float:
    """rate / ceiling to 3 significant figures (a ratio well below 1 keeps its precision)."""
    return float(f"{rate / ceiling:.3g}")


def _backend_of(url: str) -> str:
    with redis.Redis.from_url(url) as r:
        return capabilities.detect(r).sketch_backend


def run(quick: bool, redis_url: str | None) -> dict[str, Any]:
    from anomalydesk.bench.server import ModuleUnavailable, find_redisbloom, throwaway

    sizes = QUICK if quick else FULL
    figures: dict[str, dict[str, Any] | None] = {"functions": None, "native": None}
    unavailable: dict[str, str | None] = {"functions": None, "native": None}
    module: dict[str, Any] = {"native_module": None, "native_module_found_by": None, "native_module_version": None}
    given_backend = None
    if redis_url:
        given_backend = _backend_of(redis_url)
        figures[given_backend] = _measure(redis_url, sizes, given=True)
        for other in figures.keys() - {given_backend}:
            unavailable[other] = f"--redis given: only that server was measured, and its backend is {given_backend}"
    else:
        with throwaway(backend="functions") as url:
            figures["functions"] = _measure(url, sizes, given=False)
        try:
            bloom = find_redisbloom()
        except ModuleUnavailable as err:
            unavailable["native"] = str(err)
        else:
            with throwaway(backend="native") as url:
                figures["native"] = _measure(url, sizes, given=False)
                with redis.Redis.from_url(url) as r:
                    version = capabilities.detect(r).modules.get("bf")
            module = {"native_module": str(bloom.path), "native_module_found_by": bloom.found_by,
                      "native_module_version": version}
    names = next(measured for measured in figures.values() if measured is not None).keys()
    report: dict[str, Any] = {}
    for backend, prefix in (("functions", ""), ("native", NATIVE)):
        measured = figures[backend]
        report.update({f"{prefix}{key}": None if measured is None else measured[key] for key in names})
    return {
        **report,
        "parse_events_per_s": round(_parse_only(sizes.parsed)),
        "sketch_backend": given_backend,  # the --redis server's; None when the run started its own servers
        "backends_measured": [backend for backend, measured in figures.items() if measured is not None],
        "functions_unavailable": unavailable["functions"],
        "native_unavailable": unavailable["native"],
        **module,
        "events": sizes.full,
        "endpoints_5000_events": sizes.wide,
        "event_objects_events": sizes.objects,
        "parsed_events": sizes.parsed,
        "endpoints_50000_events": sizes.huge,
        "per_event_5000_events": sizes.per_event,
        "body_events": BODY_EVENTS,
        "batch_events_per_service": BATCH_PER_SERVICE,
    }
