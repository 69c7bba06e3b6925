"""The HTTP collector against a real redis-server: every endpoint, every answer, every bad-input class."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from anomalydesk.ingest.collector import CollectorSettings
from anomalydesk.ingest.collector_server import BackgroundCollector
from anomalydesk.store import admin, gears

pytestmark = pytest.mark.backends  # runs once per sketch backend (conftest.BOTH_BACKENDS)


def request(url: str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """One HTTP request; (status, lower-cased headers, JSON body or text)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
        head = {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()
    if head.get("content-type", "").startswith("application/json"):
        return response.status, head, json.loads(raw)
    return response.status, head, raw.decode()


def post(url: str, path: str, payload: Any, headers: dict[str, str] | None = None) -> tuple[int, dict, Any]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request(url, "POST", path, body, headers)


def metric(service: str = "orders", endpoint: str = "GET:/orders/42", status: int = 200,
           latency: float = 12.5, **extra: Any) -> dict[str, Any]:
    return {"service": service, "endpoint": endpoint, "status_code": status, "response_time": latency, **extra}


def events_total(r: redis.Redis) -> int:
    return admin.status(r)["events_total"]


@pytest.fixture()
def collector(redis_url: str) -> Iterator[BackgroundCollector]:
    with BackgroundCollector(CollectorSettings(port=0), redis_url) as running:
        yield running


# --- the ingest routes --------------------------------------------------------------------------
def test_one_event_is_stored_before_the_answer(collector: BackgroundCollector, r: redis.Redis) -> None:
    status, _, body = post(collector.url, "/metrics", metric())
    assert (status, body) == (202, {"accepted": 1, "rejected": []})
    assert events_total(r) == 1
    assert admin.status(r)["services"] == ["orders"]


@pytest.mark.parametrize("path", ["/metrics", "/api/metrics", "/api/batch"])
def test_array_and_wrapped_batches(collector: BackgroundCollector, r: redis.Redis, path: str) -> None:
    assert post(collector.url, path, [metric(), metric(status=503)])[2] == {"accepted": 2, "rejected": []}
    assert post(collector.url, path, {"metrics": [metric(), metric()]})[0] == 202
    assert events_total(r) == 4


def test_demo_sdk_shapes(collector: BackgroundCollector, r: redis.Redis) -> None:
    demo_metric = {"service": "user-service", "endpoint": "GET:/api/users",
                   "metrics": {"response_time": 150, "status_code": 200, "payload_size": 1024},
                   "timestamp": "2026-01-01T00:00:00Z"}
    assert post(collector.url, "/api/metrics", demo_metric)[0] == 202
    batch = {"metrics": [{"type": "application", **demo_metric},
                         {"type": "business", "metric_name": "login_count", "value": 1500}]}
    assert post(collector.url, "/api/batch", batch)[2] == {"accepted": 2, "rejected": []}
    kpi = {"metric_name": "daily_revenue", "value": 45000, "expected_range": [40000, 60000]}
    assert post(collector.url, "/api/business-metrics", kpi)[0] == 202
    status = admin.status(r)
    assert status["events_total"] == 4
    assert set(status["services"]) == {"user-service", "business"}


def test_business_route_takes_business_metrics_only(collector: BackgroundCollector, r: redis.Redis) -> None:
    payload = [{"metric_name": "checkout_value", "value": 129.0, "service": "orders"}, metric()]
    status, _, body = post(collector.url, "/business-metrics", payload)
    assert status == 200
    assert body["accepted"] == 1
    assert body["rejected"] == [{"index": 1, "field": "metric_name", "reason": body["rejected"][0]["reason"]}]
    assert events_total(r) == 1


def test_partly_valid_batch_stores_the_valid_items(collector: BackgroundCollector, r: redis.Redis) -> None:
    payload = [metric(), metric(status=700), metric(latency=-1), metric()]
    status, _, body = post(collector.url, "/metrics", payload)
    assert status == 200
    assert body["accepted"] == 2
    assert [(x["index"], x["field"]) for x in body["rejected"]] == [(1, "status_code"), (3 - 1, "response_time")]
    assert events_total(r) == 2
    wait_for_rejected(r, 2)


def wait_for_rejected(r: redis.Redis, expected: int) -> None:
    """The store's events_rejected is updated just after the answer: wait for it (bounded)."""
    deadline = time.monotonic() + 20
    while admin.status(r)["events_rejected"] != expected:
        assert time.monotonic() < deadline, admin.status(r)["events_rejected"]
        time.sleep(0.02)


def test_empty_batch_is_accepted_as_nothing(collector: BackgroundCollector, r: redis.Redis) -> None:
    assert post(collector.url, "/metrics", [])[:3:2] == (202, {"accepted": 0, "rejected": []})
    assert events_total(r) == 0


# --- bad input: one test per class --------------------------------------------------------------
BAD_ITEMS = {
    "status as string": (metric(status="200"), "status_code", "must be an integer, got a string '200'"),  # type: ignore[arg-type]
    "latency as string": (metric(latency="fast"), "response_time", "number"),  # type: ignore[arg-type]
    "latency as bool": (metric(latency=True), "response_time", "number"),
    "negative latency": (metric(latency=-3), "response_time", "negative"),
    "status below 100": (metric(status=99), "status_code", "between 100 and 599"),
    "status above 599": (metric(status=600), "status_code", "between 100 and 599"),
    "service too long": (metric(service="s" * 65), "service", "must match"),
    "service with a space": (metric(service="my service"), "service", "must match"),
    "service as number": (metric(service=7), "service", "string"),  # type: ignore[arg-type]
    "endpoint too long": (metric(endpoint="GET:/" + "a" * 300), "endpoint", "256"),
    "endpoint without method": (metric(endpoint="/orders"), "endpoint", "METHOD:/path"),
    "endpoint with a space": (metric(endpoint="GET:/a b"), "endpoint", "printable"),
    "metric name invalid": ({"metric_name": "a b", "value": 1}, "metric_name", "must match"),
    "range reversed": ({"metric_name": "x", "value": 1, "expected_range": [5, 1]}, "expected_range", "above"),
    "event not an object": ("hello", "event", "JSON object"),
    "timestamp in ms": (metric(timestamp=1_700_000_000_000), "timestamp", "milliseconds"),
    "service missing": ({k: v for k, v in metric().items() if k != "service"}, "service", "is required"),
    "service null": (metric(service=None), "service", "is required"),  # type: ignore[arg-type]
    "status missing": ({k: v for k, v in metric().items() if k != "status_code"}, "status_code", "is required"),
    "status with a fraction": (metric(status=200.5), "status_code", "must be an integer, got 200.5"),  # type: ignore[arg-type]
    "event null": (None, "event", "must be a JSON object, got null"),
    "timestamp zero": (metric(timestamp=0), "timestamp", "between 2000-01-01 and 2100-01-01"),
    "object with no event field": ({"foo": [1]}, "event", "has none of the fields of a metric"),
}

# what each reason must not say: a present field is not "required", a plain bad timestamp is no "milliseconds?"
NOT_SAID = {"status as string": "is required", "status with a fraction": "is required",
            "service null": "NoneType", "event null": "NoneType", "timestamp zero": "milliseconds"}


@pytest.mark.parametrize("case", sorted(BAD_ITEMS))
def test_invalid_item_is_named(collector: BackgroundCollector, r: redis.Redis, case: str) -> None:
    item, field, words = BAD_ITEMS[case]
    status, _, body = post(collector.url, "/metrics", [metric(), item])
    assert status == 200, body
    assert body["accepted"] == 1
    [rejected] = body["rejected"]
    assert (rejected["index"], rejected["field"]) == (1, field)
    assert words in rejected["reason"]
    assert case not in NOT_SAID or NOT_SAID[case] not in rejected["reason"]
    status, _, body = post(collector.url, "/metrics", [item])
    assert status == 422
    assert body["accepted"] == 0 and body["rejected"][0]["field"] == field
    assert events_total(r) == 1


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_refused_per_item(collector: BackgroundCollector, r: redis.Redis,
                                               literal: bytes) -> None:
    good = json.dumps(metric()).encode()
    bad = good.replace(b"12.5", literal)
    status, _, body = post(collector.url, "/metrics", b"[" + good + b"," + bad + b"]")
    assert status == 200
    assert body["rejected"] == [{"index": 1, "field": "response_time",
                                 "reason": "must be finite (NaN and Infinity are not numbers here)"}]
    assert events_total(r) == 1


@pytest.mark.parametrize(("body", "words"), [
    (b'[{"service": "orders",', "not valid JSON"),
    (b"{'service': 'orders'}", "not valid JSON"),
    (b"", "empty"),
    (b"   ", "empty"),
    (b"\xff\xfe\x00{", "not valid UTF-8"),
    (b'{"service": "caf\xe9"}', "not valid UTF-8"),
    (b"[" * 100_000, "nested too deeply"),
])
def test_unparseable_body_is_400(collector: BackgroundCollector, r: redis.Redis, body: bytes, words: str) -> None:
    status, _, answer = post(collector.url, "/metrics", body)
    assert status == 400
    assert answer["accepted"] == 0
    assert answer["rejected"][0]["index"] is None and answer["rejected"][0]["field"] == "body"
    assert words in answer["rejected"][0]["reason"]
    assert events_total(r) == 0


@pytest.mark.parametrize(("payload", "got"), [(5, "got 5"), ("text", "got a string 'text'"), (None, "got null"),
                                             (True, "got true"), ({"foo": [1]}, "none of the fields of a metric"),
                                             ({}, "empty object"), ({"metrics": None}, '"metrics" must be an array'),
                                             ({"events": {"service": "orders"}}, '"events" must be an array')])
@pytest.mark.parametrize("path", ["/metrics", "/business-metrics"])
def test_json_that_is_not_events_is_422(collector: BackgroundCollector, r: redis.Redis, payload: Any, got: str,
                                        path: str) -> None:
    status, _, body = post(collector.url, path, payload)
    assert status == 422
    assert body["accepted"] == 0 and len(body["rejected"]) == 1
    [rejected] = body["rejected"]
    assert (rejected["index"], rejected["field"]) == (None, "body")
    assert rejected["reason"].startswith('must be a metric object, an array of them, or {"metrics": [...]}')
    assert got in rejected["reason"] and "NoneType" not in rejected["reason"]
    assert admin.status(r)["services"] == []


def test_a_single_event_keeps_its_unknown_keys_ignored(collector: BackgroundCollector, r: redis.Redis) -> None:
    """Keys beside an event's fields are ignored (docs/collector.md), also `events` beside a whole event."""
    assert post(collector.url, "/metrics", metric(type="application", metadata={"a": 1}, events=3))[0] == 202
    assert post(collector.url, "/metrics", {"service": "orders"})[2]["rejected"] == [
        {"index": 0, "field": "endpoint", "reason": "is required (a string like GET:/users/{id})"}]
    assert events_total(r) == 1


def test_a_trailing_slash_is_the_same_endpoint(collector: BackgroundCollector, r: redis.Redis) -> None:
    from anomalydesk.store import sketches

    # an array of plain events takes the compiled decoder, a single event the per-item path: both normalise
    pair = [metric(endpoint="GET:/users/42/"), metric(endpoint="GET:/users/42")]
    assert post(collector.url, "/metrics", pair)[0] == 202
    alone = metric(endpoint="GET:/users/7/?page=2", timestamp="2026-01-01T00:00:00Z")
    assert post(collector.url, "/metrics", alone)[0] == 202
    assert post(collector.url, "/metrics", metric(endpoint="GET:/"))[0] == 202
    assert [name for name, _ in sketches.topk(r, "orders")] == ["GET:/users/{id}", "GET:/"]
    assert sketches.endpoint_counts(r, "orders", ["GET:/users/{id}"]) == {"GET:/users/{id}": 3}


def test_limits_answer_413(redis_url: str, r: redis.Redis) -> None:
    settings = CollectorSettings(port=0, max_body_bytes=4096, max_batch_events=3)
    with BackgroundCollector(settings, redis_url) as small:
        status, _, body = post(small.url, "/metrics", [metric()] * 4)
        assert status == 413 and "limit is 3" in body["rejected"][0]["reason"]
        status, _, body = post(small.url, "/metrics", b"[" + b" " * 5000 + b"]")
        assert status == 413 and "4096" in body["rejected"][0]["reason"]
        assert post(small.url, "/metrics", [metric()] * 3)[0] == 202
    assert events_total(r) == 3


# --- Redis down, retries, idempotency ---------------------------------------------------------------
def test_redis_down_is_503_with_retry_after_and_nothing_written(tmp_path) -> None:
    from conftest import RedisServer

    server = RedisServer(tmp_path / "redis")
    try:
        with BackgroundCollector(CollectorSettings(port=0), server.url) as running:
            assert post(running.url, "/metrics", metric())[0] == 202
            server.stop()
            status, headers, body = post(running.url, "/metrics", [metric(), metric()])
            assert status == 503
            assert int(headers["retry-after"]) > 0
            assert "Redis" in body["error"]
            health_status, _, health = request(running.url, "GET", "/health")
            assert health_status == 503 and health["redis"]["reachable"] is False
            server.start()  # empty again: no persistence in tests
            assert post(running.url, "/metrics", metric())[0] == 202
            client = server.client()
            assert events_total(client) == 1  # only the event sent after the restart
            client.close()
    finally:
        server.stop()


def test_idempotency_key_stores_a_retry_once(collector: BackgroundCollector, r: redis.Redis) -> None:
    headers = {"Idempotency-Key": "batch-0001"}
    first = post(collector.url, "/metrics", [metric(), metric(service="users")], headers)
    again = post(collector.url, "/metrics", [metric(), metric(service="users")], headers)
    assert first[0] == again[0] == 202
    assert again[2]["accepted"] == 2
    assert again[1].get("idempotent-replayed") == "true"
    assert events_total(r) == 2
    assert post(collector.url, "/metrics", metric(), {"Idempotency-Key": "batch-0002"})[0] == 202
    assert events_total(r) == 3
    partly = [metric(), metric(status=1)]
    assert post(collector.url, "/metrics", partly, {"Idempotency-Key": "batch-0003"})[0] == 200
    assert post(collector.url, "/metrics", partly, {"Idempotency-Key": "batch-0003"})[0] == 200
    assert events_total(r) == 4
    assert collector.collector.metrics.events_rejected == 1  # the replay's rejected item is not counted again
    wait_for_rejected(r, 1)
    bad = post(collector.url, "/metrics", metric(), {"Idempotency-Key": "x" * 200})
    assert bad[0] == 400 and bad[2]["rejected"][0]["field"] == "Idempotency-Key"


# --- GET routes, unknown routes ---------------------------------------------------------------------
def test_health(collector: BackgroundCollector) -> None:
    status, _, body = request(collector.url, "GET", "/health")
    assert status == 200
    assert body["status"] == "ok" and body["redis"]["reachable"] is True
    assert body["gears_version"] == str(gears.library_source()[1])
    assert body["backlog"] == {"pending_events": 0, "inflight_ingests": 0}


def test_prometheus_counts_what_happened(collector: BackgroundCollector) -> None:
    post(collector.url, "/metrics", [metric(), metric(status=42)])
    post(collector.url, "/metrics", b"{")
    status, headers, text = request(collector.url, "GET", "/prometheus")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = set(text.splitlines())
    assert 'anomalydesk_collector_requests_total{path="/metrics",code="200"} 1' in lines
    assert 'anomalydesk_collector_requests_total{path="/metrics",code="400"} 1' in lines
    assert "anomalydesk_collector_events_accepted_total 1" in lines
    assert "anomalydesk_collector_events_rejected_total 1" in lines
    assert "anomalydesk_collector_ingest_batch_events_count 1" in lines
    assert "anomalydesk_collector_redis_ingest_seconds_count 1" in lines
    assert "# TYPE anomalydesk_collector_redis_ingest_seconds histogram" in lines


def test_unknown_routes_and_methods_are_json_errors(collector: BackgroundCollector) -> None:
    assert request(collector.url, "GET", "/nope")[::2] == (404, {"error": "Not Found"})
    status, headers, body = request(collector.url, "GET", "/metrics")
    assert status == 405 and headers["allow"] == "POST" and "error" in body


def test_nothing_is_proxied(collector: BackgroundCollector, redis_server) -> None:
    """An absolute-form request for another host is answered here (404), never forwarded."""
    target = f"http://127.0.0.1:{redis_server.port}/"
    parts = urlsplit(collector.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{redis_server.port}\r\n"
                     "Connection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 404")
    assert b"redis" not in answer.lower().split(b"\r\n\r\n", 1)[1]


# --- late events (issue 20, step 5): not counted as accepted, reported as late ---------------------
def test_late_events_are_reported_apart_from_the_accepted_ones(collector: BackgroundCollector,
                                                               r: redis.Redis) -> None:
    from anomalydesk.config import key_prefix
    from anomalydesk.store.keys import Keys

    assert post(collector.url, "/metrics", metric(service="late-svc"))[0] == 202
    # the service's state says a window far ahead is sealed (as after the server's clock went back):
    # every live window of this service is now late
    r.hset(Keys(key_prefix()).state("late-svc"), "sealed", int(time.time()) + 10**6)
    before = events_total(r)
    status, _, body = post(collector.url, "/metrics", [metric(service="late-svc")] * 3)
    assert (status, body) == (200, {"accepted": 0, "rejected": [], "late": 3})
    status, _, body = post(collector.url, "/metrics", [metric(service="late-svc"), metric(service="fine"),
                                                       {"service": "fine"}], {"Idempotency-Key": "late-1"})
    assert status == 200
    assert body["accepted"] == 1 and body["late"] == 1 and [x["index"] for x in body["rejected"]] == [2]
    assert events_total(r) == before + 1


# --- a batch Redis refuses registers nothing ---------------------------------------------------------
def test_a_batch_redis_refuses_registers_no_service(tmp_path) -> None:
    """A request answered 500 because Redis refused its batch added its service to the service set (it
    was listed with 0 events) and took a retired service out of the retired set, with nothing stored:
    a service is registered only once a batch of it is stored. The direct sink's writer likewise."""
    from anomalydesk.config import key_prefix
    from anomalydesk.events import parse_metric
    from anomalydesk.store import sink
    from anomalydesk.store.keys import Keys
    from conftest import RedisServer

    server = RedisServer(tmp_path / "redis")
    client = server.client()
    retired = Keys(key_prefix()).retired
    try:
        with BackgroundCollector(CollectorSettings(port=0), server.url) as running:  # loads the library, sets up
            assert post(running.url, "/metrics", [metric(service="orders"), metric(service="old")])[0] == 202
        assert admin.retire_service(client, "old")
        # a user who may do everything but call functions: Redis refuses every ad_ingest, and only that
        password = "refused-0123456789"
        client.execute_command("ACL", "SETUSER", "no-fcall", "on", f">{password}", "~*", "&*", "+@all",
                               "-fcall", "-fcall_ro")
        url = f"redis://no-fcall:{password}@127.0.0.1:{server.port}/0"
        with BackgroundCollector(CollectorSettings(port=0), url) as refusing:
            for batch, headers in (([metric(service="newsvc")], {}), ([metric(service="old")], {}),
                                   ([metric(service="newsvc"), metric(service="old")], {}),
                                   ([metric(service="newsvc")], {"Idempotency-Key": "refused-1"})):
                status, _, body = post(refusing.url, "/metrics", batch, headers)
                assert status == 500, body
        with redis.Redis.from_url(url) as restricted, pytest.raises(sink.InvalidBatch):
            sink.ingest(restricted, [parse_metric(metric(service="newsvc")), parse_metric(metric(service="old"))])
        assert events_total(client) == 2
        assert admin.active_services(client) == ["orders"]
        assert client.smembers(retired) == {b"old"}
        # once stored, both are registered (and the retired one is active again), as before
        with BackgroundCollector(CollectorSettings(port=0), server.url) as running:
            assert post(running.url, "/metrics", [metric(service="newsvc"), metric(service="old")])[0] == 202
        assert admin.active_services(client) == ["newsvc", "old", "orders"]
        assert client.smembers(retired) == set()
        sink.ingest(client, [parse_metric(metric(service="direct"))])
        assert "direct" in admin.active_services(client)
    finally:
        client.close()
        server.stop()
