"""AnomalyClient: queue events, send them in batches from a background thread, retry what may be retried."""

from __future__ import annotations

import atexit
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from anomalydesk_client._core import (
    AnomalyClientError,
    Answer,
    Event,
    EventQueue,
    GaveUp,
    RetryBudget,
    Stats,
    TransportError,
    business_event,
    check_answer,
    encode_event,
    invalid_items,
    log,
    log_rejected,
    may_be_stored,
    metric_event,
    retryable,
)
from anomalydesk_client._transport import StdlibTransport, Verify
from anomalydesk_client.timer import Timer

USER_AGENT = "anomalydesk-client-python/0.1.0"
# a batch whose outcome is unknown is re-sent under its key only while the collector still knows the
# key: the store keeps batch ids 600 s (anomalydesk.contract.BATCH_TTL_SECONDS; tests check the margin)
RESEND_WINDOW_SECONDS = 540.0
Parked = tuple[list[bytes], str, float]  # (events, idempotency key, first sent at, monotonic)


class _Base:
    """Settings, queue and request building shared by the sync and async clients."""

    def __init__(
        self, base_url: str, api_key: str | None = None, *, service: str | None = None,
        batch_size: int = 500, flush_interval: float = 1.0, max_queue: int = 10_000,
        overflow: str = "drop_oldest", retry_for: float = 30.0, max_retries: int | None = None,
        backoff: float = 0.25, backoff_max: float = 10.0, timeout: float = 10.0, verify: Verify = True,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.service = service
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retry_for = retry_for
        self.max_retries = max_retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.verify = verify
        self.queue = EventQueue(max_queue, overflow)
        self._parked: deque[Parked] = deque()  # batches of unknown outcome, re-sent under their key

    @property
    def stats(self) -> Stats:
        """Counters: sent, rejected, dropped (queue full), failed (certainly not stored), unknown."""
        return self.queue.stats

    def _budget(self) -> RetryBudget:
        return RetryBudget(self.retry_for, self.max_retries, self.backoff, self.backoff_max)

    def _due_parked(self) -> list[Parked]:
        """The parked batches to send again now; those past the resend window stay `unknown` for good."""
        due, now = [], time.monotonic()
        while self._parked:
            batch, key, since = self._parked.popleft()
            if now - since < RESEND_WINDOW_SECONDS:
                due.append((batch, key, since))
            else:
                log.warning("anomalydesk: %d event(s) of unknown outcome are too old to re-send safely", len(batch))
        return due

    def _settle(self, batch: list[bytes], key: str, since: float, parked: bool,
                outcome: dict[str, Any] | AnomalyClientError) -> None:
        """Count one batch's outcome: stored (the answer), refused, or unknown (parked for a re-send)."""
        n = len(batch)
        if isinstance(outcome, dict):
            if parked:
                self.stats.unknown -= n
            self._account(n, outcome)
            return
        if (isinstance(outcome, GaveUp) and outcome.unknown) or (parked and isinstance(outcome, GaveUp)):
            if not parked:
                self.stats.unknown += n
                log.warning("anomalydesk: %d event(s) may or may not be stored (%s); re-sent later under the "
                            "same key", n, outcome)
            self._parked.append((batch, key, since))
            while sum(len(b) for b, _, _ in self._parked) > self.queue.max_size:  # memory stays bounded
                dropped, _, _ = self._parked.popleft()
                log.warning("anomalydesk: too many events of unknown outcome: %d stay unknown", len(dropped))
            return
        if parked:
            self.stats.unknown -= n
        if not self._count_invalid(n, outcome):
            self.stats.failed += n
            log.warning("anomalydesk: gave up on %d event(s): %s", n, outcome)

    def _count_invalid(self, n: int, err: AnomalyClientError) -> bool:
        """Count a batch the collector refused as invalid (every event) as `rejected`, logging the
        first reason as for a partly valid batch; False for any other refusal (401, 413, …)."""
        rejected = invalid_items(err)
        if rejected is None:
            return False
        self.stats.rejected += n  # a 422 stores none of the batch: all n events were refused
        log_rejected(n, rejected)
        return True

    def _headers(self, idempotency_key: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    def _metric(self, endpoint: str | Event, status_code: int | None, response_time: float | None,
                service: str | None, timestamp: float | None) -> Event:
        return metric_event(endpoint, status_code, response_time, service, timestamp, self.service)

    def _business(self, name: str, value: float, expected_range: Sequence[float] | None, service: str | None,
                  timestamp: float | None) -> Event:
        """A KPI of `service`, else of the client's service, else of the pseudo-service `business`."""
        return business_event(name, value, expected_range, service or self.service, timestamp)

    def _batch_event(self, event: Event) -> Event:
        """An event of `send_batch`: a KPI without a service gets the client's, as a request metric does."""
        if "metric_name" not in event:
            return self._metric(event, None, None, None, None)
        return event if "service" in event or not self.service else {**event, "service": self.service}

    def record(self, event: Event) -> None:
        """Queue one ready event dict (what the middleware and timers call); ValueError if not JSON."""
        if self.queue.put(encode_event(event)) >= self.batch_size:
            self._wake()

    def _wake(self) -> None:
        raise NotImplementedError

    def timer(self, endpoint: str, service: str | None = None) -> Timer:
        """Time a block (`with client.timer("GET:/x"):`) or a function (`@client.timer("GET:/x")`)."""
        return Timer(self, endpoint, service)

    def _account(self, n: int, body: dict[str, Any]) -> None:
        self.stats.sent += int(body.get("accepted", 0))
        self.stats.rejected += len(body.get("rejected") or [])


class AnomalyClient(_Base):
    """Synchronous client (stdlib only). Events are queued and sent in the background.

    Flushes when `batch_size` events are waiting, every `flush_interval` seconds, on `flush()`,
    `close()` and at interpreter exit. Network errors, 5xx and 429 are retried for `retry_for` seconds
    (default 30) with exponential backoff (honouring Retry-After) under one idempotency key, so a retry
    never double counts; other 4xx answers are not retried. A batch that may have been stored when its
    budget ends is counted `unknown` and re-sent under the same key at the next flush.
    """

    def __init__(self, base_url: str, api_key: str | None = None, **options: Any):
        super().__init__(base_url, api_key, **options)
        self._transport = StdlibTransport(self.base_url, self.timeout, self.verify)
        self._send_lock = threading.Lock()
        self._wakeup = threading.Event()
        self._closed = threading.Event()
        self._close_deadline = float("inf")
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        atexit.register(self.close)

    # --- public API --------------------------------------------------------------------------
    def send_metric(self, endpoint: str | Event, status_code: int | None = None,
                    response_time: float | None = None, *, service: str | None = None,
                    timestamp: float | None = None) -> None:
        """Queue a request metric: `send_metric("GET:/users/1", 200, 12.5)` or an event dict."""
        self.record(self._metric(endpoint, status_code, response_time, service, timestamp))

    def send_business_metric(self, name: str, value: float, expected_range: Sequence[float] | None = None,
                             service: str | None = None, *, timestamp: float | None = None) -> None:
        """Queue a business KPI of `service`, else of the client's service (no service at all → the
        collector's pseudo-service `business`)."""
        self.record(self._business(name, value, expected_range, service, timestamp))

    def send_batch(self, events: Iterable[Event]) -> dict[str, Any]:
        """Send events now (bypassing the queue); the collector's answer, AnomalyClientError on failure."""
        batch = [encode_event(self._batch_event(e)) for e in events]
        return check_answer(self._post_with_retries(batch))

    def flush(self) -> None:
        """Send everything queued now (blocks until sent or given up)."""
        with self._send_lock:
            for batch, key, since in self._due_parked():  # first: same key, counted once either way
                self._send_queued(batch, key, since)
            while len(self.queue):
                if self._past_close_deadline():
                    left = self.queue.take(len(self.queue))
                    self.stats.failed += len(left)
                    log.warning("anomalydesk: closing: gave up on %d queued event(s) after %.0fs",
                                len(left), self.timeout)
                    return
                self._send_queued(self.queue.take(self.batch_size))

    def health(self) -> dict[str, Any]:
        """The collector's GET /health body."""
        return self._transport.request("GET", "/health", None, self._headers(None)).body

    def close(self) -> None:
        """Flush, stop the background thread and the connection (idempotent)."""
        if self._closed.is_set():
            return
        self._close_deadline = time.monotonic() + self.timeout  # close (and exit) never hangs longer
        self._closed.set()
        self._wakeup.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * self.timeout + self.backoff_max)
        self.flush()
        self._transport.close()
        atexit.unregister(self.close)

    def __enter__(self) -> AnomalyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------------
    def record(self, event: Event) -> None:
        if self._closed.is_set():
            raise AnomalyClientError("the client is closed")
        self._ensure_thread()
        super().record(event)

    def _wake(self) -> None:
        self._wakeup.set()

    def _past_close_deadline(self) -> bool:
        return self._closed.is_set() and time.monotonic() > self._close_deadline

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._thread_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="anomalydesk-client", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wakeup.wait(self.flush_interval)
            self._wakeup.clear()
            try:
                self.flush()
            except Exception:  # never let the thread die: the next round tries again
                log.exception("anomalydesk: background flush failed")

    def _send_queued(self, batch: list[bytes], key: str | None = None, since: float | None = None) -> None:
        parked = key is not None
        key = key or uuid.uuid4().hex  # one key for every attempt of this batch, re-sends included
        since = time.monotonic() if since is None else since
        try:
            outcome: dict[str, Any] | AnomalyClientError = check_answer(self._post_with_retries(batch, key))
        except AnomalyClientError as err:
            outcome = err
        self._settle(batch, key, since, parked, outcome)

    def _post_with_retries(self, batch: list[bytes], key: str | None = None) -> Answer:
        """The first answer that is not to be retried; GaveUp when the retry budget is spent."""
        body = b"[" + b",".join(batch) + b"]"
        headers = self._headers(key or uuid.uuid4().hex)  # one key for all attempts of this batch
        budget = self._budget()
        unknown = False
        while True:
            status: int | None = None
            answer_body: dict[str, Any] = {}
            try:
                answer = self._transport.request("POST", "/metrics", body, headers)
                if not retryable(answer.status):
                    return answer
                unknown = unknown or may_be_stored(answer)
                status, answer_body = answer.status, answer.body
                message = f"collector answered {answer.status}"
                retry_after = answer.headers.get("retry-after")
            except TransportError as err:
                unknown = unknown or err.maybe_delivered
                message, retry_after = f"collector unreachable: {err}", None
            delay = None if self._past_close_deadline() else budget.next_delay(retry_after)
            if delay is None:
                raise GaveUp(message, status, answer_body, unknown=unknown)
            if self._closed.is_set():
                delay = min(delay, max(0.0, self._close_deadline - time.monotonic()))
            log.info("anomalydesk: %s; retrying in %.2fs", message, delay)
            time.sleep(delay)
