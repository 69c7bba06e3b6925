"""Redis memory over an hour of simulated windows with 50,000 distinct endpoints on one service (issue 18).

`python -m anomalydesk.bench.memory_hour [--json]` measures it on a throwaway server per backend (as
`bench` does); tests/test_memory_cardinality.py (slow) asserts the bound on its own server. The workload:
one service, 5-s windows in replay mode, 720 windows (an hour); every 30th window names all 50,000
endpoints once, the others a rotating slice of 2,000 of them, so every endpoint is seen every 25 windows
and the filter holds all 50,000. One flush per window, then one event in the window after the hour so
the last one is sealed. Each full window is uniform, so its fingerprint's true endpoint mix is known:
top-endpoint share 1/50,000, entropy log2(50,000) bits, 50,000 distinct endpoints.

The bound (docs/engine.md "Memory at 50,000 endpoints"): the service's sketches, at most two open
windows (the one being filled, and the one before it until the next call seals it) and one fingerprint
per sealed window; nothing grows with events, and the per-window part does not grow with the window's
distinct endpoints past WINDOW_ENDPOINTS_CAP (the exact counts) and the HyperLogLog's dense size.
It holds for the service's keys at every full window (MEMORY USAGE) and for `used_memory` once the
producer is idle; right after a flush `used_memory` also holds the query buffer of that flush
(`used_memory_growth_peak`, reported, not bounded here).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

import numpy as np
import orjson
import redis

from anomalydesk.config import SketchSettings
from anomalydesk.store import admin, fingerprints
from anomalydesk.store.keys import Keys
from anomalydesk.store.sink import IngestSink

SERVICE = "svc-huge"
ENDPOINTS = 50_000
WINDOWS = 720  # an hour of 5-s windows
FULL_EVERY = 30
SLICE = 2_000
# the documented bound (bytes; docs/engine.md, with the measured figures): the sketches of one service
# holding 50,000 endpoints, per backend; one open window at 50,000 distinct endpoints; one sealed
# fingerprint; one batch id alive (a call in the last BATCH_TTL seconds); and, for used_memory, what the
# server's own structures grow by beside the keys (not broken down: measured 0.7-0.8 MB in this run)
SKETCH_BOUND = {"functions": 320 * 1024, "native": 448 * 1024}
OPEN_WINDOW_BOUND = 96 * 1024
OPEN_WINDOWS = 2
FINGERPRINT_BOUND = 512
BATCH_ID_BOUND = 128
SERVER_ALLOWANCE = 1024 * 1024
# Redis releases a client's query buffer once the client has been idle for 2 s (clientsCron): until then
# used_memory holds the last pipelined flush (all parts of a 50,000-endpoint window, about 1-2 MB)
SETTLE_S = 3.0


def keys_bound(backend: str, windows: int, calls: int) -> int:
    """Bytes the service's keys may hold: sketches, open windows, fingerprints, batch ids of `calls` calls."""
    return (SKETCH_BOUND[backend] + OPEN_WINDOWS * OPEN_WINDOW_BOUND + windows * FINGERPRINT_BOUND
            + calls * BATCH_ID_BOUND)


def bound(backend: str, windows: int, calls: int) -> int:
    """Growth of Redis's used_memory allowed for the hour, once the producer is idle (bytes)."""
    return keys_bound(backend, windows, calls) + SERVER_ALLOWANCE


def _memory(r: redis.Redis) -> tuple[int, int]:
    info = r.info("memory")
    return int(info["used_memory"]), int(info["used_memory_dataset"])


def _usage(r: redis.Redis, keys: list[str]) -> int:
    return sum(int(r.memory_usage(k, samples=0) or 0) for k in keys)


def measure(r: redis.Redis, windows: int = WINDOWS) -> dict[str, Any]:
    """Run the hour on `r` (setup with the default settings, 5-s windows) and report memory and the mix."""
    settings = SketchSettings(window_seconds=5)
    admin.setup(r, settings)
    keys = Keys()
    backend = admin.read_settings(r).backend
    names = [f"GET:/api/v1/huge/res{j}" for j in range(ENDPOINTS)]
    rng = np.random.default_rng(18)
    width = settings.window_seconds
    start = (time.time() // 3600) * 3600 - 2 * 3600  # two hours ago, on an hour boundary: all replay
    sink = IngestSink(r, replay=True, max_batch=10_000_000, max_buffered=10_000_000)
    before, before_data = _memory(r)
    peak, peak_data, peak_keys, open_window_max, samples = 0, 0, 0, 0, []
    for w in range(windows + 1):
        if w == windows:  # one event after the hour: seals its last window
            idx = np.zeros(1, dtype=np.int64)
        elif w % FULL_EVERY == 0:
            idx = rng.permutation(ENDPOINTS)
        else:
            idx = rng.permutation((np.arange(SLICE) + w * SLICE) % ENDPOINTS)
        n = len(idx)
        sink.add_arrays(SERVICE, names, idx, np.full(n, 200), rng.lognormal(3.0, 0.6, n),
                        np.full(n, start + w * width + 1.0))
        sink.flush()
        used, data = _memory(r)
        used, data = used - before, data - before_data
        peak, peak_data = max(peak, used), max(peak_data, data)
        if w % FULL_EVERY == 0 and w < windows:  # the full window, open: its three keys, and every key
            win = int((start + w * width + 1.0) // width)
            open_window_max = max(open_window_max, _usage(r, [keys.window(SERVICE, win),
                                                              keys.window_endpoints(SERVICE, win),
                                                              keys.window_hll(SERVICE, win)]))
            peak_keys = max(peak_keys, _usage(r, [k.decode() for k in r.scan_iter(match=f"{keys.tag(SERVICE)}*")]))
        if w % 60 == 0:
            samples.append((w, used, data))
    sink.close()
    time.sleep(SETTLE_S)  # the client's query buffer (the last pipelined flush) is released when idle
    after, after_data = _memory(r)
    tag = keys.tag(SERVICE)
    left = [k.decode() for k in r.scan_iter(match=f"{tag}*")]
    batch_keys = [k for k in left if k.startswith(keys.tag(SERVICE) + ":batch:")]
    sketch_keys = [keys.cms_endpoints(SERVICE), keys.cms_status(SERVICE), keys.topk(SERVICE)]
    sketch_keys += [k.decode() for k in r.scan_iter(match=f"{keys.filter(SERVICE)}*")]
    fps = fingerprints.read(r, SERVICE)
    full = [fp for i, fp in enumerate(fps) if i % FULL_EVERY == 0]
    true_entropy = math.log2(ENDPOINTS)
    fp_bytes = _usage(r, [keys.fingerprints(SERVICE)])
    return {
        "backend": backend, "windows": windows, "events": windows // FULL_EVERY * ENDPOINTS
        + (windows - windows // FULL_EVERY) * SLICE + 1,
        "used_memory_growth_peak": peak, "used_memory_growth_settled": after - before,
        "used_memory_dataset_growth_peak": peak_data, "used_memory_dataset_growth_after": after_data - before_data,
        "service_keys_bytes_peak": peak_keys, "service_keys_bytes_after": _usage(r, left),
        "samples_window_used_dataset": samples, "bound": bound(backend, windows, len(batch_keys)),
        "keys_bound": keys_bound(backend, windows, len(batch_keys)),
        "sketch_bytes": _usage(r, sketch_keys),
        "sketch_bytes_by_key": {k[len(tag):]: _usage(r, [k]) for k in sketch_keys},
        "batch_id_keys": len(batch_keys), "batch_id_bytes": _usage(r, batch_keys),
        "open_window_bytes_max": open_window_max,
        "fingerprints": len(fps), "fingerprint_stream_bytes": fp_bytes,
        "fingerprint_bytes_each": round(fp_bytes / max(len(fps), 1), 1),
        "service_keys_left": sorted(k[len(tag):] for k in left if k not in batch_keys),
        "full_windows": len(full),
        "endpoints_distinct_max_error": max(abs(fp.get("endpoints_distinct") / ENDPOINTS - 1) for fp in full),
        "endpoint_entropy_max_error_bits": max(abs(fp.get("endpoint_entropy") - true_entropy) for fp in full),
        "top_endpoint_share_max_error": max(abs(fp.get("top_endpoint_share") - 1 / ENDPOINTS) for fp in full),
    }


def main(argv: list[str] | None = None) -> int:
    from anomalydesk.bench.server import ModuleUnavailable, throwaway

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=WINDOWS)
    args = parser.parse_args(argv)
    out: dict[str, Any] = {}
    for backend in ("functions", "native"):
        try:
            with throwaway(backend=backend) as url:
                client = redis.Redis.from_url(url)
                began = time.perf_counter()
                out[backend] = measure(client, args.windows)
                out[backend]["seconds"] = round(time.perf_counter() - began, 1)
                client.close()
        except ModuleUnavailable as err:
            out[backend] = {"unavailable": str(err)}
    sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
