"""Ingest throughput: the full ingest path vs the naive design (one pipelined XADD per event), same run.

Full path: events as columns (service, endpoint, status, latency) → client validation (vectorised) →
pre-aggregation per service and window → one FCALL per service batch updating window aggregates, HLL,
interaction filter, two Count-Min Sketches and Top-K (raw-event stream off). The naive design is what
the public demo did: one XADD per event, pipelined 1,000 at a time, with the same client library on
the same server. For context, `server_xadd_per_s` is the same XADD from redis-benchmark's C client
(pipelined 1,000): the server's own ceiling for the naive design, whatever the client language.
Memory is Redis `used_memory` before and after the run (after sealing).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

import numpy as np
import redis

from anomalydesk.config import SketchSettings
from anomalydesk.events import Metric
from anomalydesk.store.admin import setup
from anomalydesk.store.keys import Keys
from anomalydesk.store.sink import IngestSink, seal_all

SERVICES = ("gateway", "users", "orders", "payments", "inventory")
ENDPOINTS = tuple(f"{m}:/api/v1/{r}" for r in ("users", "orders", "items", "cart", "pay") for m in ("GET", "POST"))
BATCH_PER_SERVICE = 10_000  # events per service in one FCALL
NAIVE_PIPELINE = 1_000


def _columns(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    service = rng.integers(0, len(SERVICES), n)
    endpoint = rng.zipf(1.5, n) % len(ENDPOINTS)
    status = rng.choice([200, 201, 404, 500, 503], size=n, p=[0.9, 0.05, 0.03, 0.01, 0.01])
    latency = rng.lognormal(3.0, 0.6, n)
    return service, endpoint, status, latency


def _full_path(r: redis.Redis, cols: tuple[np.ndarray, ...], keys: Keys) -> float:
    service, endpoint, status, latency = cols
    n = len(service)
    chunk = BATCH_PER_SERVICE * len(SERVICES)
    sink = IngestSink(r, max_batch=chunk, keys=keys)
    start = time.perf_counter()
    for lo in range(0, n, chunk):
        sl = slice(lo, lo + chunk)
        svc, ep, st, lat = service[sl], endpoint[sl], status[sl], latency[sl]
        for i, name in enumerate(SERVICES):
            mask = svc == i
            sink.add_arrays(name, ENDPOINTS, ep[mask], st[mask], lat[mask])
    sink.close()
    return n / (time.perf_counter() - start)


def _object_path(r: redis.Redis, n: int, keys: Keys) -> float:
    """The per-event path (what the collector and SDK events take): Metric tuples through `add`."""
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


def run(quick: bool, redis_url: str | None) -> dict[str, Any]:
    from anomalydesk.bench.server import throwaway

    n_full = 500_000 if quick else 5_000_000
    n_naive = 200_000 if quick else 1_000_000
    n_objects = 200_000 if quick else 1_000_000
    with throwaway(redis_url) as url:
        r = redis.Redis.from_url(url)
        keys = Keys(f"adbench{int(time.time())}:")
        try:
            setup(r, SketchSettings(), keys=keys)
            r.memory_purge() if hasattr(r, "memory_purge") else None
            used_before = int(r.info("memory")["used_memory"])
            events_per_s = _full_path(r, _columns(n_full), keys)
            seal_all(r, keys=keys)
            used_after = int(r.info("memory")["used_memory"])
            objects_per_s = _object_path(r, n_objects, keys)
            naive = _naive_xadd(r, _columns(n_naive, seed=3), f"{keys.prefix}naive")
            server_xadd = _server_xadd_ceiling(url, n_naive, f"{keys.prefix}naive-c")
            r.delete(f"{keys.prefix}naive-c")
        finally:
            if redis_url:  # on the user's server: remove what we wrote
                for key in r.scan_iter(match=f"{keys.prefix}*", count=1000):
                    r.delete(key)
            r.close()
    return {
        "events_per_s": round(events_per_s),
        "raw_xadd_per_s": round(naive),
        "ratio": round(events_per_s / naive, 2),
        "used_memory_before": used_before,
        "used_memory_after": used_after,
        "events": n_full,
        "event_objects_per_s": round(objects_per_s),
        "batch_events_per_service": BATCH_PER_SERVICE,
        # context: the same XADDs from redis-benchmark's C client (None when it is not installed)
        "server_xadd_per_s": None if server_xadd is None else round(server_xadd),
    }
