"""GET /openapi.json describes what the collector really answers: every documented (route, status) is
produced by a real request here, and every real answer validates against the document's schema."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from anomalydesk.ingest.collector import BUSINESS_PATHS, METRIC_PATHS, CollectorSettings
from anomalydesk.ingest.collector_server import BackgroundCollector
from conftest import free_port
from test_collector import metric, post, request

KEY = "openapi-key-0123456789"
LIMITED = "openapi-limited-0123456789"
INGEST_PATHS = (*METRIC_PATHS, *BUSINESS_PATHS)


def validate(instance: Any, schema: dict[str, Any], doc: dict[str, Any], where: str = "$") -> None:
    """The subset of JSON Schema the document uses; AssertionError naming the place that differs."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return validate(instance, doc["components"]["schemas"][name], doc, where)
    if "oneOf" in schema:
        matches = 0
        for option in schema["oneOf"]:
            try:
                validate(instance, option, doc, where)
                matches += 1
            except AssertionError:
                pass
        assert matches >= 1, f"{where}: matches none of oneOf"
        return None
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        checks = {"object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
                  "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
                  "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
                  "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
                  "null": lambda v: v is None}
        assert any(checks[n](instance) for n in names), f"{where}: {instance!r} is not {names}"
    if "enum" in schema:
        assert instance in schema["enum"], f"{where}: {instance!r} not in {schema['enum']}"
    if isinstance(instance, dict):
        for key in schema.get("required", []):
            assert key in instance, f"{where}: missing {key!r}"
        for key, sub in schema.get("properties", {}).items():
            if key in instance:
                validate(instance[key], sub, doc, f"{where}.{key}")
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            validate(item, schema["items"], doc, f"{where}[{i}]")
    if isinstance(instance, int | float) and not isinstance(instance, bool) and "minimum" in schema:
        assert instance >= schema["minimum"], f"{where}: below minimum"
    if isinstance(instance, str) and "pattern" in schema:
        assert re.search(schema["pattern"], instance), f"{where}: does not match {schema['pattern']}"
    return None


@pytest.fixture()
def collectors(redis_url: str) -> Iterator[tuple[BackgroundCollector, ...]]:
    up = BackgroundCollector(CollectorSettings(port=0, api_keys=[KEY], max_batch_events=50), redis_url)
    limited = BackgroundCollector(CollectorSettings(port=0, api_keys=[LIMITED], rate_limit=0.001, rate_burst=1),
                                  redis_url)
    down = BackgroundCollector(CollectorSettings(port=0), f"redis://127.0.0.1:{free_port()}/0")
    with up, limited, down:
        yield up, limited, down


def test_openapi_matches_real_answers(collectors: tuple[BackgroundCollector, ...]) -> None:
    up, limited, down = collectors
    status, _, doc = request(up.url, "GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    auth = {"Authorization": f"Bearer {KEY}"}
    answers: list[tuple[str, str, int, dict, Any]] = []

    def record(path: str, method: str, result: tuple[int, dict, Any]) -> None:
        answers.append((path, method, *result))

    business = {"metric_name": "checkout_value", "value": 10.0}
    limited_auth = {"Authorization": f"Bearer {LIMITED}"}
    record("/metrics", "post", post(limited.url, "/metrics", metric(), limited_auth))
    for path in INGEST_PATHS:
        good = business if path in BUSINESS_PATHS else metric()
        bad = {"metric_name": "no spaces allowed", "value": 1}
        record(path, "post", post(up.url, path, good, auth))
        record(path, "post", post(up.url, path, [good, bad], auth))
        record(path, "post", post(up.url, path, b"{not json", auth))
        record(path, "post", post(up.url, path, good))
        record(path, "post", post(up.url, path, [good] * 51, auth))
        record(path, "post", post(up.url, path, [bad], auth))
        record(path, "post", post(limited.url, path, good, limited_auth))
    with ThreadPoolExecutor(len(INGEST_PATHS)) as pool:  # Redis unreachable: each waits for its retries
        downs = {path: pool.submit(post, down.url, path, business if path in BUSINESS_PATHS else metric())
                 for path in INGEST_PATHS}
        for path, future in downs.items():
            record(path, "post", future.result())
    record("/health", "get", request(up.url, "GET", "/health"))
    record("/health", "get", request(down.url, "GET", "/health"))
    record("/prometheus", "get", request(up.url, "GET", "/prometheus", headers=auth))
    record("/prometheus", "get", request(up.url, "GET", "/prometheus"))
    record("/openapi.json", "get", request(up.url, "GET", "/openapi.json"))

    seen = set()
    for path, method, status, headers, body in answers:
        operation = doc["paths"][path][method]
        assert str(status) in operation["responses"], f"{method} {path} answered undocumented {status}"
        spec = operation["responses"][str(status)]
        for header in spec.get("headers", {}):
            assert header.lower() in headers, f"{method} {path} {status}: no {header} header"
        content_type = headers["content-type"].split(";")[0]
        assert content_type in spec["content"], f"{method} {path} {status}: {content_type}"
        schema = spec["content"][content_type].get("schema")
        if schema is not None:
            validate(body, schema, doc, f"{method} {path} {status}")
        seen.add((path, method, str(status)))
    documented = {(path, method, status) for path, item in doc["paths"].items()
                  for method, op in item.items() for status in op["responses"]}
    assert documented - seen == set(), "documented answers never produced by a real request"
