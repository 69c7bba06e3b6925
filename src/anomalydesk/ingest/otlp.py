"""OTLP/HTTP metrics receiver: `POST /v1/metrics` on the collector (protobuf, as the standard
exporters send it, or OTLP/JSON), mapped onto the engine's window aggregates.

- HTTP server histograms (`http.server.request.duration` in s, `http.server.duration` in ms; see
  MetricMap.otlp_histograms) with `service.name` (resource), `http.route`, `http.request.method`
  (or `http.method`) and `http.response.status_code` (or `http.status_code`) feed a service's
  request count, error counts, endpoint mix and latency histogram directly: no single events are
  invented (`histograms.spread` maps the explicit buckets onto the engine's log buckets).
- Cumulative temporality becomes deltas against the last point of each series, kept in Redis in
  one hash per service (`<prefix>{service}:otlp`), so any number of stateless collectors can share
  the work. A series restarts (new start time, or any count going down): its whole point is new.
  A series never seen before counts fully if it started less than OTLP_FIRST_POINT_MAX_AGE_SECONDS
  before its point, else it is only a baseline (the receiver lost its state; counting everything
  since the process started would put hours of traffic into one window).
- Windows are the collector's arrival windows (live mode) and the service is marked sparse: the
  windows between two reports are sealed `no_data`, not zero traffic.
- Metrics the mapping file maps to KPIs become business metrics; everything else is counted per
  name in `<prefix>otlp:unknown` and `stats.otlp_points_unknown`, and reported in the answer's
  `partial_success`, never silently dropped.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import time
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.metrics.v1 import metrics_pb2

from anomalydesk import config
from anomalydesk.events import BusinessMetric, EventError, normalize_endpoint
from anomalydesk.ingest.histograms import TrafficBuilder, spread
from anomalydesk.ingest.metric_map import KpiRule, MapError, MetricMap, load_map

log = logging.getLogger(__name__)

CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
PROTOBUF = "application/x-protobuf"
_SERVICE_BAD_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_UNKNOWN_OTHER = "(other)"


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


def decode(body: bytes, content_type: str, content_encoding: str = "") -> ExportMetricsServiceRequest:
    """Bytes (protobuf or JSON, optionally gzip/deflate) → the export request (OtlpError otherwise)."""
    encoding = content_encoding.strip().lower()
    try:
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding not in ("", "identity"):
            raise OtlpError(415, f"Content-Encoding {encoding!r} is not supported (gzip, deflate or none)")
    except (OSError, zlib.error, EOFError) as err:
        raise OtlpError(400, f"body is not valid {encoding}: {err}") from None
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


def _series_id(metric: str, attrs: dict[str, Any]) -> str:
    raw = orjson.dumps([metric, sorted((k, str(v)) for k, v in attrs.items())])
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
    return HttpPoint(
        series="", endpoint=endpoint, status=status, cumulative=cumulative,
        start_ns=dp.start_time_unix_nano, time_ns=dp.time_unix_nano, count=int(dp.count),
        sum_ms=dp.sum * scale if dp.HasField("sum") else None,
        bounds_ms=[b * scale for b in dp.explicit_bounds], counts=[int(c) for c in dp.bucket_counts],
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
                        point.series = _series_id(metric.name, attrs)
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
                            _series_id(metric.name, attrs | {"@service": service}), rule, counter, cumulative,
                            dp.start_time_unix_nano, dp.time_unix_nano, value))
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


# ------------------------------------------------------------------------------------------------
# the route
# ------------------------------------------------------------------------------------------------
def _store_of(collector: Any) -> Any:
    """The collector's StoreBinding (its ingest function's owner), or None."""
    owner = getattr(getattr(collector, "_ingest", None), "__self__", None)
    return owner if owner is not None and hasattr(owner, "writer") and hasattr(owner, "ar") else None


def otlp_state_key(keys: Any, service: str) -> str:
    """Hash of the last cumulative point per series of a service (hash-tagged with the service)."""
    return f"{keys.tag(service)}:otlp"


def unknown_key(keys: Any) -> str:
    """Hash metric name → data points received for metrics nobody maps."""
    return f"{keys.prefix}otlp:unknown"


class OtlpReceiver:
    """`POST /v1/metrics` for one Collector (registered by `Collector.app`)."""

    def __init__(self, collector: Any, mapping: MetricMap | None = None):
        self.collector = collector
        self._mapping = mapping

    @property
    def mapping(self) -> MetricMap:
        """The mapping file named by $ANOMALYDESK_METRIC_MAP (read once), else the defaults."""
        if self._mapping is None:
            self._mapping = load_map(os.environ.get(config.ENV_METRIC_MAP) or None)
        return self._mapping

    async def handle(self, request: web.Request) -> web.Response:
        """The aiohttp handler."""
        return await handle_otlp(request, self)


def _answer(request_type: str, rejected: int, message: str, status: int = 200) -> web.Response:
    response = ExportMetricsServiceResponse()
    if rejected or message:
        response.partial_success.rejected_data_points = rejected
        response.partial_success.error_message = message
    if request_type == PROTOBUF:
        return web.Response(status=status, body=response.SerializeToString(), content_type=PROTOBUF)
    body = json_format.MessageToJson(response, indent=None) if rejected or message else "{}"
    return web.Response(status=status, text=body, content_type="application/json")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    # OTLP/HTTP errors carry a google.rpc.Status; JSON is what a person reading the log can use
    return web.Response(status=status, body=orjson.dumps({"code": status, "message": message}),
                        content_type="application/json", headers=headers)


def _report(ex: Extracted) -> str:
    parts = []
    if ex.unknown:
        names = ", ".join(f"{n} ({c})" for n, c in ex.unknown.most_common(10))
        parts.append(f"{sum(ex.unknown.values())} data points of unmapped metrics ignored: {names} "
                     "(map them to KPIs with the mapping file, see docs/integrations.md)")
    if ex.rejected:
        parts.append("; ".join(f"{c} rejected: {reason}" for reason, c in ex.rejected.most_common(10)))
    return "; ".join(parts)


async def handle_otlp(request: web.Request, receiver: OtlpReceiver) -> web.Response:
    """Authorize like the collector's other routes, decode, convert to deltas, write, answer OTLP."""
    from anomalydesk.ingest.collector import REDIS_DOWN

    collector = receiver.collector
    _key_id, refusal = collector._authorize(request)
    if refusal is not None:
        return refusal
    store = _store_of(collector)
    if store is None:
        return _error(501, "this collector is not bound to Redis; OTLP needs collector_server.build()")
    limit = collector.settings.max_body_bytes
    if (request.content_length or 0) > limit:
        return _error(413, f"body is {request.content_length} bytes; the limit is {limit}")
    try:
        body = await request.read()
        export = decode(body, request.headers.get("Content-Type", ""), request.headers.get("Content-Encoding", ""))
        mapping = receiver.mapping
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"body is larger than the limit of {limit} bytes")
    except OtlpError as err:
        return _error(err.status, str(err))
    except MapError as err:
        log.error("OTLP: %s", err)
        return _error(500, f"the collector's metric mapping file is unusable: {err}")
    extracted = extract(export, mapping)
    media = PROTOBUF if request.headers.get("Content-Type", "").startswith(PROTOBUF) else "application/json"
    try:
        await store.prepare()
        await _write(store, extracted, hashlib.sha1(body).hexdigest())
    except REDIS_DOWN as err:
        log.warning("OTLP: Redis unreachable, answering 503: %s", err)
        return _error(503, "Redis is unreachable; nothing was stored, retry later",
                      {"Retry-After": str(config.COLLECTOR_RETRY_AFTER_SECONDS)})
    except ValueError as err:  # histogram that does not add up, server refused the batch
        return _error(400, f"invalid metrics: {err}")
    rejected = sum(extracted.unknown.values()) + sum(extracted.rejected.values())
    return _answer(media, rejected, _report(extracted))


async def _write(store: Any, ex: Extracted, body_hash: str) -> None:
    """Convert and write every service of one export; then the new series state and the statistics."""
    ar, keys = store.ar, store.keys
    accepted = 0
    for service in sorted(set(ex.http) | set(ex.kpis)):
        http, kpis = ex.http.get(service, []), ex.kpis.get(service, [])
        series = [p.series for p in http] + [k.series for k in kpis]
        raw = await ar.hmget(otlp_state_key(keys, service), series) if series else []
        stored = {s: orjson.loads(v) for s, v in zip(series, raw, strict=True) if v is not None}
        batch = convert(service, http, kpis, stored)
        if not batch.traffic.empty or batch.kpis:
            # the same body retried after a lost answer yields the same deltas: the batch id dedups it
            await store.writer.ingest_aggregates(service, [batch.traffic.agg], kpis=batch.kpis,
                                                 batch_id=f"otlp:{body_hash}", sparse=True)
        if batch.state:
            pipe = ar.pipeline(transaction=False)
            pipe.hset(otlp_state_key(keys, service), mapping=batch.state)
            pipe.expire(otlp_state_key(keys, service), config.OTLP_STATE_TTL_SECONDS)
            await pipe.execute()
        accepted += batch.points
    pipe = ar.pipeline(transaction=False)
    pipe.hincrby(keys.stats, "otlp_points_accepted", accepted)
    pipe.hset(keys.stats, "otlp_last_export", f"{time.time():.3f}")
    if ex.unknown or ex.rejected:
        pipe.hincrby(keys.stats, "otlp_points_unknown", sum(ex.unknown.values()))
        pipe.hincrby(keys.stats, "otlp_points_rejected", sum(ex.rejected.values()))
        pipe.hlen(unknown_key(keys))
    replies = await pipe.execute()
    if ex.unknown:
        known_names = replies[-1]
        pipe = ar.pipeline(transaction=False)
        for name, count in ex.unknown.items():
            field_name = name if known_names < config.OTLP_UNKNOWN_NAMES_MAX else _UNKNOWN_OTHER
            pipe.hincrby(unknown_key(keys), field_name[:200], count)
        await pipe.execute()
