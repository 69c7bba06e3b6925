"""The collector's micro-batcher (pure unit tests with a recording ingest function)."""

from __future__ import annotations

import asyncio

import pytest
import redis

from anomalydesk.events import Metric
from anomalydesk.ingest.collector_metrics import CollectorMetrics
from anomalydesk.ingest.microbatch import MicroBatcher, Outcome, own_outcome, shared_outcomes
from anomalydesk.store.sink import IngestResult

EVENT = Metric("orders", "GET:/a", 200, 1.0, None)


class Recorder:
    """An ingest function that records its calls and can be held or made to fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail: Exception | None = None

    async def __call__(self, events: list, batch_id: str) -> dict[str, IngestResult]:
        self.calls.append((len(events), batch_id))
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return {}  # nothing late


def batcher(ingest: Recorder, max_events: int = 1000) -> MicroBatcher:
    return MicroBatcher(ingest, CollectorMetrics(), max_events=max_events, max_delay=0.002, max_inflight=8)


async def test_requests_arriving_during_a_write_are_merged() -> None:
    ingest = Recorder()
    mb = batcher(ingest)
    ingest.release.clear()  # hold the first write so the next requests pile up
    first = asyncio.create_task(mb.submit([EVENT]))
    await asyncio.sleep(0)
    later = [asyncio.create_task(mb.submit([EVENT] * 2)) for _ in range(30)]
    await asyncio.sleep(0.01)
    ingest.release.set()
    outcomes = await asyncio.gather(first, *later)
    assert [o.accepted for o in outcomes] == [1] + [2] * 30
    assert sum(n for n, _ in ingest.calls) == 61
    assert len(ingest.calls) <= 3  # 31 requests, at most 3 ingest calls
    assert len({batch for _, batch in ingest.calls}) == len(ingest.calls)  # a fresh batch id per call


async def test_size_limit_splits_batches() -> None:
    ingest = Recorder()
    mb = batcher(ingest, max_events=10)
    ingest.release.clear()
    tasks = [asyncio.create_task(mb.submit([EVENT] * 4)) for _ in range(12)]
    await asyncio.sleep(0.02)
    ingest.release.set()
    await asyncio.gather(*tasks)
    assert sum(n for n, _ in ingest.calls) == 48
    assert max(n for n, _ in ingest.calls) <= 10  # whole requests, never more than the limit


async def test_keyed_requests_are_written_alone_with_their_key() -> None:
    ingest = Recorder()
    mb = batcher(ingest)
    await asyncio.gather(mb.submit([EVENT], "k:a"), mb.submit([EVENT] * 3, "k:b"))
    assert sorted(ingest.calls) == [(1, "k:a"), (3, "k:b")]


async def test_a_failed_write_fails_every_waiting_request() -> None:
    ingest = Recorder()
    ingest.fail = redis.ConnectionError("down")
    mb = batcher(ingest)
    results = await asyncio.gather(*(mb.submit([EVENT]) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, redis.ConnectionError) for r in results)
    ingest.fail = None
    assert (await mb.submit([EVENT])).accepted == 1
    with pytest.raises(redis.ConnectionError):
        ingest.fail = redis.ConnectionError("down again")
        await mb.submit([EVENT], "k:x")


async def test_drain_writes_what_waits() -> None:
    ingest = Recorder()
    mb = batcher(ingest)
    ingest.release.clear()
    tasks = [asyncio.create_task(mb.submit([EVENT])) for _ in range(4)]
    await asyncio.sleep(0)
    ingest.release.set()
    await mb.drain()
    assert all(t.done() for t in tasks)
    assert sum(n for n, _ in ingest.calls) == 4


async def test_a_lone_request_is_written_in_the_next_loop_turn() -> None:
    ingest = Recorder()
    mb = MicroBatcher(ingest, CollectorMetrics(), max_events=1000, max_delay=30.0, max_inflight=8)
    task = asyncio.create_task(mb.submit([EVENT]))
    for _ in range(5):  # loop turns, not time: a 30 s linger would still be waiting
        await asyncio.sleep(0)
    assert task.done() and [n for n, _ in ingest.calls] == [1]


async def test_a_steady_stream_shares_writes_while_redis_is_idle() -> None:
    ingest = Recorder()
    mb = MicroBatcher(ingest, CollectorMetrics(), max_events=1000, max_delay=30.0, max_inflight=8)
    await mb.submit([EVENT])  # lone: written at once
    second = asyncio.create_task(mb.submit([EVENT] * 2))  # right after the first: traffic is steady
    for _ in range(5):
        await asyncio.sleep(0)
    assert not second.done() and len(ingest.calls) == 1  # lingers for the next request
    third = asyncio.create_task(mb.submit([EVENT] * 3))
    await asyncio.sleep(0)
    await mb.drain()  # instead of waiting out the linger
    assert (await second).accepted == 2 and (await third).accepted == 3
    assert [n for n, _ in ingest.calls] == [1, 5]  # the second and third requests: one write


# --- deadlines and abandoned requests (issue 19) ---------------------------------------------------
async def test_a_request_still_queued_at_its_deadline_is_never_written() -> None:
    from anomalydesk.ingest.microbatch import DeadlinePassed

    ingest = Recorder()
    mb = MicroBatcher(ingest, CollectorMetrics(), max_events=1000, max_delay=0.002, max_inflight=1)
    ingest.release.clear()  # the only ingest slot stays busy
    loop = asyncio.get_running_loop()
    stuck = [asyncio.create_task(mb.submit([EVENT], deadline=loop.time() + 0.1)) for _ in range(2)]
    await asyncio.sleep(0.01)
    late = asyncio.create_task(mb.submit([EVENT] * 3, deadline=loop.time() + 0.05))
    with pytest.raises(DeadlinePassed) as queued:
        await late
    assert queued.value.stored == "no" and mb.pending_events == 0
    for task in stuck:  # the running write is cancelled at the earliest deadline of its requests
        with pytest.raises(DeadlinePassed) as running:
            await task
        assert running.value.stored in ("no", "unknown")
    ingest.release.set()
    await mb.drain()
    assert all(n != 3 for n, _ in ingest.calls)  # the request that timed out in the queue never went out


async def test_an_abandoned_request_leaves_the_queue_and_a_write_whose_clients_all_left_is_cancelled() -> None:
    from anomalydesk.ingest.microbatch import DeadlinePassed

    ingest = Recorder()
    mb = batcher(ingest)
    ingest.release.clear()
    gone = {"first": False, "queued": False}
    first = asyncio.create_task(mb.submit([EVENT], abandoned=lambda: gone["first"]))
    await asyncio.sleep(0.01)  # written (and held)
    second = asyncio.create_task(mb.submit([EVENT] * 2, abandoned=lambda: gone["queued"]))
    await asyncio.sleep(0.01)
    third = asyncio.create_task(mb.submit([EVENT] * 4, abandoned=lambda: gone["queued"]))
    await asyncio.sleep(0.01)
    assert len(ingest.calls) == 2  # two merged writes run (the limit), the third request waits
    gone["queued"] = True  # the clients of the second and third requests close their connections
    for task in (second, third):
        with pytest.raises(DeadlinePassed, match="client went away"):
            await task
    assert mb.pending_events == 0 and len(ingest.calls) == 2  # the waiting one was dropped, never written
    gone["first"] = True
    with pytest.raises(DeadlinePassed):
        await first
    await asyncio.sleep(0)
    assert mb.inflight == 0  # its write was cancelled: nothing keeps the Redis call alive


# --- late events: told apart from the accepted ones (issue 20, step 5) -------------------------------
def test_a_merged_write_gives_each_service_its_own_late_events() -> None:
    orders, users = Metric("orders", "GET:/a", 200, 1.0, None), Metric("users", "GET:/b", 200, 1.0, None)
    requests = [[orders, orders], [users], [orders, users, users]]
    per_service = {"orders": IngestResult(accepted=0, late=3), "users": IngestResult(accepted=3)}
    assert shared_outcomes(requests, per_service) == [Outcome(0, 2, False), Outcome(1, 0, False),
                                                      Outcome(2, 1, False)]
    assert shared_outcomes(requests, {}) == [Outcome(2, 0, False), Outcome(1, 0, False), Outcome(3, 0, False)]


def test_an_own_write_reports_late_and_replayed_services() -> None:
    events = [EVENT] * 4
    assert own_outcome(events, {"orders": IngestResult(accepted=1, late=3)}) == Outcome(1, 3, False)
    # a replay: the store answers 0/0 for the service; its events were stored by the first call
    assert own_outcome(events, {"orders": IngestResult(duplicate_batches=1)}) == Outcome(4, 0, True)


async def test_late_events_reach_the_requests_of_a_merged_write() -> None:
    users = Metric("users", "GET:/b", 200, 1.0, None)

    calls = []

    async def ingest(events: list, batch_id: str) -> dict[str, IngestResult]:
        calls.append(len(events))
        n_orders = sum(e.service == "orders" for e in events)
        return {"orders": IngestResult(late=n_orders), "users": IngestResult(accepted=len(events) - n_orders)}

    mb = MicroBatcher(ingest, CollectorMetrics(), max_events=1000, max_delay=0.002, max_inflight=8)
    outcomes = await asyncio.gather(mb.submit([EVENT, users]), mb.submit([users]), mb.submit([EVENT]))
    assert calls == [4]  # one merged write
    assert outcomes == [Outcome(1, 1, False), Outcome(1, 0, False), Outcome(0, 1, False)]


async def test_merged_writes_stay_small_while_redis_is_slow_and_grow_again_after_a_quick_one() -> None:
    ingest = Recorder()
    mb = MicroBatcher(ingest, CollectorMetrics(), max_events=1000, max_delay=0.002, max_inflight=8,
                      stalled_max_events=10, stall_seconds=0.05)
    assert mb.merge_limit() == 1000
    ingest.release.clear()
    first = asyncio.create_task(mb.submit([EVENT] * 4))
    await asyncio.sleep(0.1)  # the write in flight has taken longer than stall_seconds
    assert mb.merge_limit() == 10
    held = [asyncio.create_task(mb.submit([EVENT] * 4)) for _ in range(12)]
    await asyncio.sleep(0.01)
    ingest.release.set()
    assert [o.accepted for o in await asyncio.gather(first, *held)] == [4] * 13
    sizes = [n for n, _ in ingest.calls]
    # sent while the slow write was in flight, and right after it ended slow: at most 10 events each; a
    # quick write then ends the stall and the rest goes in one
    assert sizes[0] == 4 and sum(sizes) == 52 and sizes[1] <= 10 and sizes[2] <= 10, sizes
    assert mb.merge_limit() == 1000

    ingest.calls.clear()
    ingest.release.clear()
    again = asyncio.create_task(mb.submit([EVENT] * 4))
    await asyncio.sleep(0.01)  # in flight, but not for long
    more = [asyncio.create_task(mb.submit([EVENT] * 4)) for _ in range(12)]
    await asyncio.sleep(0.01)
    ingest.release.set()
    await asyncio.gather(again, *more)
    assert max(n for n, _ in ingest.calls) > 10  # merged beyond the stalled size

    ingest.fail = redis.ConnectionError("down")
    with pytest.raises(redis.ConnectionError):
        await mb.submit([EVENT])
    assert mb.merge_limit() == 10  # a failed merged write counts as slow
