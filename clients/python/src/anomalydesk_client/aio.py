"""AsyncAnomalyClient: the asyncio twin of AnomalyClient (httpx when installed, else the stdlib in a thread)."""

from __future__ import annotations

import asyncio
import atexit
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from anomalydesk_client._core import (
    AnomalyClientError,
    Answer,
    Event,
    GaveUp,
    TransportError,
    check_answer,
    encode_event,
    log,
    may_be_stored,
    retryable,
)
from anomalydesk_client._transport import HttpxAsyncTransport, StdlibTransport, httpx_available
from anomalydesk_client.client import _Base


class AsyncAnomalyClient(_Base):
    """Queue events from coroutines; a background task sends them in batches.

    Same batching, retry and overflow rules as AnomalyClient. Use `async with` or `await aclose()`;
    events still queued at interpreter exit are sent synchronously by an atexit hook.
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, use_httpx: bool | None = None,
                 **options: Any):
        super().__init__(base_url, api_key, **options)
        self._sync = StdlibTransport(self.base_url, self.timeout, self.verify)
        use_httpx = httpx_available() if use_httpx is None else use_httpx
        self._httpx = HttpxAsyncTransport(self.base_url, self.timeout, self.verify) if use_httpx else None
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._send_lock: asyncio.Lock | None = None
        self._flushing: asyncio.Task | None = None
        self._closed = False
        self._close_deadline = float("inf")
        self._interrupted: list[tuple[list[bytes], str]] = []
        atexit.register(self._flush_at_exit)

    # --- public API --------------------------------------------------------------------------
    async def send_metric(self, endpoint: str | Event, status_code: int | None = None,
                          response_time: float | None = None, *, service: str | None = None,
                          timestamp: float | None = None) -> None:
        """Queue a request metric (see AnomalyClient.send_metric)."""
        self.record(self._metric(endpoint, status_code, response_time, service, timestamp))

    async def send_business_metric(self, name: str, value: float,
                                   expected_range: Sequence[float] | None = None,
                                   service: str | None = None, *, timestamp: float | None = None) -> None:
        """Queue a business KPI (see AnomalyClient.send_business_metric)."""
        self.record(self._business(name, value, expected_range, service, timestamp))

    async def send_batch(self, events: Iterable[Event]) -> dict[str, Any]:
        """Send events now; the collector's answer, AnomalyClientError on failure."""
        batch = [encode_event(self._batch_event(e)) for e in events]
        return check_answer(await self._post_with_retries(batch))

    async def flush(self) -> None:
        """Send everything queued now; a flush already running is joined, never a second one started."""
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush_once())
        await asyncio.shield(self._flushing)

    async def _flush_once(self) -> None:
        async with self._lock():
            while self._interrupted:  # sent again under the same key: stored once even if it got through
                batch, key = self._interrupted.pop(0)
                await self._send_queued(batch, key, resumed=True)
            for batch, key, since in self._due_parked():  # unknown outcome: same key, counted once
                await self._send_queued(batch, key, since=since, parked=True)
            while len(self.queue):
                if self._past_close_deadline():
                    left = self.queue.take(len(self.queue))
                    self.stats.failed += len(left)
                    log.warning("anomalydesk: closing: gave up on %d queued event(s) after %.0fs",
                                len(left), self.timeout)
                    return
                await self._send_queued(self.queue.take(self.batch_size))

    async def health(self) -> dict[str, Any]:
        """The collector's GET /health body."""
        return (await self._request("GET", "/health", None, self._headers(None))).body

    async def aclose(self) -> None:
        """Flush, stop the background task, close connections (idempotent)."""
        if self._closed:
            return
        self._close_deadline = time.monotonic() + self.timeout  # closing never hangs longer
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()
        if self._httpx is not None:
            await self._httpx.aclose()
        self._sync.close()
        atexit.unregister(self._flush_at_exit)

    async def __aenter__(self) -> AsyncAnomalyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- internals ---------------------------------------------------------------------------
    def record(self, event: Event) -> None:
        if self._closed:
            raise AnomalyClientError("the client is closed")
        self._ensure_task()
        super().record(event)

    def _lock(self) -> asyncio.Lock:
        if self._send_lock is None:
            self._send_lock = asyncio.Lock()
        return self._send_lock

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # recorded outside a loop: the next flush()/aclose() or the exit hook sends it
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._run(), name="anomalydesk-client")

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), self.flush_interval)
            except asyncio.TimeoutError:
                pass
            self._wakeup.clear()
            try:
                await self.flush()
            except Exception:
                log.exception("anomalydesk: background flush failed")

    async def _request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Answer:
        if self._httpx is not None:
            return await self._httpx.request(method, path, body, headers)
        return await asyncio.to_thread(self._sync.request, method, path, body, headers)

    def _past_close_deadline(self) -> bool:
        return self._closed and time.monotonic() > self._close_deadline

    async def _send_queued(self, batch: list[bytes], key: str | None = None, *, since: float | None = None,
                           parked: bool = False, resumed: bool = False) -> None:
        key = key or uuid.uuid4().hex
        since = time.monotonic() if since is None else since
        try:
            outcome: dict[str, Any] | AnomalyClientError = check_answer(await self._post_with_retries(batch, key))
        except asyncio.CancelledError:
            if not parked:
                self._interrupted.append((batch, key))  # aclose() cancelled the background send
            else:
                self._parked.appendleft((batch, key, since))
            raise
        except AnomalyClientError as err:
            outcome = err
        if resumed and isinstance(outcome, GaveUp):
            outcome.unknown = True  # its first attempts were interrupted mid-flight
        self._settle(batch, key, since, parked, outcome)

    async def _post_with_retries(self, batch: list[bytes], key: str | None = None) -> Answer:
        body = b"[" + b",".join(batch) + b"]"
        headers = self._headers(key or uuid.uuid4().hex)  # one key for all attempts of this batch
        budget = self._budget()
        unknown = False
        while True:
            status: int | None = None
            answer_body: dict[str, Any] = {}
            try:
                answer = await self._request("POST", "/metrics", body, headers)
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
            if self._closed:
                delay = min(delay, max(0.0, self._close_deadline - time.monotonic()))
            log.info("anomalydesk: %s; retrying in %.2fs", message, delay)
            await asyncio.sleep(delay)

    def _flush_at_exit(self) -> None:
        """Send what is still queued with the blocking transport (the event loop may be gone)."""
        pending = list(self._interrupted)  # cancelled when the loop ended: same keys again
        self._interrupted.clear()
        while len(self.queue):
            pending.append((self.queue.take(self.batch_size), uuid.uuid4().hex))
        for batch, key in pending:
            try:
                answer = self._sync.request("POST", "/metrics", b"[" + b",".join(batch) + b"]",
                                            self._headers(key))
                self._account(len(batch), check_answer(answer))
            except (AnomalyClientError, TransportError) as err:
                if isinstance(err, AnomalyClientError) and self._count_invalid(len(batch), err):
                    continue
                if isinstance(err, TransportError) and err.maybe_delivered:
                    self.stats.unknown += len(batch)
                else:
                    self.stats.failed += len(batch)
                log.warning("anomalydesk: at exit, could not send %d event(s): %s", len(batch), err)
