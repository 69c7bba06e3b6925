"""Reading fingerprint streams (one per service; entry id = window start in milliseconds).

Long ranges are read in pages: one huge XRANGE reply is parsed in a single C call that holds the
GIL, which stalls every other thread of the process (the desktop app's event loop while it trains).
"""

from __future__ import annotations

import redis

from anomalydesk.config import key_prefix
from anomalydesk.fingerprint import Fingerprint, from_stream_entry
from anomalydesk.store.keys import Keys

PAGE = 1_000


def _bound(seconds: float | None, default: str) -> str:
    return default if seconds is None else str(int(seconds * 1000))


def read(r: redis.Redis, service: str, start: float | None = None, end: float | None = None,
         count: int | None = None, keys: Keys | None = None) -> list[Fingerprint]:
    """Fingerprints of windows starting in [start, end] (epoch seconds), oldest first, at most `count`."""
    keys = keys or Keys(key_prefix())
    stream, low, high = keys.fingerprints(service), _bound(start, "-"), _bound(end, "+")
    found: list[Fingerprint] = []
    while count is None or len(found) < count:
        page = PAGE if count is None else min(PAGE, count - len(found))
        entries = r.xrange(stream, low, high, count=page)
        found += [from_stream_entry(service, fields) for _id, fields in entries]
        if len(entries) < page:
            break
        last = entries[-1][0]
        low = "(" + (last.decode() if isinstance(last, bytes) else last)
    return found


def latest(r: redis.Redis, service: str, n: int, keys: Keys | None = None) -> list[Fingerprint]:
    """The last `n` fingerprints of a service, oldest first."""
    keys = keys or Keys(key_prefix())
    stream, high = keys.fingerprints(service), "+"
    found: list[Fingerprint] = []
    while len(found) < n:
        page = min(PAGE, n - len(found))
        entries = r.xrevrange(stream, high, "-", count=page)
        found += [from_stream_entry(service, fields) for _id, fields in entries]
        if len(entries) < page:
            break
        last = entries[-1][0]
        high = "(" + (last.decode() if isinstance(last, bytes) else last)
    found.reverse()
    return found
