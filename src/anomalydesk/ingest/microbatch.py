"""Merge the events of concurrent requests into few ingest calls, and answer each request only after
its events are in Redis.

Requests without an idempotency key wait a few milliseconds (or until enough events are waiting)
and are written together under one generated batch id. A request that carries an idempotency key is
written by its own ingest call with that key as the batch id, so a client's retry of the same
request is recognised by the store and never counted twice.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from anomalydesk.config import COLLECTOR_MERGED_INFLIGHT
from anomalydesk.events import BusinessMetric, Metric
from anomalydesk.ingest.collector_metrics import CollectorMetrics

Event = Metric | BusinessMetric
IngestFn = Callable[[list[Event], str], Awaitable[Any]]


@dataclass(frozen=True)
class Outcome:
    """What happened to one request's events: how many are stored, and whether it was a replay."""

    accepted: int
    duplicate: bool


class MicroBatcher:
    """Collects events from concurrent requests; `submit` returns once they are stored."""

    def __init__(
        self, ingest: IngestFn, metrics: CollectorMetrics, *, max_events: int, max_delay: float,
        max_inflight: int,
    ):
        self._ingest = ingest
        self._metrics = metrics
        self.max_events = max_events
        self.max_delay = max_delay
        self._inflight_limit = asyncio.Semaphore(max_inflight)
        self._pending: list[tuple[list[Event], asyncio.Future[Outcome]]] = []
        self.pending_events = 0
        self.inflight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._soon: asyncio.Handle | None = None
        self._last_arrival = -math.inf  # loop time of the latest request without an idempotency key
        self._due = False
        self._merged_inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, events: list[Event], batch_id: str | None = None) -> Outcome:
        """Store `events`; raises what the ingest call raised (e.g. redis ConnectionError)."""
        if batch_id is not None:
            result = await self._call(events, batch_id)
            return Outcome(len(events), bool(getattr(result, "duplicate_batches", 0)))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._pending.append((events, future))
        self.pending_events += len(events)
        now = loop.time()
        steady = now - self._last_arrival <= self.max_delay
        self._last_arrival = now
        if self.pending_events >= self.max_events:
            self._due = True  # full: no reason to wait
            self._schedule()
        elif self._merged_inflight == 0 and not steady:
            # Redis idle and no traffic just before: write in the loop's next turn, together with
            # every request whose body arrived in the same turn (no added delay)
            if self._soon is None:
                self._soon = loop.call_soon(self._on_soon)
        else:
            # a write runs, or requests keep coming (the previous one less than max_delay ago): the
            # next ones join this write within max_delay. Each FCALL costs Redis and the client
            # about as much CPU as a whole small request, so sharing it is what keeps a steady
            # stream of single events from queueing on a busy machine
            self._schedule()
        return await future

    def _schedule(self) -> None:
        """Write what waits when it is due and a merged write may start; else wait for the timer.

        Events are due in the loop's next turn when no merged write is running and no request came
        in the last `max_delay`, else after `max_delay`, when `max_events` wait, or when the running
        write ends. At most `COLLECTOR_MERGED_INFLIGHT` merged writes run at once: under load the next
        batch grows while the current one is written, so many small requests become few large ingest
        calls, and a lone request is not delayed.
        """
        if not self._pending:
            return
        if self._due and self._merged_inflight < COLLECTOR_MERGED_INFLIGHT:
            self.flush()
        elif self._timer is None and not self._due:
            self._timer = asyncio.get_running_loop().call_later(self.max_delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._due = True
        self._schedule()

    def _on_soon(self) -> None:
        self._soon = None
        self._due = True
        self._schedule()

    def flush(self) -> None:
        """Start the ingest call for everything waiting now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        self._due = False
        if not self._pending:
            return
        taken, size = 0, 0
        while taken < len(self._pending) and (taken == 0 or size + len(self._pending[taken][0]) <= self.max_events):
            size += len(self._pending[taken][0])
            taken += 1
        waiting, self._pending = self._pending[:taken], self._pending[taken:]
        self.pending_events -= size
        if self._pending:
            self._due = True  # the rest goes as soon as a write slot is free
        self._merged_inflight += 1
        task = asyncio.get_running_loop().create_task(self._write_merged(waiting))
        self._tasks.add(task)
        task.add_done_callback(self._merged_done)

    def _merged_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._merged_inflight -= 1
        if self._pending:
            self._due = True  # these waited while the previous batch was written
            self._schedule()

    async def drain(self) -> None:
        """Write everything still waiting and wait for the calls in flight (at shutdown)."""
        while self._pending or self._tasks:
            while self._pending:
                self.flush()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _write_merged(self, waiting: list[tuple[list[Event], asyncio.Future[Outcome]]]) -> None:
        merged = [event for events, _ in waiting for event in events]
        try:
            await self._call(merged, f"c:{uuid.uuid4().hex}")
        except BaseException as err:  # every waiting request learns why, then the task ends
            for _, future in waiting:
                if not future.done():
                    future.set_exception(err)
            if not isinstance(err, Exception):
                raise
            return
        for events, future in waiting:
            if not future.done():
                future.set_result(Outcome(len(events), False))

    async def _call(self, events: list[Event], batch_id: str) -> Any:
        async with self._inflight_limit:
            self.inflight += 1
            started = time.perf_counter()
            try:
                return await self._ingest(events, batch_id)
            finally:
                self.inflight -= 1
                self._metrics.redis_seconds.observe(time.perf_counter() - started)
                self._metrics.batch_events.observe(len(events))
