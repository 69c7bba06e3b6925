"""OTLP metrics export → series points → deltas → one window aggregate per service (pure: no I/O).

See `anomalydesk.ingest.otlp` for the rules (semantic conventions, cumulative → delta, resets, first
points, unknown metrics); this module holds the parts that need neither aiohttp nor Redis.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2

from anomalydesk import config
from anomalydesk.events import BusinessMetric, EventError, normalize_endpoint
from anomalydesk.ingest.histograms import TrafficBuilder, spread
from anomalydesk.ingest.metric_map import KpiRule, MetricMap

CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
PROTOBUF = "application/x-protobuf"
_SERVICE_BAD_CHARS = re.compile(r"[^A-Za-z0-9._-]")


class OtlpError(ValueError):
    """The request body is not an OTLP metrics export (status 400 or 415)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def service_name(raw: str | None) -> str:
    """`service.name` → a valid AnomalyDesk service name (other characters become '-')."""
    name = _SERVICE_BAD_CHARS.sub("-", raw or "unknown_service")[: config.SERVICE_NAME_MAX]
    return name or "unknown_service"


def _attrs(kvs: Iterable[Any]) -> dict[str, Any]:
    out = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which in ("string_value", "int_value", "double_value",
                                                             "bool_value") else None
    return out


def decode(body: bytes, content_type: str) -> ExportMetricsServiceRequest:
    """Bytes (protobuf or JSON; aiohttp has undone any Content-Encoding) → the export request (OtlpError)."""
    request = ExportMetricsServiceRequest()
    media = content_type.split(";", 1)[0].strip().lower()
    if media == PROTOBUF:
        try:
            request.ParseFromString(body)
        except DecodeError as err:
            raise OtlpError(400, f"body is not an OTLP ExportMetricsServiceRequest (protobuf): {err}") from None
    elif media == "application/json":
        try:
            json_format.Parse(body, request, ignore_unknown_fields=True)
        except (json_format.ParseError, UnicodeDecodeError) as err:
            raise OtlpError(400, f"body is not OTLP/JSON metrics: {err}") from None
    else:
        raise OtlpError(415, f"Content-Type must be {PROTOBUF} or application/json, got {media or 'none'!r}")
    return request


# ------------------------------------------------------------------------------------------------
# extraction: export request → points per series
# ------------------------------------------------------------------------------------------------
@dataclass
class HttpPoint:
    """One histogram data point of HTTP server traffic."""

    series: str
    endpoint: str
    status: int
    cumulative: bool
    start_ns: int
    time_ns: int
    count: int
    sum_ms: float | None
    bounds_ms: list[float]
    counts: list[int]
    min_ms: float | None
    max_ms: float | None


@dataclass
class KpiPoint:
    series: str
    rule: KpiRule
    counter: bool  # a monotonic sum: its increase is the KPI value
    cumulative: bool
    start_ns: int
    time_ns: int
    value: float


@dataclass
class Extracted:
    http: dict[str, list[HttpPoint]] = field(default_factory=dict)  # service → points
    kpis: dict[str, list[KpiPoint]] = field(default_factory=dict)
    unknown: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)  # reason → data points

    @property
    def points(self) -> int:
        return sum(len(v) for v in self.http.values()) + sum(len(v) for v in self.kpis.values())


def _series_id(metric: str, attrs: dict[str, Any], resource: dict[str, Any]) -> str:
    """A series is a metric, its point attributes and its resource (process) attributes."""
    raw = orjson.dumps([metric, sorted((k, str(v)) for k, v in attrs.items()),
                        sorted((k, str(v)) for k, v in resource.items())])
    return hashlib.sha1(raw).hexdigest()[:20]


def _first(attrs: dict[str, Any], *names: str) -> Any:
    for name in names:
        if attrs.get(name) is not None:
            return attrs[name]
    return None


def _http_point(metric: Any, dp: Any, attrs: dict[str, Any], cumulative: bool) -> HttpPoint:
    # semconv: http.server.request.duration is in seconds, the older http.server.duration in ms
    unit = metric.unit or ("ms" if metric.name == "http.server.duration" else "s")
    scale = 1.0 if unit == "ms" else 1000.0
    status = _first(attrs, "http.response.status_code", "http.status_code")
    try:
        status = int(status)
    except (TypeError, ValueError):
        raise EventError("http.response.status_code", "is missing or not a number") from None
    if not 100 <= status <= 599:
        raise EventError("http.response.status_code", f"must be 100..599, got {status}")
    method = str(_first(attrs, "http.request.method", "http.method") or "OTHER").upper()
    method = method if method.isalpha() else "OTHER"
    route = str(_first(attrs, "http.route", "url.template") or "/(unrouted)")
    endpoint = normalize_endpoint(f"{method}:{route if route.startswith('/') else '/' + route}")
    bounds, counts = list(dp.explicit_bounds), [int(c) for c in dp.bucket_counts]
    if dp.count and len(counts) != len(bounds) + 1:
        raise EventError("bucket_counts", f"{len(counts)} counts for {len(bounds)} bounds (expected one more "
                                          "count than bounds; histograms without buckets carry no latency)")
    if sum(counts) != dp.count:
        raise EventError("bucket_counts", f"add up to {sum(counts)}, not count={dp.count}")
    if any(not math.isfinite(b) for b in bounds) or any(b2 <= b1 for b1, b2 in pairwise(bounds)):
        raise EventError("explicit_bounds", "must be finite and strictly increasing")
    return HttpPoint(
        series="", endpoint=endpoint, status=status, cumulative=cumulative,
        start_ns=dp.start_time_unix_nano, time_ns=dp.time_unix_nano, count=int(dp.count),
        sum_ms=dp.sum * scale if dp.HasField("sum") else None,
        bounds_ms=[b * scale for b in bounds], counts=counts,
        min_ms=dp.min * scale if dp.HasField("min") else None, max_ms=dp.max * scale if dp.HasField("max") else None,
    )


def extract(request: ExportMetricsServiceRequest, mapping: MetricMap) -> Extracted:
    """Sort every data point into HTTP traffic, KPIs, unknown metrics or rejected points."""
    out = Extracted()
    for rm in request.resource_metrics:
        res = _attrs(rm.resource.attributes)
        service = service_name(res.get("service.name"))
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                rule = mapping.kpi_for(metric.name)
                if metric.name in mapping.otlp_histograms and kind == "histogram":
                    cumulative = metric.histogram.aggregation_temporality == CUMULATIVE
                    for dp in metric.histogram.data_points:
                        attrs = _attrs(dp.attributes)
                        try:
                            point = _http_point(metric, dp, attrs, cumulative)
                        except EventError as err:
                            out.rejected[f"{metric.name}: {err}"] += 1
                            continue
                        point.series = _series_id(metric.name, attrs, res)
                        out.http.setdefault(service, []).append(point)
                elif rule is not None and kind in ("sum", "gauge"):
                    data = getattr(metric, kind)
                    counter = kind == "sum" and data.is_monotonic and rule.kind != "gauge"
                    cumulative = kind == "sum" and data.aggregation_temporality == CUMULATIVE
                    target = rule.service or service
                    for dp in data.data_points:
                        attrs = _attrs(dp.attributes)
                        value = dp.as_double if dp.WhichOneof("value") == "as_double" else float(dp.as_int)
                        out.kpis.setdefault(target, []).append(KpiPoint(
                            _series_id(metric.name, attrs, res), rule, counter, cumulative,
                            dp.start_time_unix_nano, dp.time_unix_nano, value))
                elif metric.name in mapping.otlp_histograms and kind is not None:
                    reason = f"{metric.name}: {kind} data is not supported (send explicit-bucket histograms)"
                    out.rejected[reason] += max(len(getattr(metric, kind).data_points), 1)
                else:
                    n = len(getattr(metric, kind).data_points) if kind else 0
                    out.unknown[metric.name] += max(n, 1)
    return out


# ------------------------------------------------------------------------------------------------
# cumulative → delta with the state in Redis
# ------------------------------------------------------------------------------------------------
def _fresh(start_ns: int, time_ns: int) -> bool:
    return start_ns > 0 and (time_ns - start_ns) / 1e9 <= config.OTLP_FIRST_POINT_MAX_AGE_SECONDS


def http_delta(p: HttpPoint, prev: dict[str, Any] | None) -> tuple[HttpPoint | None, dict[str, Any] | None]:
    """(the point's new part or None, the state to store or None) for one histogram point."""
    if not p.cumulative:
        return p, None
    state = {"s": p.start_ns, "t": p.time_ns, "c": p.count, "sum": p.sum_ms, "b": p.counts, "e": p.bounds_ms}
    if prev is None:
        return (p if _fresh(p.start_ns, p.time_ns) else None), state
    if p.time_ns <= prev["t"] and p.start_ns == prev["s"]:
        return None, None  # a repeated or out-of-order report: nothing new
    reset = (p.start_ns != prev["s"] or p.count < prev["c"] or p.bounds_ms != prev["e"]
             or any(a < b for a, b in zip(p.counts, prev["b"], strict=False)))
    if reset:
        return p, state
    delta_sum = None if p.sum_ms is None or prev["sum"] is None else max(p.sum_ms - prev["sum"], 0.0)
    delta = HttpPoint(p.series, p.endpoint, p.status, False, prev["t"], p.time_ns, p.count - prev["c"], delta_sum,
                      p.bounds_ms, [a - b for a, b in zip(p.counts, prev["b"], strict=True)], p.min_ms, p.max_ms)
    return delta, state


def kpi_delta(p: KpiPoint, prev: dict[str, Any] | None) -> tuple[float | None, dict[str, Any] | None]:
    """(the KPI value this point contributes or None, the state to store or None)."""
    if not (p.counter and p.cumulative):
        return p.value, None
    state = {"s": p.start_ns, "t": p.time_ns, "v": p.value}
    if prev is None:
        return (p.value if _fresh(p.start_ns, p.time_ns) else None), state
    if p.time_ns <= prev["t"] and p.start_ns == prev["s"]:
        return None, None
    if p.start_ns != prev["s"] or p.value < prev["v"]:
        return p.value, state
    return p.value - prev["v"], state


@dataclass
class ServiceBatch:
    """What one export request adds to one service."""

    traffic: TrafficBuilder = field(default_factory=TrafficBuilder)
    kpis: list[BusinessMetric] = field(default_factory=list)
    state: dict[str, bytes] = field(default_factory=dict)  # series → new state JSON
    points: int = 0


def convert(service: str, http: list[HttpPoint], kpis: list[KpiPoint],
            stored: dict[str, dict[str, Any]]) -> ServiceBatch:
    """One service's points and stored series state → its window aggregate, KPIs and new state."""
    batch = ServiceBatch()
    for p in http:
        delta, state = http_delta(p, stored.get(p.series))
        if state is not None:
            batch.state[p.series] = orjson.dumps(state)
        batch.points += 1
        if delta is not None and delta.count > 0:
            hist = spread(delta.bounds_ms, delta.counts, delta.min_ms, delta.max_ms)
            batch.traffic.add(delta.endpoint, delta.status, delta.count, hist, delta.sum_ms)
    values: dict[str, tuple[KpiRule, list[float]]] = {}
    for k in kpis:
        value, state = kpi_delta(k, stored.get(k.series))
        if state is not None:
            batch.state[k.series] = orjson.dumps(state)
        batch.points += 1
        if value is not None:
            values.setdefault(k.rule.name, (k.rule, []))[1].append(value)
    for name, (rule, vals) in values.items():
        value = sum(vals) if rule.combine == "sum" else sum(vals) / len(vals)
        batch.kpis.append(BusinessMetric(service, name, value, rule.low, rule.high, None))
    return batch
