"""Encoding for the gears `ad_ingest` payload: buffered columns → pre-aggregated per-service JSON.

Pre-aggregation loses nothing the server keeps: a window's aggregates are sums (requests, 4xx, 5xx,
latency sum, histogram bucket counts, per-endpoint and per-status counts), and the sketches take
increments per distinct item. The payload format is documented at the top of gears/anomalydesk.lua.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from anomalydesk.config import RAW_STREAM_MAXLEN, SketchSettings
from anomalydesk.contract import PAYLOAD_VERSION, IngestPayload, KpiRow, PayloadConfig, PayloadWindow, RawEvent
from anomalydesk.events import BusinessMetric, Metric
from anomalydesk.fingerprint import latency_bucket, latency_buckets

# one FCALL's work grows with the distinct endpoints it updates: a batch with more is split
MAX_ENDPOINTS_PER_CALL = 2_000
# up to this many events per service, plain Python counting beats numpy's fixed cost of about
# 300 µs per service (np.unique & co.): one event takes ~14 µs instead of ~260 µs; the two are
# even at about 450 events (measured, tests/test_collector_encoding.py checks both agree)
SMALL_BATCH_EVENTS = 400
_RAW_RNG = np.random.default_rng()
Event = Metric | BusinessMetric


@dataclass
class Columns:
    """One service's buffered events, column-wise."""

    vocab: dict[str, int] = field(default_factory=dict)
    ep: list[np.ndarray] = field(default_factory=list)
    status: list[np.ndarray] = field(default_factory=list)
    latency: list[np.ndarray] = field(default_factory=list)
    ts: list[np.ndarray] = field(default_factory=list)
    # per-event path, converted to arrays at encode time
    ep_list: list[int] = field(default_factory=list)
    status_list: list[int] = field(default_factory=list)
    latency_list: list[float] = field(default_factory=list)
    ts_list: list[float] = field(default_factory=list)
    kpis: list[tuple[str, float, float | None, float | None, float | None]] = field(default_factory=list)
    count: int = 0

    def add_metric(self, m: Metric) -> None:
        _, endpoint, status, latency, ts = m  # unpacking is cheaper than five attribute reads
        vocab = self.vocab
        index = vocab.get(endpoint)
        if index is None:
            index = vocab[endpoint] = len(vocab)
        self.ep_list.append(index)
        self.status_list.append(status)
        self.latency_list.append(latency)
        self.ts_list.append(math.nan if ts is None else ts)
        self.count += 1

    def add_arrays(self, endpoints: Sequence[str], idx: np.ndarray, status: np.ndarray,
                   latency: np.ndarray, ts: np.ndarray | None) -> None:
        remap = np.fromiter((self.vocab.setdefault(e, len(self.vocab)) for e in endpoints),
                            dtype=np.int64, count=len(endpoints))
        self.ep.append(remap[np.asarray(idx, dtype=np.int64)])
        self.status.append(np.asarray(status, dtype=np.int64))
        self.latency.append(np.asarray(latency, dtype=np.float64))
        self.ts.append(np.full(len(idx), math.nan) if ts is None else np.asarray(ts, dtype=np.float64))
        self.count += len(idx)

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        ep, st, lat, ts = list(self.ep), list(self.status), list(self.latency), list(self.ts)
        if self.ep_list:
            ep.append(np.asarray(self.ep_list, dtype=np.int64))
            st.append(np.asarray(self.status_list, dtype=np.int64))
            lat.append(np.asarray(self.latency_list, dtype=np.float64))
            ts.append(np.asarray(self.ts_list, dtype=np.float64))
        if not ep:
            empty_i, empty_f = np.empty(0, np.int64), np.empty(0, np.float64)
            return empty_i, empty_i, empty_f, empty_f
        return np.concatenate(ep), np.concatenate(st), np.concatenate(lat), np.concatenate(ts)


def _pairs(keys: np.ndarray, counts: np.ndarray, lo: int, hi: int, key_of) -> list:
    out: list = []
    for k, c in zip(keys[lo:hi].tolist(), counts[lo:hi].tolist(), strict=True):
        out.append(key_of(k))
        out.append(c)
    return out


def _window_groups(ep: np.ndarray, st: np.ndarray, lat: np.ndarray, ts: np.ndarray, names: list[str],
                   replay: bool, window_s: int) -> list[PayloadWindow]:
    if len(ep) == 0:
        return []
    win = _windows_of(ts, replay, window_s)
    windows, winv = np.unique(win, return_inverse=True)
    nwin = len(windows)
    n = np.bincount(winv, minlength=nwin)
    e4 = np.bincount(winv, weights=(st >= 400) & (st < 500), minlength=nwin)
    e5 = np.bincount(winv, weights=st >= 500, minlength=nwin)
    ls = np.bincount(winv, weights=lat, minlength=nwin)
    vsize = max(len(names), 1)

    def grouped(keys: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        uniq, counts = np.unique(winv * base + keys, return_counts=True)
        bounds = np.searchsorted(uniq // base, np.arange(nwin + 1))
        return uniq % base, counts, bounds

    hk, hc, hb = grouped(latency_buckets(lat), 256)
    ek, ec, eb = grouped(ep, vsize)
    sk, sc, sb = grouped(st, 1000)
    groups = []
    for i in range(nwin):
        groups.append({
            "win": int(windows[i]) if replay else 0,
            "n": int(n[i]), "e4": int(e4[i]), "e5": int(e5[i]), "ls": float(ls[i]),
            "h": _pairs(hk, hc, hb[i], hb[i + 1], int),
            "ep": _pairs(ek, ec, eb[i], eb[i + 1], names.__getitem__),
            "st": _pairs(sk, sc, sb[i], sb[i + 1], int),
        })
    return groups


def _windows_of(ts: np.ndarray, replay: bool, window_s: int) -> np.ndarray:
    """Each event's window: by its timestamp in replay mode, 0 live (the server's clock decides)."""
    if not replay:
        return np.zeros(len(ts), dtype=np.int64)
    if np.isnan(ts).any():
        raise ValueError("replay mode needs a timestamp on every event")
    return np.floor(ts / window_s).astype(np.int64)


def _groups_small(cols: Columns, names: list[str], replay: bool, window_s: int) -> list[PayloadWindow]:
    """`_window_groups` for a few events buffered per event (no numpy): same payload, same order."""
    if not cols.ep_list:
        return []
    rows = zip(cols.ep_list, cols.status_list, cols.latency_list, strict=True)
    if not replay:
        return [_group_of(0, rows, names)]
    by_window: dict[int, list[tuple[int, int, float]]] = {}
    for row, ts in zip(rows, cols.ts_list, strict=True):
        if ts != ts:
            raise ValueError("replay mode needs a timestamp on every event")
        by_window.setdefault(math.floor(ts / window_s), []).append(row)
    return [_group_of(win, by_window[win], names) for win in sorted(by_window)]


def _group_of(win: int, rows: Iterable[tuple[int, int, float]], names: list[str]) -> PayloadWindow:
    hist: dict[int, int] = {}
    endpoints: dict[int, int] = {}
    statuses: dict[int, int] = {}
    n, latency_sum = 0, 0.0
    for ep, status, latency in rows:
        n += 1
        latency_sum += latency
        bucket = latency_bucket(latency)
        hist[bucket] = hist.get(bucket, 0) + 1
        endpoints[ep] = endpoints.get(ep, 0) + 1
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "win": win, "n": n,
        "e4": sum(c for s, c in statuses.items() if 400 <= s < 500),
        "e5": sum(c for s, c in statuses.items() if s >= 500),
        "ls": latency_sum,
        "h": [x for b in sorted(hist) for x in (b, hist[b])],
        "ep": [x for e in sorted(endpoints) for x in (names[e], endpoints[e])],
        "st": [x for s in sorted(statuses) for x in (s, statuses[s])],
    }


def _raw_rows(ep: np.ndarray, st: np.ndarray, lat: np.ndarray, ts: np.ndarray, names: list[str],
              sample: float) -> list[RawEvent]:
    """Full-fidelity mode: a random `sample` share of the events, kept raw by the server."""
    if sample <= 0 or len(ep) == 0:
        return []
    picked = np.flatnonzero(_RAW_RNG.random(len(ep)) < sample) if sample < 1 else np.arange(len(ep))
    return [[names[e], s, la, None if t != t else t]
            for e, s, la, t in zip(ep[picked].tolist(), st[picked].tolist(), lat[picked].tolist(),
                                   ts[picked].tolist(), strict=True)]


def _kpi_rows(cols: Columns, replay: bool, window_s: int) -> list[KpiRow]:
    agg: dict[tuple[int, str], list[Any]] = {}
    for name, value, low, high, ts in cols.kpis:
        if replay and ts is None:
            raise ValueError("replay mode needs a timestamp on every business metric")
        win = int(ts // window_s) if replay and ts is not None else 0
        row = agg.setdefault((win, name), [win, name, 0.0, 0, 0, None, None, value, value])
        row[2] += value
        row[3] += 1
        row[7], row[8] = min(row[7], value), max(row[8], value)
        if low is not None and high is not None:
            row[5], row[6] = low, high
            if not low <= value <= high:
                row[4] += 1
    return list(agg.values())


@dataclass(frozen=True)
class Config:
    window_s: int
    payload_cfg: PayloadConfig
    retention: int
    read_at: float
    raw_sample: float = 0.0
    generation: int = 0


def config_from(settings: SketchSettings, backend: str, generation: int = 0) -> Config:
    """What every payload carries of the server's setup (`cfg`); gears refuses an older generation."""
    width, depth = settings.cms_dims()
    cfg: PayloadConfig = {
        "g": generation, "W": settings.window_seconds, "cw": width, "cd": depth, "fc": settings.filter_capacity,
        "fe": settings.filter_error, "tk": settings.topk, "ret": settings.retention,
        "be": "native" if backend == "native" else "functions", "rm": RAW_STREAM_MAXLEN,
    }
    return Config(settings.window_seconds, cfg, settings.retention, time.monotonic(), settings.raw_sample,
                  generation)


def encode(columns: dict[str, Columns], config: Config, replay: bool, batch_id: str | None,
           sparse: bool = False) -> list[tuple[str, bytes]]:
    """Per-service FCALL payloads for buffered columns: [(service, payload JSON)]."""
    out = []
    for service, cols in columns.items():
        names = list(cols.vocab)
        if not cols.ep and cols.count <= SMALL_BATCH_EVENTS and not config.raw_sample \
                and len(names) <= MAX_ENDPOINTS_PER_CALL:
            groups = _groups_small(cols, names, replay, config.window_s)
            kpis = _kpi_rows(cols, replay, config.window_s)
            if groups or kpis:
                out.append((service, _payload(groups, kpis, replay, batch_id, sparse, config)))
            continue
        ep, st, lat, ts = cols.columns()
        kpis = _kpi_rows(cols, replay, config.window_s)
        # the vocabulary may name far more endpoints than the batch holds (add_arrays takes a producer's
        # whole list): what a call costs is the distinct endpoints it carries
        if len(names) <= MAX_ENDPOINTS_PER_CALL or len(np.unique(ep)) <= MAX_ENDPOINTS_PER_CALL:
            groups = _window_groups(ep, st, lat, ts, names, replay, config.window_s)
            raw = _raw_rows(ep, st, lat, ts, names, config.raw_sample)
            if groups or kpis:
                out.append((service, _payload(groups, kpis, replay, batch_id, sparse, config, raw)))
            continue
        # one FCALL's work grows with the distinct endpoints it updates: a high-cardinality batch is split
        # by endpoint so no call blocks the server for long (each part has its own batch id) — window by
        # window, in time order, all of a window's parts before any of a later one: in replay mode a call
        # carrying a later window moves the service's clock and seals the earlier windows, so a part of
        # an earlier window sent after it would be late
        win = _windows_of(ts, replay, config.window_s)
        part = 0
        for w in sorted(set(win.tolist()) | {int(row[0]) for row in kpis}):
            in_window = win == w
            window_kpis = [row for row in kpis if int(row[0]) == w]
            # parts of at most MAX_ENDPOINTS_PER_CALL of the endpoints the window holds (by their rank
            # among them, so every part but the last is full)
            _, rank = np.unique(np.where(in_window, ep, -1), return_inverse=True)
            rank = rank.reshape(-1) - (0 if in_window.all() else 1)
            chunk = rank // MAX_ENDPOINTS_PER_CALL
            for c in np.unique(chunk[in_window]).tolist() or [None]:
                sel = in_window & (chunk == c) if c is not None else in_window
                groups = _window_groups(ep[sel], st[sel], lat[sel], ts[sel], names, replay, config.window_s)
                raw = _raw_rows(ep[sel], st[sel], lat[sel], ts[sel], names, config.raw_sample)
                part_batch = None if batch_id is None else f"{batch_id}:{part}"
                out.append((service, _payload(groups, window_kpis, replay, part_batch, sparse, config, raw)))
                window_kpis, part = [], part + 1
    return out


def _payload(groups: list[PayloadWindow], kpis: list[KpiRow], replay: bool, batch_id: str | None,
             sparse: bool, config: Config, raw: list[RawEvent] | None = None) -> bytes:
    """The `ad_ingest` argument (anomalydesk.contract.IngestPayload) as JSON."""
    payload: IngestPayload = {"v": PAYLOAD_VERSION, "mode": "replay" if replay else "live", "batch": batch_id,
                              "sparse": 1 if sparse else 0, "cfg": config.payload_cfg, "w": groups, "k": kpis}
    if raw:
        payload["raw"] = raw
    return orjson.dumps(payload)


@dataclass
class WindowAggregate:
    """One window's pre-aggregated traffic of a service, as the gears payload takes it.

    `hist` maps latency buckets (`fingerprint.latency_bucket`) to counts; `hist`, `endpoints` and
    `statuses` each add up to `n`. `window` is the window index in replay mode (ignored live).
    """

    n: int = 0
    e4: int = 0
    e5: int = 0
    latency_sum_ms: float = 0.0
    hist: dict[int, int] = field(default_factory=dict)
    endpoints: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    window: int = 0

    def check(self) -> None:
        """Raise ValueError naming the part that does not add up (the server would refuse it)."""
        for name, part in (("hist", self.hist), ("endpoints", self.endpoints), ("statuses", self.statuses)):
            if sum(part.values()) != self.n:
                raise ValueError(f"window aggregate: {name} counts add up to {sum(part.values())}, not n={self.n}")
        if not (0 <= self.e4 <= self.n and 0 <= self.e5 <= self.n and self.e4 + self.e5 <= self.n):
            raise ValueError(f"window aggregate: e4={self.e4}/e5={self.e5} must lie within n={self.n}")
        if len(self.endpoints) > MAX_ENDPOINTS_PER_CALL:
            raise ValueError(f"window aggregate: {len(self.endpoints)} endpoints, at most {MAX_ENDPOINTS_PER_CALL}")
        if not math.isfinite(self.latency_sum_ms) or self.latency_sum_ms < 0:
            raise ValueError("window aggregate: latency_sum_ms must be finite and >= 0")


def encode_aggregates(service: str, windows: Sequence[WindowAggregate], config: Config, *,
                      kpis: Sequence[BusinessMetric] = (), replay: bool = False, batch_id: str | None = None,
                      sparse: bool = False) -> list[tuple[str, bytes]]:
    """The FCALL payload for pre-aggregated windows (and business KPIs) of one service: [(service, JSON)]."""
    groups: list[PayloadWindow] = []
    for w in windows:
        w.check()
        if w.n == 0:
            continue
        groups.append({
            "win": int(w.window) if replay else 0, "n": int(w.n), "e4": int(w.e4), "e5": int(w.e5),
            "ls": float(w.latency_sum_ms),
            "h": [x for b, c in sorted(w.hist.items()) if c for x in (int(b), int(c))],
            "ep": [x for e, c in w.endpoints.items() if c for x in (e, int(c))],
            "st": [x for s, c in sorted(w.statuses.items()) if c for x in (int(s), int(c))],
        })
    cols = Columns()
    cols.kpis = [(k.name, k.value, k.low, k.high, k.timestamp) for k in kpis]
    rows = _kpi_rows(cols, replay, config.window_s)
    if not groups and not rows:
        return []
    return [(service, _payload(groups, rows, replay, batch_id, sparse, config))]


def columns_of(events: Iterable[Event]) -> dict[str, Columns]:
    """Validated events grouped into per-service columns."""
    columns: dict[str, Columns] = {}
    # per service: the bound appends and the endpoint vocabulary (Columns.add_metric, inlined: this
    # loop runs once per event the collector stores)
    appenders: dict[str, tuple[Any, ...]] = {}
    nan = math.nan
    for e in events:
        service = e[0]
        if type(e) is BusinessMetric:
            cols = columns.get(service)
            if cols is None:
                cols = columns[service] = Columns()
            cols.kpis.append((e.name, e.value, e.low, e.high, e.timestamp))
            continue
        bound = appenders.get(service)
        if bound is None:
            cols = columns.get(service)
            if cols is None:
                cols = columns[service] = Columns()
            bound = appenders[service] = (cols.vocab, cols.ep_list.append, cols.status_list.append,
                                          cols.latency_list.append, cols.ts_list.append)
        vocab, add_ep, add_status, add_latency, add_ts = bound
        _, endpoint, status, latency, ts = e
        index = vocab.get(endpoint)
        if index is None:
            index = vocab[endpoint] = len(vocab)
        add_ep(index)
        add_status(status)
        add_latency(latency)
        add_ts(nan if ts is None else ts)
    for cols in columns.values():
        cols.count = len(cols.ep_list) + sum(len(chunk) for chunk in cols.ep)
    return columns
