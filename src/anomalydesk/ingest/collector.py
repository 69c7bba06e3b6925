"""The HTTP collector: applications POST metrics, the collector validates them and writes them to
Redis through the store's ingestion API, micro-batched, answering only once the events are stored.

Answers (DESIGN.md): all accepted → 202 `{"accepted": n, "rejected": []}`; some → 200 with
`rejected: [{"index", "field", "reason"}]`; none → 400 (unparseable) or 422 (invalid) with the same
body; 401 bad or missing key; 413 too large; 429 rate-limited; 503 + Retry-After when Redis is
unreachable. Nothing is ever proxied: the collector only serves the routes below.

Through stalls (docs/collector.md, "Deadlines and back-pressure"): a request's Redis work ends by
its deadline, else 503 + Retry-After with `"stored": "no"` (nothing reached Redis) or `"unknown"`
(the write was cancelled after it was sent); at most `max_pending_events` events and
`max_pending_bytes` body bytes are held at once, beyond which requests get 503 + Retry-After at once.

Why this module is long: it is one job, the HTTP face of ingestion: settings, body decoding and
validation, and the routes with the answers above, which are read together against DESIGN.md's
table of answers; the server loop, the store binding and the micro-batcher are modules of their own.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from anomalydesk import config
from anomalydesk.events import EVENT_FIELDS, EventError, described, not_an_event, parse_batch, parse_business_metric
from anomalydesk.ingest.access import Authorizer, json_answer, json_error
from anomalydesk.ingest.collector_metrics import PROMETHEUS_CONTENT_TYPE, CollectorMetrics
from anomalydesk.ingest.http_auth import ApiKeys, RateLimiter
from anomalydesk.ingest.microbatch import DeadlinePassed, Event, MicroBatcher
from anomalydesk.ingest.openapi import openapi_document
from anomalydesk.ingest.otlp import OtlpReceiver
from anomalydesk.ingest.shared_limits import SharedRateLimiter
from anomalydesk.ingest.store_port import REDIS_DOWN, StorePort
from anomalydesk.store.sink import ConfigChanged
from anomalydesk.wire import decode_metrics

log = logging.getLogger(__name__)

# collect --workers N: the other workers' metrics snapshots (those that answered) and how many workers run
Peers = Callable[[], Awaitable[tuple[list[dict[str, Any]], int]]]

_IDEMPOTENCY_RE = re.compile(rf"[\x21-\x7e]{{1,{config.COLLECTOR_IDEMPOTENCY_KEY_MAX}}}\Z")

METRIC_PATHS = ("/metrics", "/api/metrics", "/api/batch")
BUSINESS_PATHS = ("/business-metrics", "/api/business-metrics")
_KEYS_BATCH = ("metrics", "business_metrics", "events")


def _gone(request: web.Request) -> bool:
    """True once the client closed its connection (it will never read the answer)."""
    transport = request.transport
    return transport is None or transport.is_closing()


class SettingsError(ValueError):
    """The collector cannot start with these settings; the message says what to change."""


@dataclass
class CollectorSettings:
    """Everything `anomalydesk collect` can be told (defaults from config.py)."""

    host: str = config.COLLECTOR_DEFAULT_HOST
    port: int = config.COLLECTOR_DEFAULT_PORT
    api_keys: list[str] = field(default_factory=list)
    api_keys_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    rate_limit: float = config.COLLECTOR_RATE_PER_KEY
    rate_burst: float = config.COLLECTOR_RATE_BURST
    max_body_bytes: int = config.COLLECTOR_MAX_BODY_BYTES
    max_batch_events: int = config.COLLECTOR_MAX_BATCH_EVENTS
    microbatch_events: int = config.COLLECTOR_MICROBATCH_EVENTS
    microbatch_seconds: float = config.COLLECTOR_MICROBATCH_SECONDS
    keys_reload_seconds: float = config.COLLECTOR_KEYS_RELOAD_SECONDS
    deadline_seconds: float = config.COLLECTOR_DEADLINE_SECONDS
    health_deadline_seconds: float = config.COLLECTOR_HEALTH_DEADLINE_SECONDS
    max_pending_events: int = config.COLLECTOR_MAX_PENDING_EVENTS
    max_pending_bytes: int = config.COLLECTOR_MAX_PENDING_BYTES


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (the only hosts where keys are optional)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_keys(settings: CollectorSettings) -> ApiKeys:
    """The key set, refusing to listen beyond loopback without keys (SettingsError says why)."""
    try:
        keys = ApiKeys(settings.api_keys, settings.api_keys_file)
    except ValueError as err:
        raise SettingsError(str(err)) from None
    if not keys.required and not is_loopback(settings.host):
        raise SettingsError(
            f"refusing to listen on {settings.host} without API keys: anyone who can reach it could "
            "write metrics. Give --api-key KEY or --api-keys-file FILE, or listen on 127.0.0.1"
        )
    return keys


def tls_context(settings: CollectorSettings) -> ssl.SSLContext | None:
    """A server TLS context from --tls-cert/--tls-key (both or neither), TLS 1.2 at least."""
    if not settings.tls_cert and not settings.tls_key:
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise SettingsError("--tls-cert and --tls-key go together: give both files")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as err:
        raise SettingsError(f"cannot load the TLS certificate/key: {err}") from None
    return context


_answer = json_answer
_error = json_error


def _unavailable(message: str, stored: str) -> web.Response:
    """503 + Retry-After; `stored` is "no" (nothing of the request reached Redis) or "unknown"."""
    return _answer(503, {"error": message, "stored": stored},
                   {"Retry-After": str(config.COLLECTOR_RETRY_AFTER_SECONDS)})


def _refused(status: int, field_name: str, reason: str) -> web.Response:
    """400/413/422 for the whole body: the DESIGN.md body with one rejection at index null."""
    return _answer(status, {"accepted": 0, "rejected": [{"index": None, "field": field_name, "reason": reason}],
                            "error": f"{field_name}: {reason}"})


class BadBody(Exception):
    """The body cannot be read as events at all (status 400, 413 or 422)."""

    def __init__(self, status: int, field_name: str, reason: str):
        super().__init__(reason)
        self.status, self.field, self.reason = status, field_name, reason


def decode_body(body: bytes) -> Any:
    """Bytes → JSON value; NaN/Infinity literals are parsed so they can be refused per item."""
    if not body.strip():
        raise BadBody(400, "body", "is empty: send a JSON event, an array of events or {\"metrics\": [...]}")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass  # orjson refuses NaN/Infinity and >64-bit integers: let the stdlib parser say more
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadBody(400, "body", f"is not valid UTF-8 (byte {err.start}: {body[err.start:err.start + 1]!r})") \
            from None
    try:
        return json.loads(text)  # accepts NaN/Infinity, which events.py then refuses with the item's index
    except RecursionError:
        raise BadBody(400, "body", "is nested too deeply to be events") from None
    except ValueError as err:
        raise BadBody(400, "body", f"is not valid JSON: {err}") from None


_BODY_FORMS = 'must be a metric object, an array of them, or {"metrics": [...]}'


def body_items(value: Any) -> list[Any]:
    """The events of a body: one event, an array, or `{"metrics": [...]}` (also business_metrics/events).

    An object that is neither an event (it has none of `events.EVENT_FIELDS`) nor such a wrapper is
    refused as a whole (422, index null), not read as one event lacking its service."""
    if isinstance(value, list):
        return value
    if not isinstance(value, dict):
        raise BadBody(422, "body", f"{_BODY_FORMS}, got {described(value)}")
    batches = [value[k] for k in _KEYS_BATCH if isinstance(value.get(k), list)]
    if batches:
        return [item for batch in batches for item in batch]
    fields = value.keys() & EVENT_FIELDS
    if not fields - {"metrics"}:  # nothing of an event but perhaps its `metrics` object: a wrapper?
        # {"metrics": null}, {"events": {...}}: a wrapper whose batch is not an array
        wrapper = [k for k in _KEYS_BATCH if k in value and not (k == "metrics" and isinstance(value[k], dict))]
        if wrapper:
            raise BadBody(422, "body", f'{_BODY_FORMS}; its "{wrapper[0]}" must be an array of events, '
                                       f"got {described(value[wrapper[0]])}")
        if not fields:
            raise BadBody(422, "body", f"{_BODY_FORMS}; this object is neither: it {not_an_event(value)}")
    return [value]  # an event; keys beside its fields are ignored (docs/collector.md)


def validate_items(items: list[Any], business_only: bool) -> tuple[list[Event], list[dict[str, Any]]]:
    """(valid events, rejected items) — business routes take business metrics only."""
    if not business_only:
        return parse_batch(items)
    valid: list[Event] = []
    rejected: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            valid.append(parse_business_metric(item))
        except EventError as err:
            rejected.append({"index": index, "field": err.field, "reason": err.reason})
    return valid, rejected


class Collector:
    """The aiohttp application over one store port (normally `collector_server.StoreBinding`)."""

    def __init__(self, store: StorePort, settings: CollectorSettings, keys: ApiKeys | None = None, *,
                 limiter: RateLimiter | SharedRateLimiter | None = None, peers: Peers | None = None,
                 worker: tuple[int, int] | None = None,
                 observed: Callable[[dict[str, Any]], None] | None = None):
        """`limiter`, `peers`, `worker` (index, count) and `observed` are given to each process of `collect
        --workers N`; `observed` gets this process's metrics snapshot before a scrape shows it."""
        self.settings = settings
        self.keys = keys if keys is not None else load_keys(settings)
        self.metrics = CollectorMetrics()
        self.limiter = limiter if limiter is not None else RateLimiter(settings.rate_limit,
                                                                       max(settings.rate_burst, 1.0))
        self.peers = peers
        self.worker = worker
        self.observed = observed
        self.authorizer = Authorizer(self.keys, self.limiter, self.metrics)
        self.store = store
        self.batcher: MicroBatcher | None = None
        self._started = time.monotonic()
        self._reload_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.held_bytes = 0  # request bodies read or being read, not yet answered
        self.held_events = 0  # valid events admitted, not yet answered

    def deadline(self) -> float:
        """The loop time by which a request starting now must have its Redis work done."""
        return asyncio.get_running_loop().time() + self.settings.deadline_seconds

    def app(self) -> web.Application:
        """The web application: routes, JSON errors, per-request metrics, key-file watcher."""
        app = web.Application(client_max_size=self.settings.max_body_bytes, middlewares=[self._middleware])
        for path in METRIC_PATHS:
            app.router.add_post(path, self._post_metrics)
        for path in BUSINESS_PATHS:
            app.router.add_post(path, self._post_business)
        app.router.add_get("/health", self._get_health)
        app.router.add_get("/prometheus", self._get_prometheus)
        app.router.add_get("/openapi.json", self._get_openapi)
        otlp = OtlpReceiver(self.store, self.authorizer, self.metrics, max_body_bytes=self.settings.max_body_bytes,
                            deadline_seconds=self.settings.deadline_seconds)
        app.router.add_post(config.OTLP_PATH, otlp.handle)  # OTLP/HTTP metrics (ingest/otlp.py)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self.batcher = MicroBatcher(
            self.store.ingest, self.metrics, max_events=self.settings.microbatch_events,
            max_delay=self.settings.microbatch_seconds, max_inflight=config.COLLECTOR_MAX_INFLIGHT_INGESTS,
        )
        if self.keys.keys_file is not None:
            self._reload_task = asyncio.get_running_loop().create_task(
                self.authorizer.watch_keys(self.settings.keys_reload_seconds))

    async def _on_shutdown(self, _app: web.Application) -> None:
        if self._reload_task is not None:
            self._reload_task.cancel()
        if self.batcher is not None:
            await self.batcher.drain()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Awaitable[Any]]) -> web.StreamResponse:
        route = request.match_info.route.resource
        path = route.canonical if route is not None else "other"
        try:
            response = await handler(request)
        except web.HTTPException as err:  # 404/405 and friends, as JSON
            response = _error(err.status, err.reason, {k: v for k, v in err.headers.items()
                                                       if k in ("Allow", "Retry-After")})
        except Exception:
            log.exception("collector: unexpected error on %s %s", request.method, request.path)
            response = _error(500, "internal error (logged by the collector)")
        self.metrics.request(path, response.status)
        return response

    # --- POST ------------------------------------------------------------------------------------
    async def _post_metrics(self, request: web.Request) -> web.Response:
        return await self._post(request, business_only=False)

    async def _post_business(self, request: web.Request) -> web.Response:
        return await self._post(request, business_only=True)

    async def _post(self, request: web.Request, business_only: bool) -> web.Response:
        key_id, refusal = self.authorizer.admit(request)
        if refusal is not None:
            return refusal
        idempotency = request.headers.get("Idempotency-Key")
        if idempotency is not None and _IDEMPOTENCY_RE.match(idempotency) is None:
            return _refused(400, "Idempotency-Key", f"must be 1–{config.COLLECTOR_IDEMPOTENCY_KEY_MAX} "
                                                    "printable ASCII characters")
        if (request.content_length or 0) > self.settings.max_body_bytes:
            return _refused(413, "body", f"is {request.content_length} bytes; the limit is "
                                         f"{self.settings.max_body_bytes}")
        deadline = self.deadline()
        size = request.content_length if request.content_length is not None else self.settings.max_body_bytes
        if self.held_bytes + size > self.settings.max_pending_bytes:
            return self._overloaded(f"{self.held_bytes} body bytes are waiting (limit "
                                    f"{self.settings.max_pending_bytes})")
        self.held_bytes += size
        try:
            return await self._post_held(request, business_only, key_id, idempotency, deadline)
        finally:
            self.held_bytes -= size

    def _overloaded(self, why: str) -> web.Response:
        self.metrics.overloaded += 1
        return _unavailable(f"the collector is at its bound of waiting work ({why}); nothing was stored, "
                            "retry later", "no")

    async def _post_held(self, request: web.Request, business_only: bool, key_id: str | None,
                         idempotency: str | None, deadline: float) -> web.Response:
        try:
            body = await request.read()
            # the common body (plain metric events, all valid) is decoded and checked in compiled code;
            # anything else takes the per-item path, which names each rejected item
            typed = None if business_only else decode_metrics(body)
            items: list[Any] = body_items(decode_body(body)) if typed is None else typed
        except web.HTTPRequestEntityTooLarge:
            return _refused(413, "body", f"is larger than the limit of {self.settings.max_body_bytes} bytes")
        except BadBody as err:
            return _refused(err.status, err.field, err.reason)
        if len(items) > self.settings.max_batch_events:
            return _refused(413, "body", f"has {len(items)} events; the limit is "
                                         f"{self.settings.max_batch_events} per request")
        valid, rejected = validate_items(items, business_only) if typed is None else (typed, [])
        if not valid:
            if not rejected:  # an empty batch: nothing to do, nothing wrong
                return _answer(202, {"accepted": 0, "rejected": []})
            self._count_rejected(len(rejected))
            return _answer(422, {"accepted": 0, "rejected": rejected,
                                 "error": f"none of the {len(items)} events is valid"})
        batch_id = None if idempotency is None else f"k:{key_id or 'open'}:{idempotency}"
        if self.held_events + len(valid) > self.settings.max_pending_events:
            return self._overloaded(f"{self.held_events} events are waiting (limit "
                                    f"{self.settings.max_pending_events})")
        assert self.batcher is not None
        self.held_events += len(valid)
        try:
            outcome = await self.batcher.submit(valid, batch_id, deadline=deadline,
                                                abandoned=lambda: _gone(request))
        except DeadlinePassed as err:
            log.warning("collector: Redis did not answer in time (%s), answering 503", err)
            return _unavailable(self._late_message(err.stored, idempotency is not None), err.stored)
        except REDIS_DOWN as err:
            self.metrics.redis_errors += 1
            log.warning("collector: Redis unreachable, answering 503: %s", err)
            return _unavailable("Redis is unreachable; nothing was stored, retry later", "no")
        except ConfigChanged as err:  # setup ran again and again while this batch was re-encoded
            log.warning("collector: %s; answering 503", err)
            return _unavailable("the server's setup kept changing while storing this batch; retry it "
                                "(with the same Idempotency-Key, nothing is counted twice)", "no")
        finally:
            self.held_events -= len(valid)
        self.metrics.events_accepted += outcome.accepted
        headers = None
        if outcome.duplicate:  # its rejected items were counted the first time
            self.metrics.duplicate_batches += 1
            headers = {"Idempotent-Replayed": "true"}
        elif rejected:
            self._count_rejected(len(rejected))
        body: dict[str, Any] = {"accepted": outcome.accepted, "rejected": rejected}
        if outcome.late:  # valid, but for a window already sealed: counted by the store, never merged
            body["late"] = outcome.late
        return _answer(200 if rejected or outcome.late else 202, body, headers)

    def _late_message(self, stored: str, keyed: bool) -> str:
        limit = f"Redis did not complete the write within {self.settings.deadline_seconds:g} s"
        if stored == "no":
            return f"{limit}; nothing was sent to it, retry later"
        if keyed:
            return (f"{limit}; it may still complete when Redis resumes: retry with the same Idempotency-Key "
                    "(counted once either way)")
        return (f"{limit}; the call was cancelled and may still complete if Redis had already taken it in: "
                "send an Idempotency-Key to make retries safe")

    def _count_rejected(self, n: int) -> None:
        """Count invalid events here and (in the background, never delaying the answer) in the store."""
        self.metrics.events_rejected += n
        task = asyncio.get_running_loop().create_task(self.store.count_rejected(n))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- GET -------------------------------------------------------------------------------------
    async def _get_health(self, _request: web.Request) -> web.Response:
        batcher = self.batcher
        body: dict[str, Any] = {
            "status": "ok",
            "uptime_s": round(time.monotonic() - self._started, 3),
            "backlog": {"pending_events": batcher.pending_events if batcher else 0,
                        "inflight_ingests": batcher.inflight if batcher else 0},
        }
        if self.worker is not None:  # collect --workers N: which process answered (its own backlog)
            body["worker"] = {"index": self.worker[0], "of": self.worker[1]}
        try:
            async with asyncio.timeout(self.settings.health_deadline_seconds):
                body.update(await self.store.health())
        except TimeoutError:
            body["redis"] = {"reachable": False, "error": "Redis did not answer within "
                                                          f"{self.settings.health_deadline_seconds:g} s"}
        if not body.get("redis", {}).get("reachable", True):
            body["status"] = "unavailable"
            return _answer(503, body, {"Retry-After": str(config.COLLECTOR_RETRY_AFTER_SECONDS)})
        return _answer(200, body)

    async def _get_prometheus(self, request: web.Request) -> web.Response:
        refusal = self.authorizer.check_key(request)
        if refusal is not None:
            return refusal
        own = self.metrics_snapshot()
        if self.peers is None:
            text = self.metrics.render(own["pending_events"], own["inflight_ingests"])
        else:  # collect --workers N: the sums over every worker
            if self.observed is not None:
                self.observed(own)
            others, configured = await self.peers()
            if 1 + len(others) < configured:
                # a sum over fewer workers is lower than the last one: Prometheus would read a counter reset
                # and count the whole sum again as new (a false spike in rate()); a failed scrape is honest
                return web.Response(status=503, text=f"{1 + len(others)} of {configured} collector workers "
                                    "answered: the sums would go down; scrape again\n",
                                    headers={"Retry-After": "1"})
            total, pending, inflight = CollectorMetrics.merged([own, *others])
            text = total.render(pending, inflight, (1 + len(others), configured))
        return web.Response(text=text, headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    def metrics_snapshot(self) -> dict[str, Any]:
        """This process's metrics as data (`CollectorMetrics.snapshot`)."""
        batcher = self.batcher
        return self.metrics.snapshot(batcher.pending_events if batcher else 0, batcher.inflight if batcher else 0)

    async def _get_openapi(self, _request: web.Request) -> web.Response:
        return _answer(200, openapi_document())
