"""Alert routing out: webhooks (generic JSON and Slack-compatible), per severity, service and kind.

Every route reads the alert stream (`Keys.alerts_log`) through its OWN consumer group
(`webhooks:<route name>`), so detection never waits for a webhook, one failing receiver never holds
back another route, and a restart picks up exactly where the route stopped (its pending entries
are retried first; a consumer silent for WEBHOOK_CLAIM_IDLE_MS has its entries taken over).
Delivery is at least once: an alert is acknowledged only after a 2xx answer, so a receiver may see
an alert twice; every delivery carries the alert's `id` and `incident_id` (also as the headers
`Idempotency-Key` and `X-AnomalyDesk-Incident-Id`) to deduplicate on. A failing route retries the
same alert with exponential backoff (1 s, 2 s, … up to 60 s; Retry-After respected), in order.
An alert that is still undelivered WEBHOOK_GIVE_UP_SECONDS after it was logged, or that a receiver
refuses for good (4xx other than 408/425/429), goes to the dead-letter stream
`Keys.alerts_dead` with the route, the error and the number of attempts. Silenced alerts are
not sent (they were not published either).

The dead-letter stream and the delivery counters share the alert log's slot (`Keys.incident_tag`),
so acknowledging an alert and counting it is one MULTI on a Redis Cluster too.

Routes file (TOML, or JSON with the same structure), documented in docs/integrations.md:

    [[route]]
    name = "slack-oncall"                 # [A-Za-z0-9._-]{1,64}, unique
    url = "https://hooks.slack.com/services/T000/B000/XXXX"
    format = "slack"                      # "json" (the alert as DESIGN.md defines it) | "slack"
    severities = ["critical"]             # default: all (info, warning, critical)
    services = ["payments", "pay-*"]      # shell-style globs; default ["*"]
    kinds = ["new", "escalated"]          # default: all (new, escalated, resolved, rule)
    headers = { Authorization = "Bearer …" }   # optional extra headers
    timeout = 10                          # seconds per attempt
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import random
import re
import socket
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import redis
import redis.asyncio

from anomalydesk import config
from anomalydesk.detect.incident_model import ALERT_KINDS, SEVERITIES, Alert, score_text
from anomalydesk.store.keys import Keys

log = logging.getLogger(__name__)

FORMATS = ("json", "slack")
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
_RETRYABLE_4XX = (408, 425, 429)
_SLACK_MARK = {"critical": ":red_circle:", "warning": ":large_orange_circle:", "info": ":large_blue_circle:"}


class RoutesError(ValueError):
    """The routes file is unusable; the message names the file, the route and the key."""


@dataclass(frozen=True)
class Route:
    """Where alerts of some severities, services and kinds go."""

    name: str
    url: str
    format: str = "json"
    severities: tuple[str, ...] = SEVERITIES
    services: tuple[str, ...] = ("*",)
    kinds: tuple[str, ...] = ALERT_KINDS
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = config.WEBHOOK_TIMEOUT_SECONDS

    def matches(self, alert: Alert) -> bool:
        """True when this route takes the alert."""
        return (alert.severity in self.severities and alert.kind in self.kinds
                and any(fnmatch.fnmatchcase(alert.service, p) for p in self.services))

    @property
    def group(self) -> str:
        """This route's consumer group on the alert stream."""
        return f"webhooks:{self.name}"


# ------------------------------------------------------------------------------------------------
# the routes file
# ------------------------------------------------------------------------------------------------
def _choice(raw: dict, key: str, allowed: tuple[str, ...], where: str) -> tuple[str, ...]:
    value = raw.get(key, list(allowed))
    if not isinstance(value, list) or not value or any(v not in allowed for v in value):
        raise RoutesError(f"{where}.{key} must be a non-empty list of {', '.join(allowed)}; got {value!r}")
    return tuple(value)


def _route(raw: Any, where: str) -> Route:
    if not isinstance(raw, dict):
        raise RoutesError(f"{where} must be a table")
    unknown = set(raw) - {"name", "url", "format", "severities", "services", "kinds", "headers", "timeout"}
    if unknown:
        raise RoutesError(f"{where}: unknown key(s) {sorted(unknown)}")
    name = raw.get("name")
    if not isinstance(name, str) or _NAME_RE.match(name) is None:
        raise RoutesError(f"{where}.name must match [A-Za-z0-9._-]{{1,64}}, got {name!r}")
    url = raw.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise RoutesError(f"{where}.url must be an http(s) URL, got {url!r}")
    fmt = raw.get("format", "json")
    if fmt not in FORMATS:
        raise RoutesError(f"{where}.format must be \"json\" or \"slack\", got {fmt!r}")
    services = raw.get("services", ["*"])
    if not isinstance(services, list) or not services or not all(isinstance(s, str) and s for s in services):
        raise RoutesError(f"{where}.services must be a non-empty list of service names or globs")
    headers = raw.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise RoutesError(f"{where}.headers must be a table of string → string")
    timeout = raw.get("timeout", config.WEBHOOK_TIMEOUT_SECONDS)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 300:
        raise RoutesError(f"{where}.timeout must be a number of seconds in (0, 300]")
    return Route(name, url, fmt, _choice(raw, "severities", SEVERITIES, where), tuple(services),
                 _choice(raw, "kinds", ALERT_KINDS, where), dict(headers), float(timeout))


def parse_routes(raw: Any, source: str = "routes") -> list[Route]:
    """Routes from the file's parsed content (RoutesError names what is wrong)."""
    if not isinstance(raw, dict) or set(raw) - {"route"}:
        raise RoutesError(f"{source}: expected only [[route]] tables at the top level")
    items = raw.get("route", [])
    if not isinstance(items, list) or not items:
        raise RoutesError(f"{source}: no routes; add at least one [[route]] with a name and a url")
    routes = [_route(item, f"{source}: route[{i}]") for i, item in enumerate(items)]
    names = [r.name for r in routes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RoutesError(f"{source}: route names must be unique; repeated: {', '.join(duplicates)}")
    return routes


def load_routes(path: str | Path) -> list[Route]:
    """Read a routes file (.toml, or .json)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise RoutesError(f"cannot read the routes file {p}: {err.strerror or err}") from None
    try:
        raw = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as err:
        raise RoutesError(f"{p}: not valid {'JSON' if p.suffix.lower() == '.json' else 'TOML'}: {err}") from None
    return parse_routes(raw, str(p))


def redact_url(url: str) -> str:
    """scheme://host[:port]/… — webhook paths (Slack's above all) are secrets."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}" + ("/…" if parts.path.strip("/") else "")


def routes_summary(routes: list[Route]) -> list[dict[str, Any]]:
    """What the desktop app and `notify --check` show: no secrets (URL path, header values)."""
    return [{"name": r.name, "url": redact_url(r.url), "format": r.format, "severities": list(r.severities),
             "services": list(r.services), "kinds": list(r.kinds), "headers": sorted(r.headers)} for r in routes]


def dead_letter_key(keys: Keys) -> str:
    """Stream of deliveries that kept failing (route, alert, error, attempts), in the alert log's slot."""
    return keys.alerts_dead


def stats_key(keys: Keys) -> str:
    """Hash `<route>:delivered|failed_attempts|dead|skipped` → count, in the alert log's slot."""
    return keys.webhook_stats


def route_status(r: redis.Redis, routes: list[Route], keys: Keys | None = None) -> list[dict[str, Any]]:
    """Per route: pending deliveries, alerts not read yet, delivered, dead-lettered (for the app and CLI)."""
    keys = keys or Keys(config.key_prefix())
    groups: dict[str, dict] = {}
    try:
        for g in r.xinfo_groups(keys.alerts_log):
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            groups[name] = g
    except redis.ResponseError:
        pass  # no alert stream yet
    raw = r.hgetall(stats_key(keys))
    stats = {k.decode(): int(v) for k, v in raw.items()}
    out = []
    for summary, route in zip(routes_summary(routes), routes, strict=True):
        g = groups.get(route.group)
        summary.update({
            "group": route.group, "started": g is not None,
            "pending": int(g["pending"]) if g else 0, "lag": g.get("lag") if g else None,
            **{k: stats.get(f"{route.name}:{k}", 0) for k in ("delivered", "failed_attempts", "dead", "skipped")},
        })
        out.append(summary)
    return out


# ------------------------------------------------------------------------------------------------
# payloads
# ------------------------------------------------------------------------------------------------
def payload(route: Route, alert: Alert) -> dict[str, Any]:
    """The body sent for an alert: the alert itself (json) or a Slack incoming-webhook message."""
    if route.format == "json":
        return alert.to_json()
    mark = ":white_check_mark:" if alert.kind == "resolved" else _SLACK_MARK.get(alert.severity, "")
    head = f"{mark} *{alert.severity}* {alert.kind} — *{alert.service}*: {alert.message}"
    reasons = "\n".join(f"• {r.get('text', r.get('feature', ''))}" for r in alert.reasons)
    context = (f"score {score_text(alert.score)} · window {alert.window} · {alert.time} · "
               f"incident {alert.incident_id} · alert {alert.id}")
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": head}}]
    if reasons:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": reasons}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return {"text": f"{head} ({context})", "blocks": blocks}


# ------------------------------------------------------------------------------------------------
# the notifier
# ------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    ok: bool
    permanent: bool = False
    error: str = ""
    retry_after: float | None = None


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class Notifier:
    """Delivers alerts to routes until stopped; one asyncio task per route."""

    def __init__(self, ar: redis.asyncio.Redis, routes: list[Route], *, keys: Keys | None = None,
                 consumer: str | None = None, start_id: str = "$",
                 backoff_base: float = config.WEBHOOK_BACKOFF_BASE_SECONDS,
                 backoff_max: float = config.WEBHOOK_BACKOFF_MAX_SECONDS,
                 give_up_after: float = config.WEBHOOK_GIVE_UP_SECONDS,
                 claim_idle_ms: int = config.WEBHOOK_CLAIM_IDLE_MS, block_ms: int = config.WEBHOOK_BLOCK_MS):
        self.ar = ar
        self.routes = routes
        self.keys = keys or Keys(config.key_prefix())
        # a stable name per host: a restarted notifier finds its own pending deliveries
        self.consumer = consumer or f"{socket.gethostname()}-notify"
        self.start_id = start_id
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.give_up_after = give_up_after
        self.claim_idle_ms, self.block_ms = claim_idle_ms, block_ms

    async def ensure_groups(self, start_id: str | None = None) -> None:
        """Create every route's consumer group (new groups start at `start_id`: "$" = new alerts only)."""
        for route in self.routes:
            try:
                await self.ar.xgroup_create(self.keys.alerts_log, route.group, id=start_id or self.start_id,
                                            mkstream=True)
            except redis.ResponseError as err:
                if "BUSYGROUP" not in str(err):
                    raise

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set."""
        await self.ensure_groups()
        async with aiohttp.ClientSession(headers={"User-Agent": "anomalydesk-notify"}) as session:
            await asyncio.gather(*(self._route_loop(route, session, stop) for route in self.routes))

    async def _next(self, route: Route) -> tuple[str, dict | None] | None:
        """The route's next entry: its own pending first, then a dead consumer's, then a new one."""
        log_key = self.keys.alerts_log
        got = await self.ar.xreadgroup(route.group, self.consumer, {log_key: "0"}, count=1)
        if got and got[0][1]:
            entry_id, fields = got[0][1][0]
            return _text(entry_id), fields
        claimed = await self.ar.xautoclaim(log_key, route.group, self.consumer, self.claim_idle_ms, "0-0", count=1)
        if claimed and claimed[1]:
            entry_id, fields = claimed[1][0]
            return _text(entry_id), fields
        got = await self.ar.xreadgroup(route.group, self.consumer, {log_key: ">"}, count=1, block=self.block_ms)
        if got and got[0][1]:
            entry_id, fields = got[0][1][0]
            return _text(entry_id), fields
        return None

    async def _route_loop(self, route: Route, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        backoff = self.backoff_base
        attempts: dict[str, int] = {}
        while not stop.is_set():
            try:
                backoff = await self._step(route, session, stop, backoff, attempts)
            except (redis.ConnectionError, redis.TimeoutError) as err:
                # nothing acknowledged is lost: unacknowledged alerts stay pending and come back first
                log.warning("notify %s: Redis unreachable (%s); retrying", route.name, err)
                await _sleep(stop, backoff)
                backoff = min(backoff * 2, self.backoff_max)
            except redis.ResponseError as err:
                if "NOGROUP" not in str(err):
                    raise
                # the server lost the stream or the group (restarted without persistence, flushed)
                log.warning("notify %s: consumer group missing; creating it again", route.name)
                await self.ensure_groups("0")  # whatever the stream holds now was logged after the loss

    async def _step(self, route: Route, session: aiohttp.ClientSession, stop: asyncio.Event, backoff: float,
                    attempts: dict[str, int]) -> float:
        """Handle the route's next alert; the backoff to use next."""
        entry = await self._next(route)
        if entry is None:
            return backoff
        entry_id, fields = entry
        alert = Alert.from_entry(fields)
        if alert is None:
            await self._dead(route, entry_id, fields, "alert entry trimmed or not JSON before delivery", 0)
            return backoff
        if alert.silenced or not route.matches(alert):
            await self._ack(route, entry_id, "skipped")
            return backoff
        outcome = await self._deliver(session, route, alert)
        attempts[entry_id] = attempts.get(entry_id, 0) + 1
        if outcome.ok:
            await self._ack(route, entry_id, "delivered")
            attempts.pop(entry_id, None)
            return self.backoff_base
        age = time.time() - int(entry_id.split("-", 1)[0]) / 1000
        if outcome.permanent or age >= self.give_up_after:
            why = outcome.error if outcome.permanent else f"{outcome.error} (still failing after {age:.0f} s)"
            await self._dead(route, entry_id, fields, why, attempts.pop(entry_id))
            return backoff  # the next alert is tried at once: it may well be old enough to give up too
        await self.ar.hincrby(stats_key(self.keys), f"{route.name}:failed_attempts", 1)
        log.info("notify %s: %s; retrying %s in %.1f s", route.name, outcome.error, alert.id, backoff)
        wait = max(backoff, min(outcome.retry_after or 0.0, self.backoff_max))
        await _sleep(stop, wait * (0.75 + random.random() / 2))
        return min(backoff * 2, self.backoff_max)

    async def _deliver(self, session: aiohttp.ClientSession, route: Route, alert: Alert) -> Outcome:
        headers = {"Content-Type": "application/json", "Idempotency-Key": alert.id,
                   "X-AnomalyDesk-Alert-Id": alert.id, "X-AnomalyDesk-Incident-Id": alert.incident_id,
                   **route.headers}
        body = json.dumps(payload(route, alert)).encode()
        try:
            async with session.post(route.url, data=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=route.timeout)) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return Outcome(True)
                retry_after = resp.headers.get("Retry-After")
                permanent = 400 <= resp.status < 500 and resp.status not in _RETRYABLE_4XX
                return Outcome(False, permanent, f"HTTP {resp.status} from {redact_url(route.url)}",
                               float(retry_after) if retry_after and retry_after.isdigit() else None)
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            return Outcome(False, False, f"{type(err).__name__} posting to {redact_url(route.url)}: {err}")

    async def _ack(self, route: Route, entry_id: str, counter: str) -> None:
        pipe = self.ar.pipeline(transaction=True)
        pipe.xack(self.keys.alerts_log, route.group, entry_id)
        pipe.hincrby(stats_key(self.keys), f"{route.name}:{counter}", 1)
        await pipe.execute()

    async def _dead(self, route: Route, entry_id: str, fields: dict | None, error: str, attempts: int) -> None:
        log.warning("notify %s: dead-lettering alert entry %s: %s", route.name, entry_id, error)
        alert = (fields or {}).get(b"alert") or (fields or {}).get("alert") or ""
        pipe = self.ar.pipeline(transaction=True)
        pipe.xadd(dead_letter_key(self.keys), {"route": route.name, "entry": entry_id, "alert": alert,
                                               "error": error, "attempts": attempts, "at": f"{time.time():.3f}"},
                  maxlen=config.WEBHOOK_DEAD_MAXLEN, approximate=True)
        pipe.xack(self.keys.alerts_log, route.group, entry_id)
        pipe.hincrby(stats_key(self.keys), f"{route.name}:dead", 1)
        await pipe.execute()


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
