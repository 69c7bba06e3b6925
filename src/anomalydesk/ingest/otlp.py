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

import asyncio
import hashlib
import logging
import os
import time

import orjson
from aiohttp import web
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

from anomalydesk import config
from anomalydesk.ingest.access import Authorizer
from anomalydesk.ingest.collector_metrics import CollectorMetrics
from anomalydesk.ingest.metric_map import MapError, MetricMap, load_map
from anomalydesk.ingest.otlp_convert import PROTOBUF, Extracted, OtlpError, convert, decode, extract
from anomalydesk.ingest.store_port import REDIS_DOWN, StorePort
from anomalydesk.store.keys import Keys
from anomalydesk.store.sink import NotSetUp

log = logging.getLogger(__name__)

_UNKNOWN_OTHER = "(other)"


# ------------------------------------------------------------------------------------------------
# the route
# ------------------------------------------------------------------------------------------------
def otlp_state_key(keys: Keys, service: str) -> str:
    """Hash of the last cumulative point per series of a service (hash-tagged with the service)."""
    return f"{keys.tag(service)}:otlp"


def unknown_key(keys: Keys) -> str:
    """Hash metric name → data points received for metrics nobody maps."""
    return f"{keys.prefix}otlp:unknown"


class OtlpReceiver:
    """`POST /v1/metrics` of one collector (registered by `Collector.app`): it is given the collector's
    store port, authorizer, metrics and limits, and knows nothing else of the collector."""

    def __init__(self, store: StorePort, authorizer: Authorizer, metrics: CollectorMetrics, *,
                 max_body_bytes: int, deadline_seconds: float, mapping: MetricMap | None = None):
        self.store = store
        self.authorizer = authorizer
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.deadline_seconds = deadline_seconds
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
    _key_id, refusal = receiver.authorizer.admit(request)
    if refusal is not None:
        return refusal
    store = receiver.store
    limit = receiver.max_body_bytes
    if (request.content_length or 0) > limit:
        return _error(413, f"body is {request.content_length} bytes; the limit is {limit}")
    try:
        body = await request.read()
        # aiohttp has already undone Content-Encoding (gzip, deflate) when it read the body
        export = decode(body, request.headers.get("Content-Type", ""))
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
    seconds = receiver.deadline_seconds
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            await store.prepare()
            try:
                await _write(store, extracted, hashlib.sha1(body).hexdigest())
            except NotSetUp:  # the server was flushed or replaced under us: set it up again, same batch ids
                store.forget_setup()
                await store.prepare()
                await _write(store, extracted, hashlib.sha1(body).hexdigest())
    except REDIS_DOWN as err:
        if deadline.expired():  # asyncio's TimeoutError at the deadline
            receiver.metrics.deadlines_passed += 1
            log.warning("OTLP: Redis did not answer within %gs, answering 503", seconds)
            # a retry of the same body carries the same batch ids: a write that completes late counts once
            return _error(503, f"Redis did not complete the write within {seconds:g} "
                               "s; retry later (the same body is counted once)",
                          {"Retry-After": str(config.COLLECTOR_RETRY_AFTER_SECONDS)})
        log.warning("OTLP: Redis unreachable, answering 503: %s", err)
        return _error(503, "Redis is unreachable; nothing was stored, retry later",
                      {"Retry-After": str(config.COLLECTOR_RETRY_AFTER_SECONDS)})
    except ValueError as err:  # histogram that does not add up, server refused the batch
        return _error(400, f"invalid metrics: {err}")
    rejected = sum(extracted.unknown.values()) + sum(extracted.rejected.values())
    return _answer(media, rejected, _report(extracted))


async def _write(store: StorePort, ex: Extracted, body_hash: str) -> None:
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
            await store.ingest_aggregates(service, [batch.traffic.agg], kpis=batch.kpis,
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
