"""Merge the events of concurrent requests into few ingest calls, and answer each request only after
its events are in Redis.

Requests without an idempotency key wait a few milliseconds (or until enough events are waiting)
and are written together under one generated batch id. A request that carries an idempotency key is
written by its own ingest call with that key as the batch id, so a client's retry of the same
request is recognised by the store and never counted twice.

Every submit may carry a deadline (loop time): a request still waiting for its write then is taken
out of the queue (nothing of it is sent: `DeadlinePassed(stored="no")`), and a write still running
then is cancelled, which closes its Redis connection (`stored="unknown"`: Redis may have taken the
command in before it stalled). A merged write ends by the earliest deadline among its requests, so
every request learns its fate by its own deadline. A request whose client went away (`abandoned()`)
is taken out of the queue too, and a merged write all of whose clients went away is cancelled.

Each request learns how many of its events were stored and how many the store refused as late (their
window already sealed): the ingest function answers per service, and the late events of a service in
a merged write are the ones of its requests (in live mode a service's events in one write share one
window, so they are all stored or all late).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from anomalydesk.config import COLLECTOR_MERGE_STALL_SECONDS, COLLECTOR_MERGED_INFLIGHT, COLLECTOR_STALLED_MERGE_EVENTS
from anomalydesk.events import BusinessMetric, Metric
from anomalydesk.ingest.collector_metrics import CollectorMetrics
from anomalydesk.store.sink import IngestResult

Event = Metric | BusinessMetric
# writes events under a batch id and answers what the store did, per service
IngestFn = Callable[[list[Event], str], Awaitable[Mapping[str, IngestResult]]]
Abandoned = Callable[[], bool]
_ABANDON_POLL_SECONDS = 0.1  # how often a waiting request checks that its client is still there


class DeadlinePassed(Exception):
    """A request's events were not stored by its deadline (or its client went away).

    `stored` is "no" when nothing of it reached Redis, "unknown" when its write was cancelled after
    being sent (Redis may still apply it when it resumes; a batch id makes a retry of it a no-op).
    """

    def __init__(self, stored: Literal["no", "unknown"], reason: str = "deadline"):
        super().__init__(f"{reason}: stored={stored}")
        self.stored = stored
        self.reason = reason


@dataclass(eq=False)
class _Waiting:
    events: list[Event]
    future: asyncio.Future[Outcome]
    deadline: float
    abandoned: Abandoned | None
    queued: bool = True  # still in MicroBatcher._pending (False: taken into a write, or given up)


@dataclass(frozen=True)
class Outcome:
    """What happened to one request's events: how many are stored, how many were refused as late (their
    window already sealed), and whether it was a replay (its events were stored the first time)."""

    accepted: int
    late: int
    duplicate: bool


def own_outcome(events: list[Event], per_service: Mapping[str, IngestResult]) -> Outcome:
    """The outcome of a request written by its own ingest call.

    A replayed service answers 0 accepted, 0 late: its events were stored by the first call, and they
    count as accepted again (the store keeps no per-batch split to report).
    """
    late = sum(result.late for result in per_service.values())
    duplicate = any(result.duplicate_batches for result in per_service.values())
    return Outcome(len(events) - late, late, duplicate)


def shared_outcomes(requests: list[list[Event]], per_service: Mapping[str, IngestResult]) -> list[Outcome]:
    """The outcomes of requests merged into one ingest call: each service's late events are its requests'."""
    late_left = {service: result.late for service, result in per_service.items() if result.late}
    outcomes = []
    for events in requests:
        late = 0
        if late_left:  # rare (a sealed window in live mode): look at each event's service
            for event in events:
                left = late_left.get(event.service, 0)
                if left:
                    late_left[event.service] = left - 1
                    late += 1
        outcomes.append(Outcome(len(events) - late, late, False))
    return outcomes


class MicroBatcher:
    """Collects events from concurrent requests; `submit` returns once they are stored."""

    def __init__(
        self, ingest: IngestFn, metrics: CollectorMetrics, *, max_events: int, max_delay: float,
        max_inflight: int, stalled_max_events: int = COLLECTOR_STALLED_MERGE_EVENTS,
        stall_seconds: float = COLLECTOR_MERGE_STALL_SECONDS,
    ):
        self._ingest = ingest
        self._metrics = metrics
        self.max_events = max_events
        # while Redis is slow, merged writes stay small: a request that waits in the queue can still be
        # given up (never written), one inside a write cannot be recalled
        self.stalled_max_events = min(stalled_max_events, max_events)
        self.stall_seconds = stall_seconds
        self._stalled = False  # the last merged write failed or took longer than stall_seconds
        self._write_started: dict[asyncio.Task[None], float] = {}
        self._failed_writes: set[asyncio.Task[None]] = set()
        self.max_delay = max_delay
        self._inflight_limit = asyncio.Semaphore(max_inflight)
        self._pending: list[_Waiting] = []
        self.pending_events = 0
        self.inflight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._soon: asyncio.Handle | None = None
        self._last_arrival = -math.inf  # loop time of the latest request without an idempotency key
        self._due = False
        self._merged_inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writing: dict[asyncio.Task[None], list[_Waiting]] = {}

    async def submit(self, events: list[Event], batch_id: str | None = None, *, deadline: float | None = None,
                     abandoned: Abandoned | None = None) -> Outcome:
        """Store `events` by `deadline` (loop time; None: no limit); raises what the ingest call raised
        (e.g. redis ConnectionError), or DeadlinePassed."""
        loop = asyncio.get_running_loop()
        deadline = math.inf if deadline is None else deadline
        if batch_id is not None:  # a key makes a late completion harmless: no abandonment check
            return own_outcome(events, await self._call(events, batch_id, deadline))
        future: asyncio.Future[Outcome] = loop.create_future()
        waiting = _Waiting(events, future, deadline, abandoned)
        self._pending.append(waiting)
        self.pending_events += len(events)
        now = loop.time()
        steady = now - self._last_arrival <= self.max_delay
        self._last_arrival = now
        if self.pending_events >= self.merge_limit():
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
        return await self._wait(waiting)

    async def _wait(self, waiting: _Waiting) -> Outcome:
        """The request's outcome; out of the queue (and DeadlinePassed) at its deadline or when abandoned."""
        loop = asyncio.get_running_loop()
        future = waiting.future
        while not future.done():
            queued = waiting.queued
            if not queued:  # its write runs and ends by the earliest deadline of its requests
                step = None
            elif loop.time() >= waiting.deadline:
                self._unqueue(waiting)
                raise DeadlinePassed("no")
            else:
                step = waiting.deadline - loop.time()
            if waiting.abandoned is not None:
                if waiting.abandoned():
                    self._give_up(waiting)
                    raise DeadlinePassed("no" if queued else "unknown", "client went away")
                step = _ABANDON_POLL_SECONDS if step is None else min(step, _ABANDON_POLL_SECONDS)
            await asyncio.wait([future], timeout=step)
        return future.result()

    def merge_limit(self) -> int:
        """Events one merged write may take now: `max_events`, or `stalled_max_events` while Redis is slow
        (the last merged write failed or took over `stall_seconds`, or one in flight has been that long)."""
        if self._stalled:
            return self.stalled_max_events
        now = asyncio.get_running_loop().time()
        if any(now - started > self.stall_seconds for started in self._write_started.values()):
            return self.stalled_max_events
        return self.max_events

    def _unqueue(self, waiting: _Waiting) -> None:
        """Out of the queue: its events freed now, its entry skipped by the next flush (no list scan)."""
        waiting.queued = False
        self.pending_events -= len(waiting.events)
        waiting.events = []

    def _give_up(self, waiting: _Waiting) -> None:
        """An abandoned request: out of the queue, or its write cancelled once all its clients went away."""
        if waiting.queued:
            self._unqueue(waiting)
            return
        waiting.abandoned = _ALWAYS
        for task, group in self._writing.items():
            if waiting in group and all(w.abandoned is _ALWAYS for w in group):
                task.cancel()

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
        for w in self._pending:  # a client that left since its last check is not written for
            if w.queued and w.abandoned is not None and w.abandoned():
                self._unqueue(w)
                w.future.set_exception(DeadlinePassed("no", "client went away"))
        self._pending = [w for w in self._pending if w.queued]  # without those given up meanwhile
        if not self._pending:
            return
        taken, size, limit = 0, 0, self.merge_limit()
        while taken < len(self._pending) and (taken == 0 or size + len(self._pending[taken].events) <= limit):
            size += len(self._pending[taken].events)
            taken += 1
        waiting, self._pending = self._pending[:taken], self._pending[taken:]
        self.pending_events -= size
        for w in waiting:
            w.queued = False
        if self._pending:
            self._due = True  # the rest goes as soon as a write slot is free
        self._merged_inflight += 1
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._write_merged(waiting))
        self._tasks.add(task)
        self._writing[task] = waiting
        self._write_started[task] = loop.time()
        task.add_done_callback(self._merged_done)

    def _merged_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._writing.pop(task, None)
        started = self._write_started.pop(task, None)
        if started is not None:
            slow = asyncio.get_running_loop().time() - started > self.stall_seconds
            failed = task in self._failed_writes
            self._failed_writes.discard(task)
            self._stalled = slow or failed or task.cancelled()
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

    async def _write_merged(self, waiting: list[_Waiting]) -> None:
        merged = [event for w in waiting for event in w.events]
        try:
            per_service = await self._call(merged, f"c:{uuid.uuid4().hex}", min(w.deadline for w in waiting))
        except BaseException as err:  # every waiting request learns why, then the task ends
            self._failed_writes.add(asyncio.current_task())  # type: ignore[arg-type]  # Redis slow or away
            if isinstance(err, asyncio.CancelledError):  # all its clients went away
                err = DeadlinePassed("unknown", "client went away")
            for w in waiting:
                if not w.future.done():
                    w.future.set_exception(err)
                    w.future.exception()  # retrieved: an abandoned request no longer awaits it
            if not isinstance(err, Exception):
                raise
            return
        for w, outcome in zip(waiting, shared_outcomes([w.events for w in waiting], per_service), strict=True):
            if not w.future.done():
                w.future.set_result(outcome)

    async def _call(self, events: list[Event], batch_id: str, deadline: float = math.inf) -> Mapping[str, IngestResult]:
        """One ingest call, cancelled at `deadline` (DeadlinePassed says whether it had been sent)."""
        sent = False

        async def attempt() -> Any:
            nonlocal sent
            async with self._inflight_limit:
                sent = True
                self.inflight += 1
                started = time.perf_counter()
                try:
                    return await self._ingest(events, batch_id)
                finally:
                    self.inflight -= 1
                    self._metrics.redis_seconds.observe(time.perf_counter() - started)
                    self._metrics.batch_events.observe(len(events))

        if math.isinf(deadline):
            return await attempt()
        try:
            return await _by_deadline(asyncio.ensure_future(attempt()), deadline)
        except _Expired:
            self._metrics.deadlines_passed += 1
            raise DeadlinePassed("unknown" if sent else "no") from None


class _Expired(Exception):
    """The call did not end by its deadline and was cancelled."""


_RECANCEL_SECONDS = 0.05


async def _by_deadline(task: asyncio.Future[Any], deadline: float) -> Any:
    """`task`'s result; at `deadline` it is cancelled — again every 50 ms until it has ended.

    One cancellation is not enough: on Python 3.11 a cancellation that reaches redis-py inside its own
    read timeout can be lost (nested `asyncio.timeout`), redis-py then raises its retryable TimeoutError,
    the retry resends the command, and the write runs on past the deadline until the server answers
    (measured: a request under `CLIENT PAUSE` answered after 10 s and stored, against a 3 s deadline).
    Each cancellation that lands in a read closes that connection, so a paused server drops the command.
    A call that ends with a result despite the cancellation was stored: its result is returned.
    """
    loop = asyncio.get_running_loop()
    try:
        remaining = None if math.isinf(deadline) else max(0.0, deadline - loop.time())
        await asyncio.wait({task}, timeout=remaining)
        expired = not task.done()
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=_RECANCEL_SECONDS)
    except asyncio.CancelledError:  # our caller gave up (all its clients went away): so does the call
        while not task.done():
            task.cancel()
            try:
                await asyncio.wait({task}, timeout=_RECANCEL_SECONDS)
            except asyncio.CancelledError:
                continue
        raise
    if expired and (task.cancelled() or task.exception() is not None):
        raise _Expired
    return task.result()


def _always() -> bool:
    return True


_ALWAYS: Abandoned = _always
