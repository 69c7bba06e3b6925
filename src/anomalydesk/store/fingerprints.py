"""Reading fingerprint streams (one per service; entry id = window start in milliseconds).

Long ranges are read in pages: one huge XRANGE reply is parsed in a single C call that holds the
GIL, which stalls every other thread of the process (the desktop app's event loop while it trains).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import chain
from typing import Any

import numpy as np
import redis
from redis.client import NEVER_DECODE

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


def latest_columns(r: redis.Redis, service: str, n: int, names: Sequence[str], defaults: Sequence[str], *,
                   keys: Keys, stream: str | None = None) -> np.ndarray:
    """(m ≤ n, len(names)) float64: the named fields of the last `n` entries, oldest first.

    `stream` defaults to the service's live fingerprint stream (`Keys.history` for its history).

    For training on up to a day of windows: entries are taken as the server sends them (no dict per
    entry, no decoding), and only the named fields are converted, in one pass; an entry without a
    field gets its default. A field that is not a number raises ValueError.
    """
    stream, high = stream or keys.fingerprints(service), b"+"
    raw = _raw_client(r, stream)
    wanted = [name.encode() for name in names]
    fallback = [default.encode() for default in defaults]
    pages: list[np.ndarray] = []  # newest first
    read = 0
    while read < n:
        page = min(PAGE, n - read)
        entries = raw.execute_command("XREVRANGE", stream, high, "-", "COUNT", page, **{NEVER_DECODE: True})
        if entries:
            pages.append(_page_values(entries, wanted, fallback))
        read += len(entries)
        if len(entries) < page:
            break
        high = b"(" + entries[-1][0]
    if not pages:
        return np.empty((0, len(wanted)))
    return np.ascontiguousarray(np.concatenate(pages)[::-1])


def _page_values(entries: list[list[Any]], wanted: list[bytes], fallback: list[bytes]) -> np.ndarray:
    """(entries, wanted) float64 of one XREVRANGE page; in one pass when all entries share one layout
    (the gears library writes one), else entry by entry with defaults for missing fields."""
    layout = entries[0][1][0::2]
    flat = list(chain.from_iterable(fields for _id, fields in entries))
    if flat[0::2] == layout * len(entries) and all(name in layout for name in wanted):
        table = np.array(flat[1::2], dtype=object).reshape(len(entries), len(layout))
        picked: Iterable[bytes] = table[:, [layout.index(name) for name in wanted]].ravel()
    else:  # older entries without some field: the defaults
        rows = []
        for _id, fields in entries:
            got = dict(zip(fields[0::2], fields[1::2], strict=True))
            rows.append([got.get(name, default) for name, default in zip(wanted, fallback, strict=True)])
        picked = chain.from_iterable(rows)
    values = np.fromiter(map(float, picked), dtype=np.float64, count=len(entries) * len(wanted))
    return values.reshape(len(entries), len(wanted))


def _raw_client(r: redis.Redis, key: str) -> redis.Redis:
    """A client on `r`'s connections (the key's node in a cluster) whose XREVRANGE returns the reply as
    the server sends it: [[id, [name, value, …]], …], without redis-py's dict per entry."""
    from anomalydesk.store.cluster import is_cluster

    if is_cluster(r):
        r = r.get_redis_connection(r.get_node_from_key(key))  # type: ignore[attr-defined]
    raw = redis.Redis(connection_pool=r.connection_pool)  # shares the pool; closing it leaves the pool open
    raw.set_response_callback("XREVRANGE", lambda response, **options: response)
    return raw
