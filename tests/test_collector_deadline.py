"""The collector through a stalled Redis (CLIENT PAUSE on a real redis-server): every request is
answered by its deadline, a cancelled keyless write is not stored afterwards, a keyed one counts once,
/health says 503 while Redis does not answer, and the pending-work bounds answer 503 at once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from anomalydesk.ingest.collector import CollectorSettings
from anomalydesk.ingest.collector_server import BackgroundCollector
from anomalydesk.store import admin
from test_collector import metric, post, request

DEADLINE = 0.5  # short, so the default suite stays fast; the production default is config's 3 s
MARGIN = 1.5  # answered within DEADLINE + MARGIN: the deadline is behaviour, the margin is scheduling


def events_total(r: redis.Redis) -> int:
    return admin.status(r)["events_total"]


@pytest.fixture()
def collector(redis_url: str) -> Iterator[BackgroundCollector]:
    settings = CollectorSettings(port=0, deadline_seconds=DEADLINE, health_deadline_seconds=DEADLINE)
    with BackgroundCollector(settings, redis_url) as running:
        assert post(running.url, "/metrics", metric())[0] == 202  # store prepared, connection warm
        yield running


def timed_post(url: str, payload: Any, headers: dict[str, str] | None = None) -> tuple[int, dict, Any, float]:
    started = time.monotonic()
    status, head, body = post(url, "/metrics", payload, headers)
    return status, head, body, time.monotonic() - started


def paused(r: redis.Redis, seconds: float) -> None:
    r.execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")


def test_keyless_write_cancelled_at_the_deadline_is_not_stored_after_the_pause(
    collector: BackgroundCollector, r: redis.Redis,
) -> None:
    before = events_total(r)
    paused(r, 2.5)
    status, head, body, took = timed_post(collector.url, [metric()] * 20)
    assert status == 503 and took < DEADLINE + MARGIN, (status, took, body)
    assert head["retry-after"] == "2" and body["stored"] == "unknown", body  # sent, then cancelled
    time.sleep(2.5)  # the pause ends: the postponed command died with its connection
    assert events_total(r) == before
    assert post(collector.url, "/metrics", [metric()] * 20)[0] == 202
    assert events_total(r) == before + 20


def test_keyed_write_answered_503_counts_once_with_its_retry(collector: BackgroundCollector, r: redis.Redis) -> None:
    before = events_total(r)
    paused(r, 2.0)
    headers = {"Idempotency-Key": "batch-7"}
    status, _head, body, took = timed_post(collector.url, [metric()] * 5, headers)
    assert status == 503 and took < DEADLINE + MARGIN and body["stored"] == "unknown", (status, took, body)
    assert "same Idempotency-Key" in body["error"]
    time.sleep(2.0)
    status, _head, body = post(collector.url, "/metrics", [metric()] * 5, headers)
    assert status == 202 and body["accepted"] == 5
    assert post(collector.url, "/metrics", [metric()] * 5, headers)[0] == 202  # a third time: a replay
    assert events_total(r) == before + 5


def test_health_is_503_within_the_deadline_while_paused_and_200_once_redis_answers(
    collector: BackgroundCollector, r: redis.Redis,
) -> None:
    paused(r, 2.0)
    started = time.monotonic()
    status, head, body = request(collector.url, "GET", "/health")
    took = time.monotonic() - started
    assert status == 503 and took < DEADLINE + MARGIN, (status, took, body)
    assert body["status"] == "unavailable" and head["retry-after"] == "2"
    assert "did not answer" in body["redis"]["error"]
    r.execute_command("CLIENT", "UNPAUSE")
    status, _head, body = request(collector.url, "GET", "/health")
    assert status == 200 and body["redis"]["reachable"] is True


def test_pending_events_bound_answers_503_at_once_and_nothing_of_it_is_stored(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    settings = CollectorSettings(port=0, deadline_seconds=2.0, max_pending_events=10)
    with BackgroundCollector(settings, redis_url) as running:
        assert post(running.url, "/metrics", metric())[0] == 202
        before = events_total(r)
        paused(r, 1.5)
        holder: dict[str, Any] = {}
        first = threading.Thread(target=lambda: holder.update(answer=timed_post(running.url, [metric()] * 8)))
        first.start()
        time.sleep(0.3)  # the first request's 8 events wait for Redis
        status, head, body, took = timed_post(running.url, [metric()] * 5)
        assert status == 503 and body["stored"] == "no" and head["retry-after"] == "2", body
        assert took < 1.0  # refused at once, not after the deadline
        assert "limit 10" in body["error"]
        first.join()
        assert holder["answer"][0] == 202  # the pause ended within its deadline: stored
        assert events_total(r) == before + 8
        metrics = request(running.url, "GET", "/prometheus")[2]
        assert "anomalydesk_collector_overloaded_total 1" in metrics
    r.close()


def test_pending_bytes_bound_refuses_bodies_beyond_it(redis_url: str) -> None:
    body = json.dumps([metric()] * 50).encode()
    settings = CollectorSettings(port=0, max_pending_bytes=len(body) - 1)
    with BackgroundCollector(settings, redis_url) as running:
        status, _head, answer = post(running.url, "/metrics", body)
        assert status == 503 and answer["stored"] == "no" and "body bytes" in answer["error"]
        assert post(running.url, "/metrics", [metric()])[0] == 202  # a smaller body fits
