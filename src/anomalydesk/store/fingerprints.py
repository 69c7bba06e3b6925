"""Reading fingerprint streams (one per service; entry id = window start in milliseconds)."""

from __future__ import annotations

import redis

from anomalydesk.config import key_prefix
from anomalydesk.fingerprint import Fingerprint, from_stream_entry
from anomalydesk.store.keys import Keys


def _bound(seconds: float | None, default: str) -> str:
    return default if seconds is None else str(int(seconds * 1000))


def read(r: redis.Redis, service: str, start: float | None = None, end: float | None = None,
         count: int | None = None, keys: Keys | None = None) -> list[Fingerprint]:
    """Fingerprints of windows starting in [start, end] (epoch seconds), oldest first."""
    keys = keys or Keys(key_prefix())
    entries = r.xrange(keys.fingerprints(service), _bound(start, "-"), _bound(end, "+"), count=count)
    return [from_stream_entry(service, fields) for _id, fields in entries]


def latest(r: redis.Redis, service: str, n: int, keys: Keys | None = None) -> list[Fingerprint]:
    """The last `n` fingerprints of a service, oldest first."""
    keys = keys or Keys(key_prefix())
    entries = r.xrevrange(keys.fingerprints(service), count=n)
    return [from_stream_entry(service, fields) for _id, fields in reversed(entries)]
