#!/usr/bin/env python3
"""Server time of one `ad_ingest` call for small live batches (docs/benchmarks.md, issue 14).

Runs on a throwaway redis-server (never your data): 3,000 calls of 1 and of 50 events into one
service, then `INFO commandstats`' FCALL usec_per_call. Usage: .venv/bin/python scripts/bench_fcall_per_call.py
"""

from __future__ import annotations

import json
import time

import redis

from anomalydesk.bench.server import throwaway
from anomalydesk.config import SketchSettings
from anomalydesk.events import parse_metric
from anomalydesk.store import admin
from anomalydesk.store.sink import ingest

CALLS = 3_000


def main() -> None:
    out = {}
    with throwaway() as url:
        r = redis.Redis.from_url(url)
        admin.setup(r, SketchSettings())
        for n in (1, 50):
            batch = [parse_metric({"service": "svc", "endpoint": f"GET:/e{i % 20}", "status_code": 200,
                                   "response_time": 5}) for i in range(n)]  # fmt: skip
            ingest(r, batch)
            r.config_resetstat()
            began = time.perf_counter()
            for _ in range(CALLS):
                ingest(r, batch)
            wall = time.perf_counter() - began
            stats = r.info("commandstats")["cmdstat_fcall"]
            out[f"events_{n}"] = {"fcall_usec_per_call": round(stats["usec_per_call"], 1),
                                  "client_wall_usec_per_call": round(wall / CALLS * 1e6)}  # fmt: skip
        r.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
