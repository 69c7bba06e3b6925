"""How big a merged write should be (issue 18): the collector at 5,000 endpoints over 50 services with
`COLLECTOR_MICROBATCH_EVENTS` set per run, the runs alternated on one throwaway redis-server.

Each run starts `anomalydesk collect --workers 1` with the cap given (patched into `config` before the
collector is imported), sends `bench collector`'s 5,000-endpoint bodies (500 events each) closed-loop
over the number of connections given for SECONDS, and prints one line: events/s, the CPU µs per event
of the collector, redis-server and the generator, the cores they used together, the collector's RSS
at the end, the load average.

Run: `python scripts/collector_merge_cap.py CAP@CONNECTIONS[@gc-tuned][,...] [SECONDS]`, e.g.
`5000@8,50000@8,5000@128,50000@128,50000@128,5000@128` (default SECONDS 8); `@gc-tuned` runs that
collector with `gc.freeze()` and thresholds GC_TUNED instead of CPython's (700, 10, 10): the experiment
of docs/benchmarks.md, "Fewer garbage-collector passes" (not what the product does).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import orjson
import psutil
import redis

from anomalydesk.bench import collector as bench
from anomalydesk.bench.collector_load import build_request
from anomalydesk.bench.server import throwaway
from anomalydesk.config import SketchSettings
from anomalydesk.store import admin
from anomalydesk.store.gears import ensure_library

GC_TUNED = (100_000, 50, 1_000)


@contextlib.contextmanager
def collector(url: str, cap: int, gc_tuned: bool) -> Iterator[tuple[str, list[int]]]:
    tuned = f"import gc; gc.freeze(); gc.set_threshold(*{GC_TUNED}); " if gc_tuned else ""
    code = ("import sys, anomalydesk.config as c; "
            f"c.COLLECTOR_MICROBATCH_EVENTS = {cap}; {tuned}import anomalydesk.cli as m; "
            f"sys.exit(m.main(['collect', '--port', '0', '--redis', {url!r}, '--json', '--rate-limit', '0', "
            "'--workers', '1']))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        text = ""
        while (match := re.search(r'"listening":\s*"([^"]+)"', text)) is None:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line:
                raise RuntimeError("the collector did not start")
            text += line
        yield match.group(1), [proc.pid]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def main() -> None:
    plan = [(int(fields[0]), int(fields[1]), fields[2:] == ["gc-tuned"])
            for fields in (part.split("@") for part in sys.argv[1].split(","))]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 8.0
    rng = np.random.default_rng(7)
    wide = [bench._wide_events(bench.BATCH, rng) for _ in range(bench.WIDE_BODIES)]
    with throwaway(None) as url:
        r = redis.Redis.from_url(url)
        ensure_library(r)
        admin.setup(r, SketchSettings())
        for cap, connections, gc_tuned in plan:
            with collector(url, cap, gc_tuned) as (base, pids):
                bodies = [build_request(base, "/metrics", orjson.dumps(batch)) for batch in wide]
                cpu = bench._Cpu(pids, bench._redis_pid(r))
                load = os.getloadavg()[0]
                _ok, errors, stored, elapsed, spent = bench._batches_over_http(base, bodies, r, cpu, seconds,
                                                                               connections)
                rss = psutil.Process(pids[0]).memory_info().rss
            print(f"cap {cap:6d} connections {connections:4d}{' gc-tuned' if gc_tuned else ''}: "
                  f"{stored / elapsed:8.0f} events/s, errors {errors}, "
                  f"CPU us/event {bench._per(spent, stored, 1e6)}, cores {sum(spent.values()) / elapsed:.2f}, "
                  f"collector RSS {rss / 2**20:.0f} MiB, load {load:.2f} -> {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
