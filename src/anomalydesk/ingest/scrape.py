"""Prometheus scrape source: read a `/metrics` endpoint every few seconds and turn what changed into
window aggregates (docs/integrations.md).

- Parsing is prometheus_client's text parser. Request counters (`http_requests_total{code,handler,
  method}`-style, see MetricMap) give requests per endpoint and status; duration histograms
  (`http_request_duration_seconds`) give the latency histogram (`histograms.spread`).
- Counters are cumulative: each scrape takes the increase since the previous one. A series whose
  `_created` time changed, or whose value went down, restarted: its whole value is new. The first
  scrape of a series (and of a scraper process) is a baseline only.
- Per-window rates: when scrapes are further apart than a window, the increase is scaled by
  W / elapsed, so a window holds a window's worth of traffic (and the windows between two scrapes
  are sealed `no_data`: the service is marked sparse). Latency keeps its measured shape.
- Metrics the mapping file maps to KPIs become business metrics; the rest are counted per name in
  each report (`unknown`), never silently ignored.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis
from prometheus_client.parser import text_string_to_metric_families

from anomalydesk import config
from anomalydesk.events import BusinessMetric, EventError, normalize_endpoint
from anomalydesk.ingest.histograms import estimated_sum, integer_split, rescale, spread
from anomalydesk.ingest.metric_map import MetricMap
from anomalydesk.ingest.otlp_convert import service_name
from anomalydesk.store.admin import read_settings
from anomalydesk.store.keys import Keys
from anomalydesk.store.sink import WindowAggregate, ingest_aggregates

log = logging.getLogger(__name__)

_CLASS_STATUS = re.compile(r"([1-5])xx\Z", re.IGNORECASE)
Labels = tuple[tuple[str, str], ...]


class ScrapeError(RuntimeError):
    """The target could not be scraped or parsed; the message says which and why."""


def fetch(url: str, timeout: float = config.SCRAPE_TIMEOUT_SECONDS) -> str:
    """GET the exposition text (ScrapeError on any failure)."""
    req = urllib.request.Request(url, headers={"Accept": "text/plain;version=0.0.4"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        raise ScrapeError(f"{url} answered HTTP {err.code}") from None
    except (urllib.error.URLError, OSError, UnicodeDecodeError) as err:
        raise ScrapeError(f"cannot scrape {url}: {getattr(err, 'reason', err)}") from None


def default_service(target: str) -> str:
    """A service name from the target URL when no label or mapping names one: host-port."""
    parts = urlsplit(target)
    return service_name(f"{parts.hostname or 'target'}-{parts.port}" if parts.port else parts.hostname)


def _status(raw: str | None) -> int:
    if raw is None:
        return 200  # documented: a source without a status label has no visible errors
    m = _CLASS_STATUS.match(raw)
    code = int(m.group(1)) * 100 if m else int(raw)
    if not 100 <= code <= 599:
        raise ValueError(f"status {raw!r} is not an HTTP status")
    return code


@dataclass
class _HistPoint:
    created: float | None
    count: float = 0.0
    total: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le → cumulative count


@dataclass
class ScrapeReport:
    """What one scrape found and wrote."""

    at: float
    elapsed: float | None  # seconds since the previous scrape (None: the first, a baseline)
    requests: dict[str, int] = field(default_factory=dict)  # service → requests written (per window)
    increase: dict[str, int] = field(default_factory=dict)  # service → requests since the last scrape
    kpis: dict[str, dict[str, float]] = field(default_factory=dict)
    resets: int = 0
    unknown: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class Scraper:
    """Scrapes one target; keeps the previous values of every series in memory."""

    def __init__(self, r: redis.Redis, target: str, mapping: MetricMap | None = None, *,
                 keys: Keys | None = None, fetcher: Callable[[str], str] = fetch):
        self.r = r
        self.target = target
        self.mapping = mapping or MetricMap()
        self.keys = keys or Keys(config.key_prefix())
        self.fetcher = fetcher
        self.service = self.mapping.service or default_service(target)
        self._prev_at: float | None = None
        self._counters: dict[tuple[str, Labels], tuple[float, float | None]] = {}
        self._hists: dict[tuple[str, Labels], _HistPoint] = {}
        self.totals: Counter[str] = Counter()

    # --- labels ----------------------------------------------------------------------------------
    def _label(self, labels: dict[str, str], names: tuple[str, ...]) -> str | None:
        for name in names:
            if labels.get(name):
                return labels[name]
        return None

    def _where(self, labels: dict[str, str]) -> tuple[str, str, int]:
        """(service, endpoint, status) of a series (EventError/ValueError if unusable)."""
        m = self.mapping
        service = self._label(labels, m.service_labels)
        service = service_name(service) if service else self.service
        method = (self._label(labels, m.method_labels) or "ANY").upper()
        path = self._label(labels, m.endpoint_labels) or "/(unlabelled)"
        method = method if method.isalpha() else "ANY"
        endpoint = normalize_endpoint(f"{method}:{path if path.startswith('/') else '/' + path}")
        return service, endpoint, _status(self._label(labels, m.status_labels))

    # --- one scrape ------------------------------------------------------------------------------
    def scrape_once(self, now: float | None = None) -> ScrapeReport:
        """Fetch, parse, compute increases, write one window aggregate per service."""
        text = self.fetcher(self.target)
        now = time.time() if now is None else now
        try:
            families = list(text_string_to_metric_families(text))
        except (ValueError, IndexError) as err:
            raise ScrapeError(f"{self.target}: not Prometheus text format: {err}") from None
        elapsed = None if self._prev_at is None else max(now - self._prev_at, 1e-9)
        saved = (self._prev_at, dict(self._counters), dict(self._hists))
        report = ScrapeReport(at=now, elapsed=elapsed)
        created = {(f.name.removesuffix("_created"), tuple(sorted(s.labels.items()))): s.value
                   for f in families if f.name.endswith("_created") for s in f.samples}
        traffic: dict[str, dict[tuple[str, int], float]] = {}  # service → (endpoint, status) → increase
        latency: dict[str, list[_Observed]] = {}
        kpi_values: dict[str, dict[str, tuple[Any, bool, list[float]]]] = {}  # service → name → (rule, counter, values)
        counters = {n.removesuffix("_total") for n in self.mapping.prom_counters}
        for fam in families:
            rule = self.mapping.kpi_for(fam.name)
            if fam.name.endswith("_created") and fam.type == "gauge":
                continue
            if fam.type == "counter" and fam.name in counters:
                for s in fam.samples:
                    if s.name.endswith("_total"):
                        self._counter(fam.name, s, created, traffic, report)
            elif fam.type == "histogram" and fam.name in self.mapping.prom_histograms:
                self._histogram(fam, created, latency, report)
            elif rule is not None and fam.type in ("counter", "gauge", "untyped"):
                for s in fam.samples:
                    if fam.type == "counter" and not s.name.endswith("_total"):
                        continue
                    counter = fam.type == "counter" and rule.kind != "gauge"
                    value = self._increase(fam.name, s.labels, s.value, created, report) if counter else s.value
                    if value is not None:
                        per = kpi_values.setdefault(rule.service or self.service, {})
                        per.setdefault(rule.name, (rule, counter, []))[2].append(value)
            else:
                report.unknown[fam.name] = report.unknown.get(fam.name, 0) + len(fam.samples)
        self._prev_at = now
        if elapsed is not None:
            try:
                self._write(report, traffic, latency, kpi_values)
            except redis.RedisError as err:
                # keep the previous values: the next scrape's increase covers this interval too
                self._prev_at, self._counters, self._hists = saved
                raise ScrapeError(f"scraped {self.target} but could not write to Redis: {err}") from err
        return report

    def _increase(self, name: str, labels: dict[str, str], value: float, created: dict,
                  report: ScrapeReport) -> float | None:
        key = (name, tuple(sorted(labels.items())))
        born = created.get(key)
        prev = self._counters.get(key)
        self._counters[key] = (value, born)
        if prev is None:
            return None if self._prev_at is None else value  # a series that appeared since the last scrape
        if value < prev[0] or (born is not None and prev[1] is not None and born != prev[1]):
            report.resets += 1
            return value
        return value - prev[0]

    def _counter(self, name: str, s: Any, created: dict, traffic: dict, report: ScrapeReport) -> None:
        try:
            service, endpoint, status = self._where(s.labels)
        except (EventError, ValueError) as err:
            report.rejected[f"{s.name}: {err}"] = report.rejected.get(f"{s.name}: {err}", 0) + 1
            return
        inc = self._increase(name, s.labels, s.value, created, report)
        if inc:
            per = traffic.setdefault(service, {})
            per[(endpoint, status)] = per.get((endpoint, status), 0.0) + inc

    def _histogram(self, fam: Any, created: dict, latency: dict, report: ScrapeReport) -> None:
        points: dict[Labels, _HistPoint] = {}
        for s in fam.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            p = points.setdefault(labels, _HistPoint(created.get((fam.name, labels))))
            if s.name.endswith("_bucket"):
                p.buckets[float(s.labels["le"])] = s.value
            elif s.name.endswith("_count"):
                p.count = s.value
            elif s.name.endswith("_sum"):
                p.total = s.value
        scale = 1.0 if fam.name.endswith(("_ms", "_milliseconds")) else 1000.0
        for labels, p in points.items():
            key = (fam.name, labels)
            prev = self._hists.get(key)
            self._hists[key] = p
            if prev is None and self._prev_at is None:
                continue
            les = sorted(p.buckets)
            reset = prev is not None and (p.count < prev.count or sorted(prev.buckets) != les
                                          or any(p.buckets[le] < prev.buckets[le] for le in les)
                                          or (p.created is not None and p.created != prev.created))
            base = _HistPoint(None) if prev is None or reset else prev
            report.resets += int(reset)
            cum = [p.buckets[le] - base.buckets.get(le, 0.0) for le in les]
            counts = [round(c - b) for c, b in zip(cum, [0.0, *cum[:-1]], strict=True)]
            bounds = [le * scale for le in les if le != float("inf")]
            if les and les[-1] != float("inf"):
                counts.append(round(p.count - base.count - cum[-1]))
            if sum(counts) <= 0 or any(c < 0 for c in counts):
                continue
            try:
                service, endpoint, status = self._where(dict(labels))
            except (EventError, ValueError) as err:
                report.rejected[f"{fam.name}: {err}"] = report.rejected.get(f"{fam.name}: {err}", 0) + 1
                continue
            latency.setdefault(service, []).append(
                _Observed(endpoint, status, (p.total - base.total) * scale, spread(bounds, counts)))

    def _write(self, report: ScrapeReport, traffic: dict, latency: dict, kpi_values: dict) -> None:
        window_s = read_settings(self.r, self.keys).settings.window_seconds
        assert report.elapsed is not None
        factor = min(1.0, window_s / report.elapsed)
        sparse = report.elapsed > window_s
        for service in sorted(set(traffic) | set(latency) | set(kpi_values)):
            agg = _aggregate(traffic.get(service, {}), latency.get(service, []), factor)
            report.increase[service] = round(sum(traffic.get(service, {}).values())) if service in traffic \
                else sum(sum(o.hist.values()) for o in latency.get(service, []))
            kpis = []
            for name, (rule, counter, vals) in kpi_values.get(service, {}).items():
                value = sum(vals) if rule.combine == "sum" else sum(vals) / len(vals)
                value *= factor if counter else 1.0  # a counter's increase, per window like the requests
                kpis.append(BusinessMetric(service, name, value, rule.low, rule.high, None))
                report.kpis.setdefault(service, {})[name] = value
            if agg.n == 0 and not kpis:
                continue
            ingest_aggregates(self.r, service, [agg], kpis=kpis, sparse=sparse, keys=self.keys)
            report.requests[service] = agg.n
            self.totals[service] += agg.n

    def run(self, interval: float, stop: threading.Event,
            on_report: Callable[[ScrapeReport | ScrapeError], None] | None = None) -> None:
        """Scrape every `interval` seconds until `stop` is set; failures are reported, not fatal."""
        while True:
            started = time.monotonic()
            try:
                result: ScrapeReport | ScrapeError = self.scrape_once()
            except ScrapeError as err:
                result = err
                log.warning("%s", err)
            if on_report is not None:
                on_report(result)
            if stop.wait(max(0.0, interval - (time.monotonic() - started))):
                return


@dataclass
class _Observed:
    """One histogram series' increase: where, the latency sum (ms) and the engine histogram."""

    endpoint: str
    status: int
    latency_sum_ms: float
    hist: dict[int, int]


def _aggregate(traffic: dict[tuple[str, int], float], latency: list[_Observed], factor: float) -> WindowAggregate:
    """Counter increases and latency histograms of one service → one window's aggregate."""
    hist: dict[int, int] = {}
    lat_sum = 0.0
    hist_traffic: dict[tuple[str, int], float] = {}
    for o in latency:
        lat_sum += o.latency_sum_ms
        for b, c in o.hist.items():
            hist[b] = hist.get(b, 0) + c
        key = (o.endpoint, o.status)
        hist_traffic[key] = hist_traffic.get(key, 0.0) + sum(o.hist.values())
    observed = sum(hist.values())
    if not traffic:
        traffic = hist_traffic  # no request counter: the histogram's counts are the requests
    pairs = sorted(traffic)
    increase = sum(traffic.values())
    n = round(increase * factor)
    split = integer_split(n, [traffic[p] for p in pairs])
    agg = WindowAggregate(n=n)
    for (endpoint, status), c in zip(pairs, split, strict=True):
        if not c:
            continue
        agg.endpoints[endpoint] = agg.endpoints.get(endpoint, 0) + c
        agg.statuses[status] = agg.statuses.get(status, 0) + c
        agg.e4 += c if 400 <= status < 500 else 0
        agg.e5 += c if status >= 500 else 0
    if n and observed:
        agg.hist = rescale(hist, n)
        agg.latency_sum_ms = max(lat_sum, 0.0) * n / observed
    elif n:
        agg.hist = {0: n}  # a counter without a duration histogram: latency unknown, reported as 0
        agg.latency_sum_ms = estimated_sum(agg.hist)
    return agg
