"""Collector throughput and latency: HTTP ingest beside the direct sink, measured in the same run.

- `events_per_s`: events stored per second (Redis `events_total` delta / wall time) while a load
  generator in this process (`bench.collector_load`: pre-built requests over raw keep-alive
  connections) POSTs JSON batches of 500 events over several connections to `anomalydesk collect`
  running as a separate process on the same machine.
- `direct_events_per_s`: the same events, already validated, written with `store.sink.ingest` in
  batches of 500 on the same server (no HTTP, no JSON parsing): the ceiling the collector sits under.
- `endpoints_5000_events_per_s` / `direct_endpoints_5000_events_per_s`: the same two at the
  cardinality operators have: 5,000 distinct endpoint names over 50 services (100 each, Zipf-ish;
  `bench ingest`'s traffic), 64 different bodies of 500 events.
- `endpoints_5000_clients_events_per_s` / `endpoints_5000_clients_2_workers_events_per_s` and
  `workers_2_ratio`: the same bodies from `CLIENTS` (128) connections, to `collect --workers 1` and
  `--workers 2` run back to back (1, 2, 2, 1) on the same server; `workers_runs` has each run's rate,
  CPU per event, the cores the processes got and the load average around it.
- `single_p99_ms`: 99th percentile latency of single-event requests sent open-loop at 1,000
  requests/s (latency counted from each request's scheduled send time, so a stall is not hidden).

Beside them: the CPU seconds the collector, redis-server and the generator each spent per event or
request, and how late the generator itself sent (`single_send_lag_p99_ms`): on a 2-core machine
all three compete for the same cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import psutil
import redis

from anomalydesk.bench.collector_load import build_request, closed_loop, open_loop
from anomalydesk.bench.ingest import WIDE_ENDPOINTS, WIDE_SERVICES
from anomalydesk.bench.server import throwaway
from anomalydesk.config import SketchSettings
from anomalydesk.events import parse_batch
from anomalydesk.store import admin, sink
from anomalydesk.store.gears import ensure_library

BATCH = 500
BODIES = 16
WIDE_BODIES = 64  # 32,000 events: the 5,000 endpoint names recur across bodies as in real traffic
CONNECTIONS = 8
# many clients (services × instances, each with a batch in flight): a worker's merged writes then carry
# hundreds of events per service, which is what makes a 5,000-endpoint write cheap in Redis
CLIENTS = 128
WORKER_ORDER = (1, 2, 2, 1)
SINGLE_RATE = 1_000
SERVICES = ("gateway", "users", "orders", "payments", "inventory")
ENDPOINTS = ("GET:/api/users/{}", "POST:/api/orders", "GET:/api/items/{}", "PUT:/api/cart/{}", "POST:/api/pay")


def _wide_events(n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """n events at 5,000 endpoints over 50 services (Zipf-ish within a service, as `bench ingest`)."""
    per_service = len(WIDE_ENDPOINTS[0])
    return [{"service": WIDE_SERVICES[s], "endpoint": WIDE_ENDPOINTS[s][e], "status_code": int(c),
             "response_time": round(float(ms), 3)}
            for s, e, c, ms in zip(rng.integers(0, len(WIDE_SERVICES), n).tolist(),
                                   (rng.zipf(1.5, n) % per_service).tolist(),
                                   rng.choice([200, 201, 404, 500], size=n).tolist(),
                                   rng.lognormal(3.0, 0.6, n).tolist(), strict=True)]


def _events(n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    return [{"service": SERVICES[int(rng.integers(len(SERVICES)))],
             "endpoint": ENDPOINTS[int(rng.integers(len(ENDPOINTS)))].format(int(rng.integers(1, 10_000))),
             "status_code": int(rng.choice([200, 201, 404, 500])),
             "response_time": round(float(rng.lognormal(3.0, 0.6)), 3)} for _ in range(n)]


@contextlib.contextmanager
def _collector_process(url: str, workers: int = 1) -> Iterator[tuple[str, list[int]]]:
    """`anomalydesk collect --workers N` on a free port: (its URL, the pids of its processes)."""
    # a frozen (PyInstaller) build is the `anomalydesk` command itself
    command = [sys.executable] if getattr(sys, "frozen", False) else [sys.executable, "-m", "anomalydesk.cli"]
    proc = subprocess.Popen(
        [*command, "collect", "--port", "0", "--redis", url, "--json", "--rate-limit", "0",
         "--workers", str(workers)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        text = ""
        deadline = time.monotonic() + 60
        while (match := re.search(r'"listening":\s*"([^"]+)"', text)) is None:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line and (proc.poll() is not None or time.monotonic() > deadline):
                raise RuntimeError("the collector did not start for the benchmark")
            text += line
        pids = [proc.pid]
        if workers > 1:  # the supervisor forks the workers once it listens: count their CPU too
            pids += [child.pid for child in psutil.Process(proc.pid).children()]
        yield match.group(1), pids
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _events_total(r: redis.Redis) -> int:
    return int(admin.status(r)["events_total"])


class _Cpu:
    """CPU seconds of the collector, redis-server and this process (the generator) since `mark()`."""

    def __init__(self, collector_pids: list[int], redis_pid: int | None):
        self.pids = {"collector": collector_pids, "redis": [] if redis_pid is None else [redis_pid]}
        self._start: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        now = {"generator": _own_cpu_seconds()}
        for name, pids in self.pids.items():
            with contextlib.suppress(psutil.Error):
                if pids:
                    now[name] = sum(_cpu_seconds(pid) for pid in pids)
        return now

    def mark(self) -> None:
        self._start = self._now()

    def spent(self) -> dict[str, float]:
        return {name: value - self._start[name] for name, value in self._now().items() if name in self._start}


def _redis_pid(r: redis.Redis) -> int | None:
    """The server's pid when it runs on this machine (CPU per event), else None."""
    pid = int(r.info("server").get("process_id", 0))
    return pid if pid and psutil.pid_exists(pid) else None


def _per(spent: dict[str, float], n: int, scale: float) -> dict[str, float]:
    return {name: round(seconds / max(n, 1) * scale, 1) for name, seconds in spent.items()}


def _direct(r: redis.Redis, batches: list[list], seconds: float) -> float:
    sent = 0
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        result = sink.ingest(r, batches[i % len(batches)], batch_id=uuid.uuid4().hex)
        sent += result.accepted
        i += 1
    return sent / (time.perf_counter() - start)


def _batches_over_http(base: str, bodies: list[bytes], r: redis.Redis, cpu: _Cpu, seconds: float,
                       connections: int = CONNECTIONS) -> tuple[int, int, int, float, dict[str, float]]:
    """Closed-loop batches: (202 answers, other answers, events stored, seconds, CPU seconds per process)."""
    asyncio.run(closed_loop(base, bodies[:2], connections, 0.5))  # warm-up: caches, first FCALLs
    before = _events_total(r)
    cpu.mark()
    started = time.perf_counter()
    ok, errors = asyncio.run(closed_loop(base, bodies, connections, seconds))
    elapsed = time.perf_counter() - started
    return ok, errors, _events_total(r) - before, elapsed, cpu.spent()


def _workers_case(url: str, r: redis.Redis, wide_raw: list[list[dict[str, Any]]], seconds: float) -> dict[str, Any]:
    """5,000 endpoints from CLIENTS connections: `collect --workers 1` and `--workers 2`, back to back.

    Run in the order 1, 2, 2, 1 (each its own collector process on the same server), so a change in
    what else the machine runs weighs on both alike; the ratio is of the summed rates.
    """
    parts: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for workers in WORKER_ORDER:
        load = os.getloadavg()[0]
        with _collector_process(url, workers) as (base, pids):
            bodies = [build_request(base, "/metrics", orjson.dumps(batch)) for batch in wide_raw]
            cpu = _Cpu(pids, _redis_pid(r))
            ok, errors, stored, elapsed, spent = _batches_over_http(base, bodies, r, cpu, seconds, CLIENTS)
        parts[workers].append({
            "events_per_s": round(stored / elapsed), "http_errors": errors, "stored_events_match": stored == ok * BATCH,
            "cpu_us_per_event": _per(spent, stored, 1e6),
            # how much of the machine these processes got: CPU seconds of collector + redis + generator per second
            "cores_used": round(sum(spent.values()) / elapsed, 2),
            "load_avg_1m": [round(load, 2), round(os.getloadavg()[0], 2)],
        })
    one = sum(p["events_per_s"] for p in parts[1])
    two = sum(p["events_per_s"] for p in parts[2])
    return {
        "endpoints_5000_clients_events_per_s": round(one / len(parts[1])),
        "endpoints_5000_clients_2_workers_events_per_s": round(two / len(parts[2])),
        "workers_2_ratio": round(two / max(one, 1), 3),
        "clients_connections": CLIENTS,
        "workers_runs": [{"workers": w, **parts[w][i]} for w, i in ((1, 0), (2, 0), (2, 1), (1, 1))],
    }


def run(quick: bool, redis_url: str | None) -> dict[str, Any]:
    """Measure the collector; the `bench --json` keys `collector.{events_per_s, direct_events_per_s, single_p99_ms}`."""
    seconds = 3.0 if quick else 10.0
    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    rng = np.random.default_rng(7)
    raw = [_events(BATCH, rng) for _ in range(BODIES)]
    batches = [parse_batch(batch)[0] for batch in raw]
    wide_raw = [_wide_events(BATCH, rng) for _ in range(WIDE_BODIES)]
    wide_batches = [parse_batch(batch)[0] for batch in wide_raw]
    with throwaway(redis_url) as url:
        r = redis.Redis.from_url(url)
        try:
            ensure_library(r)
            if not admin.read_settings(r).configured:
                admin.setup(r, SketchSettings())
            with _collector_process(url) as (base, pids):
                bodies = [build_request(base, "/metrics", orjson.dumps(batch)) for batch in raw]
                singles = [build_request(base, "/metrics", orjson.dumps(event)) for event in _events(256, rng)]
                wide_bodies = [build_request(base, "/metrics", orjson.dumps(batch)) for batch in wide_raw]
                cpu = _Cpu(pids, _redis_pid(r))
                ok, errors, stored, elapsed, cpu_batches = _batches_over_http(base, bodies, r, cpu, seconds)
                wide_ok, wide_errors, wide_stored, wide_elapsed, cpu_wide = _batches_over_http(
                    base, wide_bodies, r, cpu, seconds)
                cpu.mark()
                single = asyncio.run(open_loop(base, singles, SINGLE_RATE, seconds))
                cpu_singles = cpu.spent()
            workers = _workers_case(url, r, wide_raw, seconds)
            direct = _direct(r, batches, seconds)
            wide_direct = _direct(r, wide_batches, seconds)
        finally:
            r.close()
    latencies = single["latencies"]
    lat_ms = np.asarray(latencies) * 1000.0
    lag_ms = np.asarray(single["send_lag"]) * 1000.0
    return {
        "events_per_s": round(stored / elapsed),
        "direct_events_per_s": round(direct),
        "endpoints_5000_events_per_s": round(wide_stored / wide_elapsed),
        "direct_endpoints_5000_events_per_s": round(wide_direct),
        "single_p99_ms": round(float(np.percentile(lat_ms, 99)), 2),
        "single_p50_ms": round(float(np.percentile(lat_ms, 50)), 2),
        "single_max_ms": round(float(lat_ms.max()), 2),
        "single_send_lag_p99_ms": round(float(np.percentile(lag_ms, 99)), 2),
        "single_requests": len(latencies),
        "single_rate_target": SINGLE_RATE,
        "single_connections": single["connections"],
        "batch_events": BATCH,
        "connections": CONNECTIONS,
        "http_requests": ok,
        "http_errors": errors + wide_errors + single["errors"],
        "stored_events_match": stored == ok * BATCH and wide_stored == wide_ok * BATCH,
        # CPU each process spent (less sensitive to a busy machine than wall-clock rates)
        "collector_cpu_us_per_event": round(cpu_batches["collector"] / max(stored, 1) * 1e6, 2),
        "collector_cpu_us_per_single_request": round(cpu_singles["collector"] / max(len(latencies), 1) * 1e6, 1),
        "cpu_us_per_event": _per(cpu_batches, stored, 1e6),
        "endpoints_5000_cpu_us_per_event": _per(cpu_wide, wide_stored, 1e6),
        "cpu_us_per_single_request": _per(cpu_singles, len(latencies), 1e6),
        "seconds": seconds,
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
        **workers,
    }
