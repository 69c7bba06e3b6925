"""What both clients share: event building, the bounded queue, answers, retry timing."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("anomalydesk_client")

Event = dict[str, Any]
OVERFLOW_POLICIES = ("drop_oldest", "raise")
_WARN_EVERY_SECONDS = 10.0


class AnomalyClientError(Exception):
    """A request failed for good: `status` (None for a network error) and the collector's `body`."""

    def __init__(self, message: str, status: int | None = None, body: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.body = body or {}


class QueueFull(AnomalyClientError):
    """The client's queue is full and the overflow policy is "raise"."""


class TransportError(OSError):
    """The collector could not be reached (connection refused, reset, timed out, TLS failure).

    `maybe_delivered` is False when the request certainly never reached the collector (the
    connection was refused), True when it may have (the connection died after the request was sent).
    """

    def __init__(self, message: str, maybe_delivered: bool = True):
        super().__init__(message)
        self.maybe_delivered = maybe_delivered


class GaveUp(AnomalyClientError):
    """The retry budget of a batch ran out; `unknown` when an attempt may have been stored."""

    def __init__(self, message: str, status: int | None = None, body: dict[str, Any] | None = None,
                 unknown: bool = False):
        super().__init__(message, status, body)
        self.unknown = unknown


@dataclass
class Answer:
    """One HTTP answer from the collector."""

    status: int
    headers: dict[str, str]
    body: dict[str, Any]


def parse_answer(status: int, headers: dict[str, str], raw: bytes) -> Answer:
    """Decode the collector's JSON body (an empty dict when it is not JSON)."""
    try:
        body = json.loads(raw.decode("utf-8")) if raw else {}
    except (ValueError, UnicodeDecodeError):
        body = {"error": raw[:200].decode("utf-8", "replace")}
    if not isinstance(body, dict):
        body = {"value": body}
    return Answer(status, {k.lower(): v for k, v in headers.items()}, body)


def retryable(status: int) -> bool:
    """Only overload and server trouble are retried: 429 and 5xx, never another 4xx."""
    return status == 429 or status >= 500


def may_be_stored(answer: Answer) -> bool:
    """Whether a retryable answer leaves the batch's fate open: 429 and the collector's 503s say
    nothing was stored (unless their body says `"stored": "unknown"`); other 5xx (a proxy's 502/504,
    a 500) say nothing about it."""
    if answer.status in (429, 503):
        return answer.body.get("stored") == "unknown"
    return True


class RetryBudget:
    """When to retry one batch: for `retry_for` seconds after its first attempt (and at most
    `max_retries` times when given), waiting Retry-After or exponential backoff with full jitter."""

    def __init__(self, retry_for: float, max_retries: int | None, base: float, cap: float):
        self.ends = time.monotonic() + retry_for
        self.max_retries = max_retries
        self.base, self.cap = base, cap
        self.attempt = 0

    def next_delay(self, retry_after: str | None) -> float | None:
        """Seconds to wait before the next attempt, or None when the budget is spent."""
        if self.max_retries is not None and self.attempt >= self.max_retries:
            return None
        left = self.ends - time.monotonic()
        if left <= 0:
            return None
        delay = min(retry_delay(self.attempt, self.base, self.cap, retry_after), left)
        self.attempt += 1
        return delay


def retry_delay(attempt: int, base: float, cap: float, retry_after: str | None) -> float:
    """Seconds to wait before retry `attempt` (0-based): Retry-After if given, else full jitter."""
    if retry_after:
        try:
            return min(max(float(retry_after), 0.0), cap)
        except ValueError:
            pass
    return random.uniform(0, min(cap, base * (2 ** attempt)))


def log_rejected(n: int, rejected: list[Any]) -> None:
    """Warn about events the collector refused as invalid, with the first item's reason."""
    log.warning("anomalydesk: collector rejected %d event(s), first: %s", n, rejected[0])


def check_answer(answer: Answer) -> dict[str, Any]:
    """The body of a 200/202 answer; AnomalyClientError for a refusal (4xx/5xx)."""
    if answer.status in (200, 202):
        rejected = answer.body.get("rejected") or []
        if rejected:
            log_rejected(len(rejected), rejected)
        return answer.body
    reason = answer.body.get("error") or answer.body
    raise AnomalyClientError(f"collector answered {answer.status}: {reason}", answer.status, answer.body)


def invalid_items(err: AnomalyClientError) -> list[dict[str, Any]] | None:
    """The collector's per-item reasons when it refused every event of a batch as invalid (422 with
    `rejected` naming each item by index), else None. Sending such events again can never succeed,
    so they are `rejected`, not `failed`; a 422 for the body as a whole (index null) is not this."""
    rejected = err.body.get("rejected")
    if err.status != 422 or not isinstance(rejected, list) or not rejected:
        return None
    if not all(isinstance(item, dict) and isinstance(item.get("index"), int) for item in rejected):
        return None
    return rejected


def encode_event(event: Event) -> bytes:
    """The event as compact JSON; ValueError naming the problem (NaN/Infinity, unserialisable values)."""
    if not isinstance(event, dict):
        raise TypeError(f"an event must be a dict, got {type(event).__name__}")
    try:
        return json.dumps(event, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as err:
        raise ValueError(f"event cannot be sent as JSON ({err}): {event!r:.200}") from None


def metric_event(
    endpoint: str | Event, status_code: int | None, response_time: float | None,
    service: str | None, timestamp: float | None, default_service: str | None,
) -> Event:
    """A metric event: either a ready dict (the demo SDK's shape) or endpoint/status/latency."""
    if isinstance(endpoint, dict):
        event = dict(endpoint)
        if "service" not in event and (service or default_service):
            event["service"] = service or default_service
        return event
    if not isinstance(endpoint, str):
        raise TypeError(f"endpoint must be a string like 'GET:/users/{{id}}' or an event dict, got {endpoint!r}")
    service = service or default_service
    if not service:
        raise ValueError("service is required: pass service=... or AnomalyClient(..., service=...)")
    if status_code is None or response_time is None:
        raise ValueError("status_code and response_time (milliseconds) are required")
    event = {"service": service, "endpoint": endpoint, "status_code": status_code,
             "response_time": response_time}
    if timestamp is not None:
        event["timestamp"] = timestamp
    return event


def business_event(
    name: str, value: float, expected_range: Sequence[float] | None, service: str | None,
    timestamp: float | None,
) -> Event:
    """A business metric event; no service → the collector's pseudo-service `business`."""
    event: Event = {"metric_name": name, "value": value}
    if expected_range is not None:
        low, high = expected_range
        event["expected_range"] = [low, high]
    if service is not None:
        event["service"] = service
    if timestamp is not None:
        event["timestamp"] = timestamp
    return event


@dataclass
class Stats:
    """Counters every client keeps: nothing is lost without being counted here and logged.

    Once the client is closed, sent + rejected + unknown + failed + dropped = the events produced.
    """

    sent: int = 0  # events the collector stored
    rejected: int = 0  # events the collector refused as invalid
    dropped: int = 0  # events dropped because the queue was full (policy drop_oldest)
    failed: int = 0  # events given up on, certainly not stored (refused but not as invalid, or unsent)
    unknown: int = 0  # events whose batch may or may not be stored; re-sent under the same key later


@dataclass
class EventQueue:
    """A bounded FIFO of events with an explicit overflow policy.

    "drop_oldest" (default): a full queue drops its oldest event to take the new one, counts it in
    `stats.dropped` and logs a warning (the first time, then at most every 10 s with the total).
    "raise": a full queue raises QueueFull and keeps what it has.
    """

    max_size: int
    overflow: str = "drop_oldest"
    stats: Stats = field(default_factory=Stats)
    _items: deque = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _warned_at: float = -1e9

    def __post_init__(self) -> None:
        if self.overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {self.overflow!r}")
        if self.max_size < 1:
            raise ValueError("max_queue must be at least 1")

    def __len__(self) -> int:
        return len(self._items)

    def put(self, event: Event) -> int:
        """Append; returns the queue length after it."""
        with self._lock:
            if len(self._items) >= self.max_size:
                if self.overflow == "raise":
                    raise QueueFull(f"anomalydesk client queue is full ({self.max_size} events)")
                self._items.popleft()
                self.stats.dropped += 1
                now = time.monotonic()
                if now - self._warned_at >= _WARN_EVERY_SECONDS:
                    self._warned_at = now
                    log.warning("anomalydesk: queue full (%d events): dropped the oldest, %d dropped so far",
                                self.max_size, self.stats.dropped)
            self._items.append(event)
            return len(self._items)

    def take(self, n: int) -> list[Any]:
        """Remove and return up to n events from the front."""
        with self._lock:
            n = min(n, len(self._items))
            return [self._items.popleft() for _ in range(n)]
