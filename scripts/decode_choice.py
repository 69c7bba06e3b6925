"""Which compiled decoder for the collector's bodies (issue 18, build 2): events/s of three ways to go from
JSON bytes to validated `Metric` tuples, on `bench ingest`'s 5,000-endpoint traffic (bodies of 500 events).

- `msgspec`: `wire.decode_metrics` (typed structs, constraints checked in C while parsing);
- `orjson_vectorised`: `orjson.loads`, then each field pulled into a column, its types checked per
  column (`set(map(type, ...))`) and its ranges with numpy, then the tuples built;
- `per_item`: the previous path, `orjson.loads` then `events.parse_batch`.

Each is timed best-of-5 over the same bodies, client only (no Redis). Run:
`python scripts/decode_choice.py [EVENTS]` (default 200,000); prints one JSON line with the load average.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

import numpy as np
import orjson

from anomalydesk.bench.ingest import _wide_bodies
from anomalydesk.config import MAX_LATENCY_MS, TIMESTAMP_MAX, TIMESTAMP_MIN
from anomalydesk.events import Metric, normalize_endpoint, parse_batch, validate_service_cached
from anomalydesk.wire import decode_metrics

_FIELDS = frozenset({"service", "endpoint", "status_code", "response_time", "timestamp"})


def orjson_vectorised(body: bytes) -> list[Metric] | None:
    """orjson plus per-column checks; None where the per-item path would have to answer."""
    items = orjson.loads(body)
    if type(items) is not list or any(type(d) is not dict or not d.keys() <= _FIELDS for d in items):
        return None
    try:
        services = [d["service"] for d in items]
        endpoints = [d["endpoint"] for d in items]
        status = [d["status_code"] for d in items]
        latency = [d["response_time"] for d in items]
    except KeyError:
        return None
    ts = [d.get("timestamp") for d in items]
    if not (set(map(type, services)) <= {str} and set(map(type, endpoints)) <= {str}
            and set(map(type, status)) <= {int} and set(map(type, latency)) <= {int, float}
            and set(map(type, ts)) <= {int, float, type(None)}):
        return None
    st, lat = np.asarray(status, dtype=np.int64), np.asarray(latency, dtype=np.float64)
    if len(items) and (st.min() < 100 or st.max() > 599 or lat.min() < 0 or lat.max() > MAX_LATENCY_MS):
        return None
    if any(t is not None and not TIMESTAMP_MIN <= t <= TIMESTAMP_MAX for t in ts):
        return None
    for service in set(services):
        validate_service_cached(service)
    lat_list = lat.tolist()
    return [Metric(s, normalize_endpoint(e), c, la, None if t is None else float(t))
            for s, e, c, la, t in zip(services, endpoints, status, lat_list, ts, strict=True)]


def per_item(body: bytes) -> list[Metric]:
    return parse_batch(orjson.loads(body))[0]  # type: ignore[return-value]


def _best(decode: Callable[[bytes], object], bodies: list[bytes], events: int) -> float:
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        for body in bodies:
            decode(body)
        best = max(best, events / (time.perf_counter() - start))
    return best


def main() -> None:
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    bodies = _wide_bodies(events, seed=7)
    expected = [per_item(b) for b in bodies]
    for decode in (decode_metrics, orjson_vectorised):
        assert [decode(b) for b in bodies] == expected, decode.__name__  # same events, or it is not a choice
    load = os.getloadavg()[0]
    rates = {name: round(_best(fn, bodies, events)) for name, fn in
             (("msgspec", decode_metrics), ("orjson_vectorised", orjson_vectorised), ("per_item", per_item))}
    print(json.dumps({**rates, "events": events, "load_avg_1m": [round(load, 2), round(os.getloadavg()[0], 2)]}))


if __name__ == "__main__":
    main()
