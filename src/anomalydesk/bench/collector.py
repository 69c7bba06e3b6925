"""Collector throughput and latency: HTTP ingest beside the direct sink, measured in the same run.

- `events_per_s`: events stored per second (Redis `events_total` delta / wall time) while a load
  generator in this process POSTs pre-encoded JSON batches of 500 events over several keep-alive
  connections to `anomalydesk collect` running as a separate process on the same machine.
- `direct_events_per_s`: the same events, already validated, written with `store.sink.ingest` in
  batches of 500 on the same server (no HTTP, no JSON parsing): the ceiling the collector sits under.
- `single_p99_ms`: 99th percentile latency of single-event requests sent open-loop at 1,000
  requests/s (latency counted from each request's scheduled send time, so a stall is not hidden).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
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

from anomalydesk.bench.server import throwaway
from anomalydesk.config import SketchSettings
from anomalydesk.events import parse_batch
from anomalydesk.store import admin, sink
from anomalydesk.store.gears import ensure_library

BATCH = 500
BODIES = 16
CONNECTIONS = 8
SINGLE_RATE = 1_000
SERVICES = ("gateway", "users", "orders", "payments", "inventory")
ENDPOINTS = ("GET:/api/users/{}", "POST:/api/orders", "GET:/api/items/{}", "PUT:/api/cart/{}", "POST:/api/pay")


def _events(n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    return [{"service": SERVICES[int(rng.integers(len(SERVICES)))],
             "endpoint": ENDPOINTS[int(rng.integers(len(ENDPOINTS)))].format(int(rng.integers(1, 10_000))),
             "status_code": int(rng.choice([200, 201, 404, 500])),
             "response_time": round(float(rng.lognormal(3.0, 0.6)), 3)} for _ in range(n)]


@contextlib.contextmanager
def _collector_process(url: str) -> Iterator[tuple[str, int]]:
    # a frozen (PyInstaller) build is the `anomalydesk` command itself
    command = [sys.executable] if getattr(sys, "frozen", False) else [sys.executable, "-m", "anomalydesk.cli"]
    proc = subprocess.Popen(
        [*command, "collect", "--port", "0", "--redis", url, "--json", "--rate-limit", "0"],
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
        yield match.group(1), proc.pid
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _events_total(r: redis.Redis) -> int:
    return int(admin.status(r)["events_total"])


async def _http_throughput(base: str, bodies: list[bytes], seconds: float) -> tuple[int, int]:
    import aiohttp

    ok = errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(offset: int) -> None:
            nonlocal ok, errors
            i = offset
            while time.perf_counter() < deadline:
                async with session.post(f"{base}/metrics", data=bodies[i % len(bodies)],
                                        headers={"Content-Type": "application/json"}) as response:
                    await response.read()
                    if response.status == 202:
                        ok += 1
                    else:
                        errors += 1
                i += 1

        await asyncio.gather(*(worker(k) for k in range(CONNECTIONS)))
    return ok, errors


async def _single_latencies(base: str, bodies: list[bytes], seconds: float) -> tuple[list[float], int]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(body: bytes, scheduled: float) -> None:
            nonlocal errors
            async with session.post(f"{base}/metrics", data=body,
                                    headers={"Content-Type": "application/json"}) as response:
                await response.read()
                if response.status != 202:
                    errors += 1
            latencies.append(time.perf_counter() - scheduled)

        start = time.perf_counter() + 0.05
        tasks = []
        for i in range(int(seconds * SINGLE_RATE)):
            scheduled = start + i / SINGLE_RATE
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(bodies[i % len(bodies)], scheduled)))
        await asyncio.gather(*tasks)
    return latencies, errors


def _direct(r: redis.Redis, batches: list[list], seconds: float) -> float:
    sent = 0
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        result = sink.ingest(r, batches[i % len(batches)], batch_id=uuid.uuid4().hex)
        sent += result.accepted
        i += 1
    return sent / (time.perf_counter() - start)


def run(quick: bool, redis_url: str | None) -> dict[str, Any]:
    """Measure the collector; the `bench --json` keys `collector.{events_per_s, direct_events_per_s, single_p99_ms}`."""
    seconds = 3.0 if quick else 10.0
    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    rng = np.random.default_rng(7)
    raw = [_events(BATCH, rng) for _ in range(BODIES)]
    bodies = [orjson.dumps(batch) for batch in raw]
    singles = [orjson.dumps(event) for event in _events(256, rng)]
    batches = [parse_batch(batch)[0] for batch in raw]
    with throwaway(redis_url) as url:
        r = redis.Redis.from_url(url)
        try:
            ensure_library(r)
            if not admin.read_settings(r).configured:
                admin.setup(r, SketchSettings())
            with _collector_process(url) as (base, pid):
                asyncio.run(_http_throughput(base, bodies[:2], 0.5))  # warm-up: connections, caches
                before, cpu_before = _events_total(r), _cpu_seconds(pid)
                started = time.perf_counter()
                ok, errors = asyncio.run(_http_throughput(base, bodies, seconds))
                elapsed = time.perf_counter() - started
                stored = _events_total(r) - before
                cpu_batches = _cpu_seconds(pid) - cpu_before
                cpu_before = _cpu_seconds(pid)
                latencies, single_errors = asyncio.run(_single_latencies(base, singles, seconds))
                cpu_singles = _cpu_seconds(pid) - cpu_before
            direct = _direct(r, batches, seconds)
        finally:
            r.close()
    lat_ms = np.asarray(latencies) * 1000.0
    return {
        "events_per_s": round(stored / elapsed),
        "direct_events_per_s": round(direct),
        "single_p99_ms": round(float(np.percentile(lat_ms, 99)), 2),
        "single_p50_ms": round(float(np.percentile(lat_ms, 50)), 2),
        "single_requests": len(latencies),
        "single_rate_target": SINGLE_RATE,
        "batch_events": BATCH,
        "connections": CONNECTIONS,
        "http_requests": ok,
        "http_errors": errors + single_errors,
        "stored_events_match": stored == ok * BATCH,
        # CPU the collector process spent (less sensitive to a busy machine than wall-clock rates)
        "collector_cpu_us_per_event": round(cpu_batches / max(stored, 1) * 1e6, 2),
        "collector_cpu_us_per_single_request": round(cpu_singles / max(len(latencies), 1) * 1e6, 1),
        "seconds": seconds,
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
    }
