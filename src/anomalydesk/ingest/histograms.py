"""Pre-aggregated HTTP traffic → the engine's window aggregates, shared by the OTLP receiver and the
Prometheus scraper.

Both sources report latency as explicit-bucket histograms (bounds b0 < b1 < … ; bucket i holds
(b[i-1], b[i]], the first (-inf, b0], the last (b[-1], +inf)). The engine keeps log buckets
(`fingerprint.latency_bucket`, 8 per octave). `spread` moves each source bucket's count onto the
engine buckets it covers, in proportion to their overlap on a log scale (geometric position), with
integer counts that add up exactly to the source bucket's count. So the count below every source
bound is preserved, and a quantile read from the engine histogram lies in the source bucket that
holds the true quantile, widened by the engine's own resolution (a factor 2**(1/16), 4.4 %).
Open ends: the first bucket starts at the reported minimum (else one octave below b0), the last ends
at the reported maximum (else one octave above b[-1]).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from anomalydesk.fingerprint import LAT_MAX_BUCKET, LAT_MIN_MS, bucket_bounds, bucket_value, latency_bucket
from anomalydesk.store.sink import WindowAggregate

_OPEN_END_OCTAVES = 1.0


def integer_split(total: int, weights: Sequence[float]) -> list[int]:
    """`total` split in proportion to `weights` as integers adding up to `total` (largest remainder)."""
    s = sum(weights)
    if total <= 0 or s <= 0:
        return [0] * len(weights)
    exact = [total * w / s for w in weights]
    out = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - out[i], reverse=True)
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out


def _spread_interval(lo: float, hi: float, count: int, into: dict[int, int]) -> None:
    """Add `count` values lying in [lo, hi] ms to engine buckets, by overlap on a log scale."""
    if count <= 0:
        return
    floor_ms = LAT_MIN_MS / 2  # bucket 0 ([0, 0.1 ms)) is taken to span one octave for the overlap
    lo, hi = max(lo, floor_ms), max(hi, floor_ms)
    first, last = latency_bucket(lo), latency_bucket(hi)
    if first == last or hi <= lo:
        into[first] = into.get(first, 0) + count
        return
    weights = []
    for b in range(first, last + 1):
        b_lo, b_hi = (floor_ms, LAT_MIN_MS) if b == 0 else bucket_bounds(b)
        if b == LAT_MAX_BUCKET:
            b_hi = max(b_hi, hi)
        overlap = math.log2(min(hi, b_hi)) - math.log2(max(lo, b_lo))
        weights.append(max(overlap, 0.0))
    for b, c in zip(range(first, last + 1), integer_split(count, weights), strict=True):
        if c:
            into[b] = into.get(b, 0) + c


def spread(bounds_ms: Sequence[float], counts: Sequence[int], min_ms: float | None = None,
           max_ms: float | None = None) -> dict[int, int]:
    """Explicit-bucket counts (len(bounds)+1 buckets, bounds in ms) → engine bucket → count."""
    if len(counts) != len(bounds_ms) + 1:
        raise ValueError(f"histogram has {len(counts)} bucket counts for {len(bounds_ms)} bounds "
                         "(expected one more count than bounds)")
    if any(b2 <= b1 for b1, b2 in pairwise(bounds_ms)):
        raise ValueError("histogram bounds must increase strictly")
    out: dict[int, int] = {}
    for i, c in enumerate(counts):
        if c < 0:
            raise ValueError(f"histogram bucket {i} has a negative count ({c})")
        if c == 0:
            continue
        if not bounds_ms:  # a single bucket: everything between min and max
            lo = min_ms if min_ms is not None else 0.0
            hi = max_ms if max_ms is not None else lo
        else:
            lo = bounds_ms[i - 1] if i > 0 else bounds_ms[0] / 2**_OPEN_END_OCTAVES
            hi = bounds_ms[i] if i < len(bounds_ms) else bounds_ms[-1] * 2**_OPEN_END_OCTAVES
            if i == 0 and min_ms is not None:
                lo = min_ms
            if i == len(bounds_ms) and max_ms is not None:
                hi = max_ms
            # the reported extremes narrow any bucket they fall into
            if min_ms is not None and lo < min_ms <= hi:
                lo = min_ms
            if max_ms is not None and lo <= max_ms < hi:
                hi = max_ms
        _spread_interval(lo, max(lo, hi), int(c), out)
    return out


def estimated_sum(hist: dict[int, int]) -> float:
    """Latency sum (ms) from bucket midpoints, for sources that report no sum."""
    return float(sum(bucket_value(b) * c for b, c in hist.items()))


@dataclass
class TrafficBuilder:
    """Accumulates one service's traffic (per endpoint and status) into one WindowAggregate."""

    agg: WindowAggregate = field(default_factory=WindowAggregate)

    def add(self, endpoint: str, status: int, n: int, hist: dict[int, int], latency_sum_ms: float | None) -> None:
        """Add `n` requests to `endpoint` answered `status`, with their latency histogram (adds up to n)."""
        if n <= 0:
            return
        if sum(hist.values()) != n:
            raise ValueError(f"{endpoint}: latency histogram holds {sum(hist.values())} values for {n} requests")
        a = self.agg
        a.n += n
        if 400 <= status < 500:
            a.e4 += n
        elif status >= 500:
            a.e5 += n
        a.latency_sum_ms += estimated_sum(hist) if latency_sum_ms is None else max(latency_sum_ms, 0.0)
        for b, c in hist.items():
            a.hist[b] = a.hist.get(b, 0) + c
        a.endpoints[endpoint] = a.endpoints.get(endpoint, 0) + n
        a.statuses[status] = a.statuses.get(status, 0) + n

    @property
    def empty(self) -> bool:
        return self.agg.n == 0


def rescale(hist: dict[int, int], n: int) -> dict[int, int]:
    """A histogram with the same shape holding exactly `n` values (n=0 → empty)."""
    keys = sorted(hist)
    return {b: c for b, c in zip(keys, integer_split(n, [hist[b] for b in keys]), strict=True) if c}
