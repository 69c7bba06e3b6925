"""Property: thousands of random and malformed payloads never get a 5xx or crash the collector, and every
event the collector says it accepted is in Redis exactly once."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomalydesk.ingest.collector import BUSINESS_PATHS, METRIC_PATHS, CollectorSettings
from anomalydesk.ingest.collector_server import BackgroundCollector
from anomalydesk.store import admin
from test_collector import post, request

SERVICES = st.one_of(st.sampled_from(["orders", "users", "pay-ments", "a.b_c"]), st.text(max_size=70),
                     st.integers(), st.none())
ENDPOINTS = st.one_of(
    st.sampled_from(["GET:/orders/42", "POST:/users", "get:/a/b?x=1", "DELETE:/x/0123456789abcdef"]),
    st.builds(lambda m, p: f"{m}:/{p}", st.sampled_from(["GET", "PUT", "X1"]), st.text(max_size=300)),
    st.text(max_size=40), st.integers(),
)
NUMBERS = st.one_of(st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True),
                    st.booleans(), st.text(max_size=5), st.none())
STATUSES = st.one_of(st.integers(0, 1000), NUMBERS)
JSONISH = st.recursive(st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=20)),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                    max_size=4),
                       max_leaves=10)


@st.composite
def metric_events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {}
    for key, strategy in (("service", SERVICES), ("endpoint", ENDPOINTS), ("status_code", STATUSES),
                          ("response_time", NUMBERS), ("timestamp", NUMBERS)):
        present = draw(st.booleans()) if key == "timestamp" else draw(st.integers(0, 9)) < 8
        if present:
            event[key] = draw(strategy)
    if draw(st.integers(0, 9)) == 0:
        event["metrics"] = draw(st.dictionaries(st.sampled_from(["response_time", "status_code", "x"]), NUMBERS))
    return event


@st.composite
def business_events(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.one_of(st.sampled_from(["revenue", "a:b/c"]), st.text(max_size=130)))
    event: dict[str, Any] = {"metric_name": name, "value": draw(NUMBERS)}
    if draw(st.booleans()):
        event["expected_range"] = draw(st.one_of(st.lists(NUMBERS, max_size=3), NUMBERS))
    if draw(st.booleans()):
        event["service"] = draw(SERVICES)
    return event


VALID_METRICS = st.builds(
    lambda service, path, status, latency: {"service": service, "endpoint": f"GET:/{path}",
                                            "status_code": status, "response_time": latency},
    st.sampled_from(["orders", "users", "payments"]), st.sampled_from(["a", "b/1", "c/2"]),
    st.integers(100, 599), st.floats(0, 1e6),
)
ITEMS = st.one_of(VALID_METRICS, metric_events(), business_events(), JSONISH)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Valid-looking JSON (NaN literals included), truncated or corrupted JSON, or raw bytes."""
    kind = draw(st.sampled_from(["array", "array", "wrapped", "single", "garbled", "bytes"]))
    items = draw(st.lists(ITEMS, max_size=12))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    value: Any = items if kind in ("array", "garbled") else {"metrics": items} if kind == "wrapped" else (
        items[0] if items else {})
    text = json.dumps(value, allow_nan=True).encode()
    if kind == "garbled" and text:
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.binary(max_size=4)) + text[cut + draw(st.integers(0, 3)):]
    return text


def test_random_payloads_never_5xx_and_are_counted_exactly_once(redis_url: str, r: redis.Redis) -> None:
    check_random_payloads(redis_url, r, examples=400)


@pytest.mark.slow
def test_many_random_payloads(redis_url: str, r: redis.Redis) -> None:
    check_random_payloads(redis_url, r, examples=4000)


def check_random_payloads(redis_url: str, r: redis.Redis, examples: int) -> None:
    """Send `examples` random bodies (each up to 12 items) and compare accepted totals with Redis."""
    accepted = 0
    answers: dict[int, int] = {}
    with BackgroundCollector(CollectorSettings(port=0, rate_limit=0), redis_url) as collector:

        @settings(max_examples=examples, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(body=bodies(), path=st.sampled_from([*METRIC_PATHS, *BUSINESS_PATHS]),
               keyed=st.booleans())
        def send(body: bytes, path: str, keyed: bool) -> None:
            nonlocal accepted
            headers = {"Idempotency-Key": uuid.uuid4().hex} if keyed else {}
            status, _, answer = post(collector.url, path, body, headers)
            answers[status] = answers.get(status, 0) + 1
            assert status < 500, (status, answer, body[:300])
            assert status in (200, 202, 400, 413, 422), status
            assert isinstance(answer["accepted"], int) and isinstance(answer["rejected"], list)
            if status in (200, 202):
                accepted += answer["accepted"]
                for rejected in answer["rejected"]:
                    assert set(rejected) == {"index", "field", "reason"} and rejected["reason"]
            else:
                assert answer["accepted"] == 0

        send()
        assert request(collector.url, "GET", "/health")[0] == 200  # still alive
    # the generator reaches every kind of answer, and many events were stored
    assert min(answers.get(code, 0) for code in (200, 202, 400, 422)) >= examples // 40, answers
    assert accepted >= examples // 5  # values beyond ±1e12 (and latencies beyond 1e9 ms) are refused too
    assert admin.status(r)["events_total"] == accepted
