"""Drill-down queries on a service's sketches (Count-Min, interaction filter, Top-K) and their sizes.

The gears function `ad_query` answers from the native RedisBloom structures or the library's own,
whichever the service's sketches were created with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import redis

from anomalydesk.config import key_prefix
from anomalydesk.events import normalize_endpoint
from anomalydesk.store.keys import Keys


class NoSketches(LookupError):
    """The service has sent nothing yet (or its sketches were reset and nothing came since)."""


def _query(r: redis.Redis, service: str, what: str, items: Sequence[Any], keys: Keys) -> list:
    try:
        return r.fcall("ad_query", 1, keys.state(service), keys.prefix, service, what, orjson.dumps(list(items)))
    except redis.ResponseError as err:
        if "no sketches" in str(err):
            raise NoSketches(f"no sketches for service {service!r}: it has sent nothing yet") from None
        raise


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def endpoint_counts(r: redis.Redis, service: str, names: Sequence[str], keys: Keys | None = None) -> dict[str, int]:
    """Estimated request counts per endpoint since setup (never below the truth)."""
    normalized = [normalize_endpoint(n) for n in names]
    counts = _query(r, service, "endpoint", normalized, keys or Keys(key_prefix()))
    return {name: int(c) for name, c in zip(normalized, counts, strict=True)}


def status_counts(r: redis.Redis, service: str, codes: Sequence[int], keys: Keys | None = None) -> dict[int, int]:
    """Estimated request counts per status code since setup."""
    counts = _query(r, service, "status", [str(int(c)) for c in codes], keys or Keys(key_prefix()))
    return {int(code): int(c) for code, c in zip(codes, counts, strict=True)}


def has_interactions(r: redis.Redis, service: str, endpoints: Sequence[str], keys: Keys | None = None) -> list[bool]:
    """Whether the service was ever seen calling each endpoint (false positives within the filter's bound)."""
    found = _query(r, service, "interaction", [normalize_endpoint(e) for e in endpoints], keys or Keys(key_prefix()))
    return [bool(int(f)) for f in found]


def has_interaction(r: redis.Redis, service: str, endpoint: str, keys: Keys | None = None) -> bool:
    return has_interactions(r, service, [endpoint], keys)[0]


def topk(r: redis.Redis, service: str, keys: Keys | None = None) -> list[tuple[str, int]]:
    """The service's heaviest endpoints with their (over-)estimated counts, heaviest first."""
    flat = _query(r, service, "topk", [], keys or Keys(key_prefix()))
    pairs = [(_text(flat[i]), int(float(flat[i + 1]))) for i in range(0, len(flat), 2) if flat[i] is not None]
    return sorted(pairs, key=lambda p: -p[1])


def info(r: redis.Redis, service: str, keys: Keys | None = None) -> dict[str, Any]:
    """Sizes and memory of a service's sketches, read from the structures themselves on both backends.

    `filter`: kind, capacity (all layers now), initial_capacity, error, layers, items, bytes; `topk`: k,
    kind (space-saving or heavykeeper), width (counters), and depth and decay on native.
    """
    keys = keys or Keys(key_prefix())
    state = {_text(k): _text(v) for k, v in r.hgetall(keys.state(service)).items()}
    if state.get("sk") != "1":
        raise NoSketches(f"no sketches for service {service!r}: it has sent nothing yet")
    measured = orjson.loads(_query(r, service, "info", [], keys))
    layers = int(state.get("bf_layers", 0))
    filter_keys = [f"{keys.filter(service)}:{i}" for i in range(1, layers + 1)] or [keys.filter(service)]
    memory = {
        "cms_endpoints": r.memory_usage(keys.cms_endpoints(service)) or 0,
        "cms_status": r.memory_usage(keys.cms_status(service)) or 0,
        "filter": sum(r.memory_usage(k) or 0 for k in filter_keys),
        "topk": r.memory_usage(keys.topk(service)) or 0,
    }
    return {
        "backend": state.get("be"),
        "cms": {"width": int(state["cms_w"]), "depth": int(state["cms_d"])},
        "filter": measured["filter"],
        "topk": measured["topk"],
        "memory_bytes": memory,
        "memory_total": sum(memory.values()),
    }
