"""Redis CPU per event against the events per service in one `ad_ingest` call (issue 18), on the
collector benchmark's 5,000-endpoint traffic (50 services, 100 endpoints each, Zipf-ish).

On a throwaway redis-server (functions backend, default setup): for each size n given, calls of n
events of one service, round robin over the 50 services, until 100,000 events; prints per size the
server's CPU (`INFO cpu`) per event and per call, the distinct endpoints per call and the CPU per
distinct endpoint. This is what a merged write of the collector looks like to Redis: one FCALL per
service, each with that service's share of the write.

Run: `python scripts/fcall_size_cost.py N [N...]`, e.g. `20 100 300 1000 3000`.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import numpy as np
import redis

from anomalydesk.bench.collector import _wide_events
from anomalydesk.bench.server import throwaway
from anomalydesk.config import SketchSettings
from anomalydesk.events import Metric, parse_batch
from anomalydesk.store import admin, sink
from anomalydesk.store.gears import ensure_library

TOTAL = 100_000


def _cpu(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def main() -> None:
    sizes = [int(arg) for arg in sys.argv[1:]] or [20, 100, 300, 1000, 3000]
    events = [e for e in parse_batch(_wide_events(200_000, np.random.default_rng(7)))[0] if isinstance(e, Metric)]
    by_service: dict[str, list[Metric]] = {}
    for event in events:
        by_service.setdefault(event.service, []).append(event)
    print(f"load {os.getloadavg()[0]:.2f}", flush=True)
    with throwaway(None) as url:
        r = redis.Redis.from_url(url)
        ensure_library(r)
        admin.setup(r, SketchSettings())
        sink.ingest(r, events[:20_000], batch_id="warm-up")
        for size in sizes:
            total = calls = distinct = 0
            offset = 0
            before, started = _cpu(r), time.perf_counter()
            while total < TOTAL:
                for service_events in by_service.values():
                    start = offset % len(service_events)
                    chunk = service_events[start:start + size]
                    if not chunk:
                        continue
                    distinct += len({e.endpoint for e in chunk})
                    sink.ingest(r, chunk, batch_id=uuid.uuid4().hex)
                    total += len(chunk)
                    calls += 1
                offset += size
            spent, elapsed = _cpu(r) - before, time.perf_counter() - started
            per_call = spent / calls * 1e6
            print(f"{size:6d} events per call: Redis {spent / total * 1e6:6.2f} us/event, {per_call:7.0f} us/call, "
                  f"{distinct / calls:6.1f} distinct endpoints/call, {per_call / (distinct / calls):5.1f} us per "
                  f"distinct endpoint; {total / elapsed:8.0f} events/s", flush=True)
    print(f"load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
