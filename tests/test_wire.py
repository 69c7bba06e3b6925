"""The compiled decoder (`wire.decode_metrics`) answers only where the per-item path accepts every item, and
then with exactly its events; everything else is left to the per-item path (index, field, reason)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomalydesk.events import Metric, parse_batch
from anomalydesk.ingest.collector import BadBody, body_items, decode_body
from anomalydesk.wire import decode_metrics
from test_collector_property import ITEMS, VALID_METRICS, bodies

PLAIN = {"service": "orders", "endpoint": "GET:/orders/42", "status_code": 200, "response_time": 12}


def _per_item(body: bytes) -> tuple[int, list, list] | None:
    """What the collector did before: (items, valid, rejected), None for a body it answers 400/422 as a whole."""
    try:
        items = body_items(decode_body(body))
    except BadBody:
        return None
    valid, rejected = parse_batch(items)
    return len(items), valid, rejected


def _check_agrees(body: bytes) -> list[Metric] | None:
    typed = decode_metrics(body)
    if typed is not None:
        before = _per_item(body)
        assert before is not None, body[:300]
        count, valid, rejected = before
        assert rejected == [] and count == len(typed), body[:300]
        # repr tells 12 from 12.0 and 0.0 from -0.0: the same values of the same types, in order
        assert repr(typed) == repr(valid), body[:300]
    return typed


@settings(max_examples=1500, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=bodies())
def test_random_bodies_either_agree_with_the_per_item_path_or_are_left_to_it(body: bytes) -> None:
    _check_agrees(body)


@settings(max_examples=500, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(VALID_METRICS | ITEMS, max_size=20), wrapped=st.booleans(), by_orjson=st.booleans())
def test_mixed_batches_agree(items: list[Any], wrapped: bool, by_orjson: bool) -> None:
    value: Any = {"metrics": items} if wrapped else items
    body = orjson.dumps(value) if by_orjson and _orjson_can(value) else json.dumps(value, allow_nan=True).encode()
    _check_agrees(body)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(items=st.lists(VALID_METRICS, max_size=30), wrapped=st.booleans())
def test_valid_plain_batches_take_the_compiled_path(items: list[dict[str, Any]], wrapped: bool) -> None:
    body = json.dumps({"metrics": items} if wrapped else items).encode()
    assert _check_agrees(body) is not None


def _orjson_can(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return False
    return True


@pytest.mark.parametrize("body", [
    b"",
    b"\xef\xbb\xbf[]",  # a byte-order mark
    json.dumps([dict(PLAIN, status_code=200.0)]).encode(),  # accepted as 200 by the per-item path
    json.dumps([dict(PLAIN, response_time=float("nan"))]).encode(),  # a NaN literal
    json.dumps([dict(PLAIN, response_time=True)]).encode(),
    json.dumps([dict(PLAIN, response_time=-1)]).encode(),
    json.dumps([dict(PLAIN, response_time=10**30)]).encode(),
    json.dumps([dict(PLAIN, timestamp="2026-11-26T10:00:00Z")]).encode(),  # RFC 3339 text
    json.dumps([dict(PLAIN, timestamp=1795687200000)]).encode(),  # milliseconds
    json.dumps([dict(PLAIN, service="bad name")]).encode(),
    json.dumps([dict(PLAIN, endpoint="/orders", method="post")]).encode(),
    json.dumps([dict(PLAIN, metrics={"response_time": 3})]).encode(),
    json.dumps([dict(PLAIN, endpoint="GET:/a b")]).encode(),
    json.dumps([dict(PLAIN, endpoint="GET:/\ud800")]).encode(),  # a lone surrogate escape
    json.dumps([dict(PLAIN, tags={"a": 1})]).encode(),  # a field it does not know
    json.dumps([PLAIN, {"metric_name": "revenue", "value": 3}]).encode(),
    json.dumps({"metrics": [PLAIN], "events": [PLAIN]}).encode(),  # merged by the per-item path
    json.dumps(PLAIN).encode(),  # one event, not a batch
    json.dumps([PLAIN, "not an object"]).encode(),
    b"[" + json.dumps(PLAIN).encode() + b"] trailing",
])
def test_unusual_bodies_are_left_to_the_per_item_path(body: bytes) -> None:
    assert decode_metrics(body) is None


def test_what_it_takes_equals_what_the_per_item_path_gives() -> None:
    items = [PLAIN, dict(PLAIN, endpoint="get:/orders/7?x=1", response_time=-0.0, timestamp=1795687200),
             dict(PLAIN, service="pay-ments", timestamp=None, response_time=1.5e-300)]
    for body in (json.dumps(items).encode(), orjson.dumps({"metrics": items}), b" \n[]\t"):
        assert _check_agrees(body) is not None
    # duplicate keys: the last one counts, as in orjson and json
    body = b'[{"service": "a", "service": "orders", "endpoint": "GET:/x", "status_code": 201, "response_time": 3}]'
    assert _check_agrees(body) == [Metric("orders", "GET:/x", 201, 3.0, None)]
