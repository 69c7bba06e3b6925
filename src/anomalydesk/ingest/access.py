"""Who may post to the collector: API keys (their file re-read when it changes) and per-key rate limits.

One `Authorizer` serves every route of a collector — the JSON routes, `GET /prometheus` and the OTLP
receiver (`/v1/metrics`) — so a key revoked in the file, or a bucket emptied on one route, counts on
all of them. Refusals are the collector's JSON answers: 401 + `WWW-Authenticate: Bearer`, 429 +
`Retry-After` (whole seconds); the failures are counted in the collector's metrics.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import orjson
from aiohttp import web

from anomalydesk.ingest.collector_metrics import CollectorMetrics
from anomalydesk.ingest.http_auth import ApiKeys, RateLimiter, presented_key

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="anomalydesk"'}


def json_answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer of the collector."""
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                        headers=headers)


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """`{"error": message}` with `status`."""
    return json_answer(status, {"error": message}, headers)


class Authorizer:
    """API keys and rate limits for one collector's routes."""

    def __init__(self, keys: ApiKeys, limiter: RateLimiter, metrics: CollectorMetrics):
        self.keys = keys
        self.limiter = limiter
        self.metrics = metrics

    def admit(self, request: web.Request) -> tuple[str | None, web.Response | None]:
        """(rate-limit bucket, refusal or None) for a write: a known key if keys are required, then a token."""
        key_id = None
        if self.keys.required:
            key_id = self.keys.identify(presented_key(request.headers))
            if key_id is None:
                self.metrics.auth_failures += 1
                return None, json_error(401, "missing or unknown API key (Authorization: Bearer KEY or X-API-Key)",
                                        _CHALLENGE)
        if not self.limiter.enabled:
            return key_id, None
        wait = self.limiter.acquire(key_id or f"addr:{request.remote}")
        if wait > 0:
            self.metrics.rate_limited += 1
            return key_id, json_error(429, "rate limit exceeded for this key", {"Retry-After": str(math.ceil(wait))})
        return key_id, None

    def check_key(self, request: web.Request) -> web.Response | None:
        """A refusal (401) when keys are required and the request has none known; no rate limit (reads)."""
        if self.keys.required and self.keys.identify(presented_key(request.headers)) is None:
            self.metrics.auth_failures += 1
            return json_error(401, "missing or unknown API key", _CHALLENGE)
        return None

    async def watch_keys(self, interval: float) -> None:
        """Re-read the keys file whenever it changed, every `interval` seconds (until cancelled)."""
        while True:
            await asyncio.sleep(interval)
            self.keys.reload_if_changed()
