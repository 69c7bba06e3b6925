"""OTLP/HTTP metrics into the collector: the real OpenTelemetry SDK and exporter against a real Redis."""

from __future__ import annotations

import json
import math
import random
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import redis

from anomalydesk.config import SketchSettings
from anomalydesk.fingerprint import LAT_QUANTILE_REL_ERROR
from anomalydesk.ingest.collector import CollectorSettings
from anomalydesk.ingest.collector_server import BackgroundCollector
from anomalydesk.ingest.histograms import spread
from anomalydesk.ingest.otlp import otlp_state_key, unknown_key
from anomalydesk.store import fingerprints, sketches
from anomalydesk.store.admin import setup
from anomalydesk.store.keys import Keys
from anomalydesk.store.sink import seal_all

SEMCONV_BOUNDS_S = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]
SERVICE = "shop-api"
KEYS = Keys()


@pytest.fixture()
def collector(redis_url: str) -> Iterator[BackgroundCollector]:
    with BackgroundCollector(CollectorSettings(port=0), redis_url) as running:
        yield running


class ToyService:
    """A small http.server app instrumented by hand the way OTel HTTP instrumentations do it."""

    def __init__(self, collector_url: str):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource

        exporter = OTLPMetricExporter(endpoint=f"{collector_url}/v1/metrics")  # protobuf over HTTP
        # exports only when the test flushes (the SDK default would be every 60 s)
        self.reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
        self.provider = MeterProvider(resource=Resource.create({"service.name": SERVICE}),
                                      metric_readers=[self.reader])
        meter = self.provider.get_meter("toy")
        self.duration = meter.create_histogram(
            "http.server.request.duration", unit="s", description="Duration of HTTP server requests.",
            explicit_bucket_boundaries_advisory=SEMCONV_BOUNDS_S)
        self.recorded: list[tuple[str, int, float]] = []  # (endpoint, status, seconds) as the app saw them
        toy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                started = time.perf_counter()
                path, _, query = self.path.partition("?")
                delay_ms = float(query.split("=", 1)[1]) if query.startswith("delay=") else 0.0
                time.sleep(delay_ms / 1000)
                if path.startswith("/items/"):
                    route, status = "/items/{id}", 404 if path.endswith("/0") else 200
                elif path == "/checkout":
                    route, status = "/checkout", 500 if delay_ms > 60 else 200
                else:
                    route, status = "/", 200
                # recorded before answering, so a flush after the answer always includes this request
                seconds = time.perf_counter() - started
                toy.duration.record(seconds, {"http.route": route, "http.request.method": "GET",
                                              "http.response.status_code": status, "url.scheme": "http"})
                toy.recorded.append((f"GET:{route}", status, seconds))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def get(self, path: str) -> None:
        try:
            urllib.request.urlopen(self.url + path, timeout=10).read()
        except urllib.error.HTTPError:
            pass

    def flush(self) -> None:
        assert self.provider.force_flush(timeout_millis=30_000), "the OTLP exporter did not export"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.provider.shutdown()


def _open_window(r: redis.Redis) -> int:
    found = [int(k.decode().rsplit(":", 1)[1]) for k in r.scan_iter(match=f"{KEYS.tag(SERVICE)}:w:*")
             if k.decode().rsplit(":", 2)[1] == "w"]
    assert len(found) == 1, f"expected exactly one open window after an export, found {found}"
    return found[0]


def _quantile_interval(values_ms: np.ndarray, q: float) -> tuple[float, float, float]:
    """(true quantile, low, high): the OTLP bucket holding it, widened by the engine's resolution."""
    ordered = np.sort(values_ms)
    true = float(ordered[math.ceil(q * len(ordered)) - 1])
    bounds = [b * 1000 for b in SEMCONV_BOUNDS_S]
    j = int(np.searchsorted(bounds, true, side="left"))  # bucket j holds (b[j-1], b[j]]
    low = bounds[j - 1] if j > 0 else float(ordered[0])
    high = bounds[j] if j < len(bounds) else float(ordered[-1])
    tol = 1 + LAT_QUANTILE_REL_ERROR
    return true, low / tol, high * tol


def test_real_sdk_requests_land_in_the_services_fingerprints(collector: BackgroundCollector,
                                                              r: redis.Redis) -> None:
    toy = ToyService(collector.url)
    rng = random.Random(7)
    landed: dict[int, list[tuple[str, int, float]]] = {}
    try:
        # three exports of a cumulative histogram: the second carries only what is new, the third nothing
        for batch in (40, 25, 0):
            start = len(toy.recorded)
            for i in range(batch):
                delay = rng.choice([0, 1, 3, 8, 20, 40, 70])
                toy.get(f"/items/{i % 5}?delay={delay}" if i % 2 else f"/checkout?delay={delay}")
            toy.flush()
            if batch:
                landed.setdefault(_open_window(r), []).extend(toy.recorded[start:])
    finally:
        toy.close()
    assert len(toy.recorded) == 65
    assert r.hlen(otlp_state_key(KEYS, SERVICE)) >= 4  # per-series cumulative state lives in Redis

    assert r.smembers(KEYS.services) == {SERVICE.encode()}  # service.name decides, nothing else
    seal_all(r, now=time.time() + 3 * 5)
    fps = {fp.window: fp for fp in fingerprints.read(r, SERVICE)}
    assert sum(fp.get("requests") for fp in fps.values()) == 65
    for window, requests in landed.items():
        fp = fps[window]
        assert fp.get("requests") == len(requests)
        assert fp.get("rate_4xx") * len(requests) == pytest.approx(sum(1 for _, s, _ in requests if 400 <= s < 500))
        assert fp.get("rate_5xx") * len(requests) == pytest.approx(sum(1 for _, s, _ in requests if s >= 500))
        ms = np.array([sec * 1000 for _, _, sec in requests])
        assert fp.get("latency_mean_ms") == pytest.approx(ms.mean(), rel=1e-6)  # the exported sum, exactly
        for q, name in ((0.5, "latency_p50_ms"), (0.95, "latency_p95_ms"), (0.99, "latency_p99_ms")):
            true, low, high = _quantile_interval(ms, q)
            assert low <= fp.get(name) <= high, f"{name}: {fp.get(name):.2f} ms outside [{low:.2f}, {high:.2f}] " \
                                                f"(true {true:.2f} ms)"
    counts = sketches.endpoint_counts(r, SERVICE, ["GET:/items/{id}", "GET:/checkout"])
    assert counts["GET:/items/{id}"] >= sum(1 for e, _, _ in toy.recorded if e == "GET:/items/{id}")
    assert sum(counts.values()) == 65  # CMS estimates never undercount; with two items they are exact here


def _otlp_json(points: list[dict], name: str = "http.server.request.duration", service: str = "json-svc",
               temporality: int = 2, extra_metrics: list[dict] | None = None) -> bytes:
    metric = {"name": name, "unit": "s", "histogram": {"aggregationTemporality": temporality, "dataPoints": points}}
    return json.dumps({"resourceMetrics": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeMetrics": [{"metrics": [metric, *(extra_metrics or [])]}],
    }]}).encode()


def _point(start_s: float, t_s: float, counts: list[int], bounds: list[float], total_s: float,
           status: int = 200, route: str = "/pay") -> dict:
    return {
        "startTimeUnixNano": str(int(start_s * 1e9)), "timeUnixNano": str(int(t_s * 1e9)),
        "count": str(sum(counts)), "sum": total_s, "bucketCounts": [str(c) for c in counts],
        "explicitBounds": bounds,
        "attributes": [{"key": "http.route", "value": {"stringValue": route}},
                       {"key": "http.request.method", "value": {"stringValue": "POST"}},
                       {"key": "http.response.status_code", "value": {"intValue": str(status)}}],
    }


def _post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    req = urllib.request.Request(f"{url}/v1/metrics", data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _requests(r: redis.Redis, service: str) -> int:
    seal_all(r, now=time.time() + 15)
    return int(sum(fp.get("requests") for fp in fingerprints.read(r, service)))


def test_json_cumulative_deltas_reset_and_repeats(collector: BackgroundCollector, r: redis.Redis) -> None:
    t0 = time.time() - 30
    bounds = [0.01, 0.1, 1.0]
    assert _post(collector.url, _otlp_json([_point(t0, t0 + 10, [5, 3, 2, 0], bounds, 1.0)]))[0] == 200
    assert _post(collector.url, _otlp_json([_point(t0, t0 + 20, [9, 4, 2, 1], bounds, 3.5)]))[0] == 200
    # the same report again (an exporter retry) adds nothing
    assert _post(collector.url, _otlp_json([_point(t0, t0 + 20, [9, 4, 2, 1], bounds, 3.5)]))[0] == 200
    # the process restarted: a new start time, counts from zero again
    assert _post(collector.url, _otlp_json([_point(t0 + 25, t0 + 28, [1, 1, 0, 0], bounds, 0.05)]))[0] == 200
    assert _requests(r, "json-svc") == 10 + 6 + 2


def test_delta_temporality_and_sparse_windows_are_no_data(collector: BackgroundCollector, r: redis.Redis) -> None:
    now = time.time()
    body = _otlp_json([_point(now - 5, now, [2, 2, 0, 0], [0.01, 0.1, 1.0], 0.1, status=503)], temporality=1)
    assert _post(collector.url, body)[0] == 200
    first = _open_window_of(r, "json-svc")
    seal_all(r, now=(first + 4) * 5)
    fps = fingerprints.read(r, "json-svc")
    assert [fp.window for fp in fps] == [first, first + 1, first + 2, first + 3]
    assert fps[0].get("requests") == 4 and fps[0].get("rate_5xx") == 1.0 and not fps[0].no_data
    assert all(fp.no_data for fp in fps[1:])  # between two reports: no data, not zero traffic


def _open_window_of(r: redis.Redis, service: str) -> int:
    keys = [k.decode() for k in r.scan_iter(match=f"{KEYS.tag(service)}:w:*")]
    return min(int(k.rsplit(":", 1)[1]) for k in keys if k.rsplit(":", 2)[1] == "w")


def test_unknown_metrics_are_counted_and_reported(collector: BackgroundCollector, r: redis.Redis) -> None:
    now = time.time()
    other = {"name": "process.cpu.time", "sum": {"aggregationTemporality": 2, "isMonotonic": True, "dataPoints": [
        {"asDouble": v, "timeUnixNano": str(int(now * 1e9))} for v in (1.5, 2.5)]}}
    no_status = _point(now - 5, now, [1, 0, 0, 0], [0.01, 0.1, 1.0], 0.001)
    no_status["attributes"] = no_status["attributes"][:2]
    body = _otlp_json([_point(now - 5, now, [1, 0, 0, 0], [0.01, 0.1, 1.0], 0.001), no_status],
                      extra_metrics=[other])
    status, answer = _post(collector.url, body)
    assert status == 200
    assert answer["partialSuccess"]["rejectedDataPoints"] == "3"
    assert "process.cpu.time (2)" in answer["partialSuccess"]["errorMessage"]
    assert "http.response.status_code" in answer["partialSuccess"]["errorMessage"]
    assert int(r.hget(unknown_key(KEYS), "process.cpu.time")) == 2
    assert int(r.hget(KEYS.stats, "otlp_points_unknown")) == 2
    assert int(r.hget(KEYS.stats, "otlp_points_rejected")) == 1
    assert _requests(r, "json-svc") == 1


def test_mapping_file_turns_a_counter_into_a_kpi(redis_url: str, r: redis.Redis, tmp_path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    mapping = tmp_path / "map.toml"
    mapping.write_text('[[kpi]]\nmetric = "shop.orders"\nname = "orders"\nexpected_range = [10, 100]\n')
    monkeypatch.setenv("ANOMALYDESK_METRIC_MAP", str(mapping))
    t0 = time.time() - 20
    def counter(value: int, t: float) -> dict:
        return {"name": "shop.orders", "sum": {"aggregationTemporality": 2, "isMonotonic": True, "dataPoints": [
            {"asInt": str(value), "startTimeUnixNano": str(int(t0 * 1e9)), "timeUnixNano": str(int(t * 1e9))}]}}
    setup(r, SketchSettings(window_seconds=1))  # live windows: wait for the next one between the reports
    with BackgroundCollector(CollectorSettings(port=0), redis_url) as running:
        assert _post(running.url, _otlp_json([], extra_metrics=[counter(40, t0 + 5)], service="shop"))[0] == 200
        w1 = _open_window_of(r, "shop")
        while int(r.time()[0]) <= w1:
            time.sleep(0.05)
        status, answer = _post(running.url, _otlp_json([], extra_metrics=[counter(45, t0 + 10)], service="shop"))
    assert status == 200 and answer == {}
    seal_all(r, now=time.time() + 15)
    kpis = [fp.kpis for fp in fingerprints.read(r, "shop") if fp.kpis]
    assert kpis[0] == {"orders": 40.0}
    assert kpis[1] == {"orders": 5.0}  # the increase since the last report, out of [10, 100]
    assert [fp.get("kpi_out_of_range") for fp in fingerprints.read(r, "shop") if fp.kpis] == [0, 1]


def test_bad_bodies_are_refused_with_the_reason(collector: BackgroundCollector) -> None:
    status, answer = _post(collector.url, b"\x0a\xff\xff", "application/x-protobuf")
    assert status == 400 and "protobuf" in answer["message"]
    status, answer = _post(collector.url, b"{not json", "application/json")
    assert status == 400 and "OTLP/JSON" in answer["message"]
    status, answer = _post(collector.url, b"a,b", "text/csv")
    assert status == 415 and "Content-Type" in answer["message"]


def test_api_keys_apply_to_otlp(redis_url: str) -> None:
    key = "k" * 24
    with BackgroundCollector(CollectorSettings(port=0, api_keys=[key]), redis_url) as running:
        assert _post(running.url, _otlp_json([]))[0] == 401


def test_spread_keeps_counts_below_every_bound() -> None:
    bounds = [5.0, 10.0, 25.0, 50.0]
    hist = spread(bounds, [3, 7, 11, 13, 2], min_ms=1.2, max_ms=80.0)
    assert sum(hist.values()) == 36
    from anomalydesk.fingerprint import bucket_bounds
    for bound, below in zip(bounds, (3, 10, 21, 34), strict=True):
        inside = sum(c for b, c in hist.items() if bucket_bounds(b)[1] <= bound)
        straddling = sum(c for b, c in hist.items() if bucket_bounds(b)[0] < bound < bucket_bounds(b)[1])
        assert inside <= below <= inside + straddling


def test_gzip_bodies_are_accepted(collector: BackgroundCollector, r: redis.Redis) -> None:
    import gzip

    now = time.time()
    body = gzip.compress(_otlp_json([_point(now - 5, now, [3, 0, 0, 0], [0.01, 0.1, 1.0], 0.01)], temporality=1))
    req = urllib.request.Request(f"{collector.url}/v1/metrics", data=body, method="POST",
                                 headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    assert _requests(r, "json-svc") == 3


def test_redis_down_is_503_and_the_retry_counts_once(tmp_path) -> None:
    from conftest import RedisServer

    server = RedisServer(tmp_path / "redis")
    try:
        with BackgroundCollector(CollectorSettings(port=0), server.url) as running:
            t0 = time.time() - 30
            bounds = [0.01, 0.1, 1.0]
            assert _post(running.url, _otlp_json([_point(t0, t0 + 10, [2, 0, 0, 0], bounds, 0.01)]))[0] == 200
            server.stop()
            retry = _otlp_json([_point(t0, t0 + 20, [5, 1, 0, 0], bounds, 0.1)])
            status, answer = _post(running.url, retry)
            assert status == 503 and "Redis" in answer["message"]
            server.start()  # empty again (no persistence): the lost state makes the next point a new series
            r = server.client()
            time.sleep(6)  # past the writer's cached settings: the collector must notice the empty server
            assert _post(running.url, retry)[0] == 200
            assert _post(running.url, retry)[0] == 200  # the exporter's retry of the same body: no double count
            assert _requests(r, "json-svc") == 6  # t0 is 30 s ago: a fresh series counts from its start
    finally:
        server.stop()


def test_a_malformed_histogram_point_is_rejected_alone(collector: BackgroundCollector, r: redis.Redis) -> None:
    now = time.time()
    bad = _point(now - 5, now, [1, 1, 0, 0], [0.01, 0.1, 1.0], 0.01, route="/bad")
    bad["count"] = "5"  # buckets add up to 2
    body = _otlp_json([bad, _point(now - 5, now, [2, 1, 0, 0], [0.01, 0.1, 1.0], 0.02)], temporality=1)
    status, answer = _post(collector.url, body)
    assert status == 200
    assert answer["partialSuccess"]["rejectedDataPoints"] == "1"
    assert "add up to 2, not count=5" in answer["partialSuccess"]["errorMessage"]
    assert _requests(r, "json-svc") == 3


def test_older_semconv_names_in_milliseconds(collector: BackgroundCollector, r: redis.Redis) -> None:
    now = time.time()
    point = {"timeUnixNano": str(int(now * 1e9)), "startTimeUnixNano": str(int((now - 5) * 1e9)), "count": "4",
             "sum": 400.0, "bucketCounts": ["0", "4", "0"], "explicitBounds": [50.0, 200.0],
             "attributes": [{"key": "http.route", "value": {"stringValue": "/orders/{id}"}},
                            {"key": "http.method", "value": {"stringValue": "GET"}},
                            {"key": "http.status_code", "value": {"intValue": "404"}}]}
    body = json.dumps({"resourceMetrics": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "legacy"}}]},
        "scopeMetrics": [{"metrics": [{"name": "http.server.duration", "unit": "ms", "histogram": {
            "aggregationTemporality": 1, "dataPoints": [point]}}]}]}]}).encode()
    assert _post(collector.url, body)[0] == 200
    seal_all(r, now=time.time() + 15)
    fp = next(fp for fp in fingerprints.read(r, "legacy") if fp.get("requests"))
    assert fp.get("requests") == 4 and fp.get("rate_4xx") == 1.0
    assert fp.get("latency_mean_ms") == pytest.approx(100.0)  # milliseconds, not seconds × 1000
    assert 50 / 1.05 <= fp.get("latency_p50_ms") <= 200 * 1.05
    assert sketches.endpoint_counts(r, "legacy", ["GET:/orders/{id}"]) == {"GET:/orders/{id}": 4}
