"""`anomalydesk bench ingest` runs end to end and reports its numbers beside the naive ceiling."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_ingest_quick_json(redis_url: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "anomalydesk.cli", "bench", "ingest", "--quick", "--json", "--redis", redis_url],
        capture_output=True, text=True, timeout=300, check=True,
    )
    report = json.loads(out.stdout)["ingest"]
    for key in ("events_per_s", "raw_xadd_per_s", "ratio", "used_memory_before", "used_memory_after"):
        assert report[key] > 0, key
    assert abs(report["ratio"] - report["events_per_s"] / report["raw_xadd_per_s"]) <= 0.01 * report["ratio"]
    import redis

    r = redis.Redis.from_url(redis_url)
    assert not list(r.scan_iter(match="adbench*")), "the benchmark left data on a given server"
