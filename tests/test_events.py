"""Event validation and endpoint normalisation (pure)."""

from __future__ import annotations

import math

import pytest

from anomalydesk.events import (
    BusinessMetric,
    EventError,
    Metric,
    normalize_endpoint,
    parse_batch,
    parse_business_metric,
    parse_metric,
    parse_timestamp,
)


@pytest.mark.parametrize(("raw", "normal"), [
    ("GET:/users/123", "GET:/users/{id}"),
    ("get:/users/456/orders/9?page=2#top", "GET:/users/{id}/orders/{id}"),
    ("DELETE:/o/550e8400-e29b-41d4-a716-446655440000", "DELETE:/o/{id}"),
    ("GET:/blob/5f2b9c0e7d1a4b3c", "GET:/blob/{id}"),  # long hex id with digits
    ("GET:/health", "GET:/health"),
    ("GET:/v2/cafe", "GET:/v2/cafe"),  # short words made of hex letters stay
    ("POST:/", "POST:/"),
    ("GET:/users/42/", "GET:/users/{id}"),  # a trailing slash is the same endpoint
    ("GET:/users/42//?page=2", "GET:/users/{id}"),
    ("GET:/a/b/", "GET:/a/b"),
    ("GET://", "GET:/"),  # the root stays the root
])
def test_endpoint_normalisation(raw: str, normal: str) -> None:
    assert normalize_endpoint(raw) == normal


@pytest.mark.parametrize(("raw", "reason"), [
    ("/users", "METHOD:/path"),
    ("GET:users", "METHOD:/path"),
    ("G3T:/x", "method must be letters"),
    ("GET:/a b", "printable ASCII"),
    ("GET:/" + "a" * 300, "longer than 256"),
])
def test_bad_endpoints_name_the_problem(raw: str, reason: str) -> None:
    with pytest.raises(EventError, match=reason) as err:
        normalize_endpoint(raw)
    assert err.value.field == "endpoint"


def test_metric_formats() -> None:
    base = {"service": "pay", "endpoint": "GET:/a/1", "status_code": 200, "response_time": 12}
    assert parse_metric(base) == Metric("pay", "GET:/a/{id}", 200, 12.0, None)
    nested = {"service": "pay", "endpoint": "/a", "method": "post",
              "metrics": {"status_code": 503, "response_time": 1.5}, "timestamp": "2026-11-26T10:00:00Z"}
    assert parse_metric(nested) == Metric("pay", "POST:/a", 503, 1.5, 1795687200.0)
    assert parse_metric(dict(base, status_code=404.0)).status == 404


@pytest.mark.parametrize(("change", "field", "reason"), [
    ({"service": "bad name"}, "service", "must match"),
    ({"service": "x" * 65}, "service", "must match"),
    ({"service": 7}, "service", "must be a string"),
    ({"status_code": 700}, "status_code", "between 100 and 599"),
    ({"status_code": True}, "status_code", "must be an integer"),
    ({"status_code": "200"}, "status_code", "must be an integer, got a string '200'"),
    ({"status_code": 200.5}, "status_code", "must be an integer, got 200.5"),
    ({"status_code": [200]}, "status_code", "must be an integer, got an array"),
    ({"status_code": None}, "status_code", "is required"),
    ({"service": None}, "service", "is required"),
    ({"endpoint": None}, "endpoint", "is required"),
    ({"endpoint": 7}, "endpoint", "must be a string like GET:/users/{id}, got 7"),
    ({"response_time": -1}, "response_time", "must not be negative"),
    ({"response_time": math.nan}, "response_time", "must be finite"),
    ({"response_time": math.inf}, "response_time", "must be finite"),
    ({"response_time": "fast"}, "response_time", "must be a number"),
    ({"response_time": None}, "response_time", "is required"),
    ({"timestamp": 1795687200000}, "timestamp", r"got 1795687200000 \(milliseconds\? divide by 1000\)"),
    ({"timestamp": 1795687200000000}, "timestamp", "microseconds"),
    ({"timestamp": "2026-11-26T10:00:00"}, "timestamp", "time zone"),
    ({"timestamp": "yesterday"}, "timestamp", "RFC 3339"),
    ({"metrics": [1]}, "metrics", "must be an object"),
])
def test_invalid_metrics_name_field_and_reason(change: dict, field: str, reason: str) -> None:
    event = {"service": "pay", "endpoint": "GET:/a", "status_code": 200, "response_time": 12, **change}
    with pytest.raises(EventError, match=reason) as err:
        parse_metric(event)
    assert err.value.field == field


@pytest.mark.parametrize("field", ["service", "endpoint", "status_code", "response_time"])
def test_a_missing_field_is_required_not_a_wrong_type(field: str) -> None:
    event = {"service": "pay", "endpoint": "GET:/a", "status_code": 200, "response_time": 12}
    del event[field]
    with pytest.raises(EventError, match=r"^[a-z_]+: is required") as err:
        parse_metric(event)
    assert err.value.field == field
    assert "NoneType" not in err.value.reason and "must be" not in err.value.reason


@pytest.mark.parametrize("value", [0, -1, 1.5, 946_684_799, 4_102_444_801, "1990-01-01T00:00:00Z"])
def test_a_timestamp_out_of_range_says_the_range_without_a_unit_hint(value: object) -> None:
    with pytest.raises(EventError, match="epoch seconds between 2000-01-01 and 2100-01-01") as err:
        parse_timestamp(value)
    assert "?" not in err.value.reason  # no "(milliseconds?)": the value is not one


@pytest.mark.parametrize(("item", "words"), [
    ({}, "is an empty object"),
    ({"foo": [1]}, "has none of the fields of a metric"),
    ({"type": "application", "metadata": {}}, "its keys: 'type', 'metadata'"),
])
def test_an_object_with_no_event_field_is_not_an_event(item: dict, words: str) -> None:
    with pytest.raises(EventError, match=words) as err:
        parse_metric(item)
    assert err.value.field == "event"


def test_business_metrics() -> None:
    assert parse_business_metric({"metric_name": "orders", "value": 3}) == BusinessMetric(
        "business", "orders", 3.0, None, None, None)
    ranged = parse_business_metric({"metric_name": "amount", "value": 9.5, "expected_range": [1, 10],
                                    "service": "pay", "timestamp": 1795687200})
    assert ranged == BusinessMetric("pay", "amount", 9.5, 1.0, 10.0, 1795687200.0)
    for bad, field in [({"value": 1}, "metric_name"), ({"metric_name": "a", "value": "x"}, "value"),
                       ({"metric_name": "a", "value": 1, "expected_range": [5, 1]}, "expected_range"),
                       ({"metric_name": "a", "value": 1, "expected_range": [1]}, "expected_range"),
                       ({"metric_name": "a"}, "value"), ({"metric_name": 7, "value": 1}, "metric_name")]:
        with pytest.raises(EventError) as err:
            parse_business_metric(bad)
        assert err.value.field == field


def test_batch_keeps_the_valid_items_and_lists_the_rest() -> None:
    valid, rejected = parse_batch([
        {"service": "pay", "endpoint": "GET:/a", "status_code": 200, "response_time": 1},
        {"service": "pay", "endpoint": "GET:/a", "status_code": 200, "response_time": -5},
        "not an object",
        {"metric_name": "orders", "value": 2, "service": "shop"},
    ])
    assert [type(v).__name__ for v in valid] == ["Metric", "BusinessMetric"]
    assert rejected == [
        {"index": 1, "field": "response_time", "reason": "must not be negative, got -5"},
        {"index": 2, "field": "event", "reason": "must be a JSON object, got a string 'not an object'"},
    ]
    assert parse_batch([None])[1] == [{"index": 0, "field": "event", "reason": "must be a JSON object, got null"}]


def test_timestamps() -> None:
    assert parse_timestamp(1795687200) == 1795687200.0
    assert parse_timestamp("2026-11-26T11:00:00+01:00") == 1795687200.0


def test_values_beyond_what_a_batch_can_sum_are_refused() -> None:
    with pytest.raises(EventError, match="within") as err:
        parse_business_metric({"metric_name": "revenue", "value": 1e300})
    assert err.value.field == "value"
    with pytest.raises(EventError, match="within") as err:
        parse_metric({"service": "a", "endpoint": "GET:/", "status_code": 200, "response_time": 2e9})
    assert err.value.field == "response_time"
