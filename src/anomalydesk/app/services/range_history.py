"""Time ranges longer than the live ring buffers: the streams read on demand and downsampled (Qt-free).

The live buffers hold `LIVE_CAPACITY` windows per service (5 h of 5-s windows). A 6-h or 24-h view, or
a pan into the past, reads the service's fingerprint stream, its history stream (windows before the
first live one, from a backfill) and the scores the detector stored, in chunks, into rows of the
buffers' layout `[window start, score, features…]`. More rows than the plot has room for are reduced
to time bins: per bin the minimum and the maximum of every column, so a one-window spike still shows
(what pyqtgraph's "peak" downsampling keeps). A bin without a window is a NaN row, and so is every
gap between windows in rows that are not reduced: a gap in time stays a gap in the curve.

`read_range` is the pure, blocking part (the session's sync client, any thread). `RangeLoader` runs
it in its own one-thread executor: the panel snapshots what to read on the GUI thread, awaits the
result and applies it there; a new request cancels the one before it (a flag checked between chunks),
and a superseded request returns None.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from anomalydesk.fingerprint import FEATURE_NAMES, N_FEATURES
from anomalydesk.store.admin import window_seconds as stored_window_seconds
from anomalydesk.store.keys import Keys

COLUMNS = 2 + N_FEATURES  # as `state.LIVE_COLUMNS`: window start, stored score (NaN: none), features…
READ_CHUNK = 2_000  # stream entries per XRANGE (the cancel flag is checked between chunks)
DEFAULT_POINTS = 1_000  # time bins of a reduced range: about one per pixel of a wide plot
_FIELDS = tuple(name.encode() for name in FEATURE_NAMES)


class Cancelled(Exception):
    """A newer request replaced this one while it was being read."""


@dataclass(frozen=True)
class RangeRows:
    """What one request read: `rows` in the buffers' layout (NaN rows at gaps), over [start, end]."""

    service: str
    start: float
    end: float
    rows: np.ndarray
    windows: int  # windows read from the streams, before any reduction
    bin_seconds: float  # the time bins' width; the window length when not reduced

    @property
    def reduced(self) -> bool:
        return self.windows > 0 and len(self.rows) < self.windows


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled


def _entries(r: redis.Redis, stream: str, start: float, end: float,
             cancel: threading.Event | None) -> list[Any]:  # fmt: skip
    """Every entry of `stream` whose id (the window start in ms) lies in [start, end], in chunks."""
    found: list[Any] = []
    low: str = str(math.floor(start * 1000))
    high = str(math.ceil(end * 1000))
    while True:
        _check(cancel)
        chunk = r.xrange(stream, min=low, max=high, count=READ_CHUNK)
        found.extend(chunk)
        if len(chunk) < READ_CHUNK:
            return found
        last = chunk[-1][0]
        low = "(" + (last.decode() if isinstance(last, bytes) else str(last))


def _fingerprint_rows(entries: list[Any], window_s: int) -> dict[float, list[float]]:
    """window start → [start, NaN, features…] of readable entries of this window length."""
    rows: dict[float, list[float]] = {}
    for _id, fields in entries:
        get = fields.get
        try:
            ws = get(b"ws") or get("ws")
            if ws and int(ws) != window_s:
                continue  # a history stream of another window length does not belong on this axis
            start = float(get(b"start") or get("start"))
            rows[start] = [start, math.nan, *(float(get(f) or get(f.decode()) or 0.0) for f in _FIELDS)]
        except (TypeError, ValueError):
            continue  # unreadable entries are skipped, as the live reader skips them
    return rows


def mark_gaps(rows: np.ndarray, spacing: float) -> np.ndarray:
    """`rows` (ascending column 0) with a NaN row just after every step longer than 1.5 × `spacing`."""
    if len(rows) < 2 or spacing <= 0:
        return rows
    gaps = np.flatnonzero(np.diff(rows[:, 0]) > 1.5 * spacing)
    if not len(gaps):
        return rows
    filler = np.full((len(gaps), rows.shape[1]), np.nan)
    filler[:, 0] = rows[gaps, 0] + spacing
    return np.insert(rows, gaps + 1, filler, axis=0)


def bin_width(start: float, end: float, points: int, window_s: float) -> float:
    """The width of the time bins that fit [start, end] into `points`: a whole number of windows."""
    per_point = max(end - start, window_s) / max(points, 1)
    return float(max(1, math.ceil(per_point / window_s)) * window_s)


def downsample(rows: np.ndarray, bin_s: float) -> np.ndarray:
    """Per time bin of `bin_s` seconds, a row of the minima and a row of the maxima of every column
    (NaN ignored; at a quarter and three quarters of the bin), and a NaN row for each run of empty bins."""
    if not len(rows):
        return rows
    origin = math.floor(rows[0, 0] / bin_s) * bin_s
    index = np.floor((rows[:, 0] - origin) / bin_s).astype(np.int64)
    firsts = np.flatnonzero(np.r_[True, np.diff(index) > 0])  # rows are in time order: bins are runs
    bins = index[firsts]
    values = rows[:, 1:]
    lows = np.fmin.reduceat(values, firsts, axis=0)  # fmin/fmax skip NaN (an unscored window)
    highs = np.fmax.reduceat(values, firsts, axis=0)
    out = np.empty((2 * len(bins), rows.shape[1]))
    out[0::2, 0] = origin + (bins + 0.25) * bin_s
    out[1::2, 0] = origin + (bins + 0.75) * bin_s
    out[0::2, 1:] = lows
    out[1::2, 1:] = highs
    empty = np.flatnonzero(np.diff(bins) > 1)  # a run of empty bins after bin `empty`
    if len(empty):
        filler = np.full((len(empty), rows.shape[1]), np.nan)
        filler[:, 0] = origin + (bins[empty] + 1.5) * bin_s
        out = np.insert(out, 2 * (empty + 1), filler, axis=0)
    return out


def read_range(r: redis.Redis, keys: Keys, service: str, start: float, end: float,
               points: int = DEFAULT_POINTS, cancel: threading.Event | None = None) -> RangeRows:  # fmt: skip
    """The windows of `service` in [start, end] with their stored scores, reduced to `points` bins
    when there are more windows than that; raises `Cancelled` once `cancel` is set."""
    window_s = stored_window_seconds(r, keys)
    found = _fingerprint_rows(_entries(r, keys.history(service, window_s), start, end, cancel), window_s)
    found.update(_fingerprint_rows(_entries(r, keys.fingerprints(service), start, end, cancel), window_s))
    _check(cancel)  # (a window in both streams: the live stream's entry wins)
    rows = np.array(sorted(found.values()), dtype=np.float64).reshape(-1, COLUMNS)
    if len(rows):
        scored = _entries(r, keys.scores(service), start, end, cancel)
        _check(cancel)
        starts, values = [], []
        for _id, fields in scored:
            try:
                starts.append(float(fields.get(b"start") or fields.get("start")))
                values.append(float(fields.get(b"score") or fields.get("score")))
            except (TypeError, ValueError):
                continue
        if starts:
            at = np.searchsorted(rows[:, 0], starts).clip(0, len(rows) - 1)
            hit = rows[at, 0] == np.asarray(starts)
            rows[at[hit], 1] = np.asarray(values)[hit]
    windows = len(rows)
    if windows > points:
        bin_s = bin_width(start, end, points, window_s)
        return RangeRows(service, start, end, downsample(rows, bin_s), windows, bin_s)
    return RangeRows(service, start, end, mark_gaps(rows, window_s), windows, float(window_s))


class RangeLoader:
    """Runs `read_range` off the GUI thread, one request at a time: a new one cancels the old."""

    def __init__(self, connect: Callable[[], tuple[redis.Redis, Keys]], points: int = DEFAULT_POINTS):
        self.connect = connect  # the session's sync client and key layout, asked for at each request
        self.points = points
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ad-range")
        self._cancel: threading.Event | None = None
        self.requests = 0
        self.cancelled = 0

    async def load(self, service: str, start: float, end: float) -> RangeRows | None:
        """The rows of `service` over [start, end], or None when a newer request replaced this one."""
        if self._cancel is not None:
            self._cancel.set()
        cancel = self._cancel = threading.Event()
        self.requests += 1
        client, keys = self.connect()  # snapshot on the calling (GUI) thread
        loop = asyncio.get_running_loop()
        try:
            found = await loop.run_in_executor(self.executor, read_range, client, keys, service, start, end,
                                               self.points, cancel)  # fmt: skip
        except Cancelled:
            self.cancelled += 1
            return None
        finally:
            if self._cancel is cancel:
                self._cancel = None
        if cancel.is_set():  # replaced after its read finished: the newer one applies
            self.cancelled += 1
            return None
        return found

    async def windows(self, service: str, start: float, end: float) -> RangeRows:
        """Every window of `service` over [start, end], never reduced (an export writes windows, not
        bins); it cancels nothing and waits for a read in flight (one executor)."""
        client, keys = self.connect()  # snapshot on the calling (GUI) thread
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, read_range, client, keys, service, start, end,
                                          2**62, None)  # fmt: skip

    def close(self) -> None:
        """Cancel what runs and shut the executor down."""
        if self._cancel is not None:
            self._cancel.set()
        self.executor.shutdown(wait=True, cancel_futures=True)
