"""The Python SDK (clients/python, `anomalydesk_client`) end to end against a real collector and Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
import wsgiref.simple_server
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from anomalydesk_client import (
    AnomalyASGIMiddleware,
    AnomalyClient,
    AnomalyClientError,
    AnomalyWSGIMiddleware,
    AsyncAnomalyClient,
    QueueFull,
)

from anomalydesk.config import SketchSettings
from anomalydesk.fingerprint import FEATURE_NAMES
from anomalydesk.ingest.collector import Collector, CollectorSettings
from anomalydesk.ingest.collector_server import BackgroundCollector, StoreBinding
from anomalydesk.store import admin, fingerprints, sink
from test_collector import events_total, request
from test_collector_security import make_self_signed

REQUESTS = FEATURE_NAMES.index("requests")


@pytest.fixture()
def collector(redis_url: str) -> Iterator[BackgroundCollector]:
    with BackgroundCollector(CollectorSettings(port=0), redis_url) as running:
        yield running


def queued(client: Any) -> list[dict[str, Any]]:
    """The events waiting in a client's queue (without sending them)."""
    return [json.loads(raw) for raw in list(client.queue._items)]


def test_sdk_does_not_import_the_main_package() -> None:
    code = ("import sys, anomalydesk_client; "
            "bad = [m for m in sys.modules if m == 'anomalydesk' or m.startswith('anomalydesk.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_event_sent_is_counted_in_its_windows_fingerprint(redis_url: str, r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=1))
    with (BackgroundCollector(CollectorSettings(port=0), redis_url) as running,
          AnomalyClient(running.url, service="sdk-py") as client):
        for i in range(7):
            client.send_metric(f"GET:/items/{i}", 200 if i else 503, 10.0 + i)
        client.send_business_metric("basket_value", 42.0, expected_range=[10, 100], service="sdk-py")
        client.flush()
        assert client.stats.sent == 8 and client.stats.failed == 0
    assert events_total(r) == 8
    deadline = time.monotonic() + 20
    while True:
        sink.seal_all(r)
        prints = fingerprints.read(r, "sdk-py")
        if sum(fp.vector[REQUESTS] for fp in prints) >= 7 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sum(fp.vector[REQUESTS] for fp in prints) == 7


def test_retry_after_a_lost_reply_is_not_double_counted(redis_url: str, r: redis.Redis) -> None:
    """The collector wrote the batch but the client saw a 503: the retry carries the same key."""
    calls: list[str] = []

    class LosesTheFirstReply(StoreBinding):
        async def ingest(self, events: list, batch_id: str | None) -> Any:
            result = await super().ingest(events, batch_id)
            calls.append(batch_id)
            if len(calls) == 1:
                raise redis.ConnectionError("connection lost after the write (simulated)")
            return result

    def make() -> tuple[Collector, StoreBinding]:
        binding = LosesTheFirstReply(redis_url)
        return Collector(binding, CollectorSettings(port=0)), binding

    with BackgroundCollector(CollectorSettings(port=0), make=make) as running:
        client = AnomalyClient(running.url, service="retry", backoff=0.01, backoff_max=0.05)
        answer = client.send_batch([{"endpoint": "GET:/a", "status_code": 200, "response_time": 1.0}] * 5)
        client.close()
        metrics = running.collector.metrics  # type: ignore[union-attr]
    assert answer == {"accepted": 5, "rejected": []}
    assert len(calls) == 2 and calls[0] == calls[1]  # same batch id both times
    assert metrics.requests[("/metrics", 503)] == 1 and metrics.requests[("/metrics", 202)] == 1
    assert events_total(r) == 5


def test_retry_while_redis_is_down(tmp_path: Path) -> None:
    from conftest import RedisServer

    server = RedisServer(tmp_path / "redis")
    try:
        with BackgroundCollector(CollectorSettings(port=0), server.url) as running:
            client = AnomalyClient(running.url, service="outage", max_retries=100, backoff=0.05,
                                   backoff_max=0.2, flush_interval=3600)
            server.stop()
            for _ in range(3):
                client.send_metric("GET:/pay", 200, 5.0)
            flusher = threading.Thread(target=client.flush)
            flusher.start()
            metrics = running.collector.metrics  # type: ignore[union-attr]
            deadline = time.monotonic() + 30
            while metrics.requests[("/metrics", 503)] < 1:
                assert time.monotonic() < deadline, "the client never met the 503"
                time.sleep(0.02)
            server.start()
            flusher.join(timeout=60)
            assert not flusher.is_alive()
            client.close()
            assert client.stats.sent == 3 and client.stats.failed == 0
            check = server.client()
            assert events_total(check) == 3
            check.close()
    finally:
        server.stop()


def test_4xx_is_not_retried(collector: BackgroundCollector) -> None:
    client = AnomalyClient(collector.url, service="bad")
    with pytest.raises(AnomalyClientError) as caught:
        client.send_batch([{"endpoint": "GET:/a", "status_code": 1000, "response_time": 1.0}])
    client.close()
    assert caught.value.status == 422
    assert caught.value.body["rejected"][0]["field"] == "status_code"
    assert collector.collector.metrics.requests[("/metrics", 422)] == 1  # type: ignore[union-attr]


@pytest.mark.parametrize("with_valid", [False, True], ids=["alone", "beside-a-valid-one"])
def test_an_invalid_event_is_rejected_alone_or_beside_a_valid_one(
        collector: BackgroundCollector, caplog: pytest.LogCaptureFixture, with_valid: bool) -> None:
    """Alone, the collector answers 422 ("none of the 1 events is valid"); it was counted `failed`
    ("safe to send again yourself") and logged without its reason."""
    client = AnomalyClient(collector.url, service="invalid", flush_interval=3600)
    client.send_metric("GET:/q", 700, 1.0)
    if with_valid:
        client.send_metric("GET:/q", 200, 1.0)
    with caplog.at_level(logging.WARNING, logger="anomalydesk_client"):
        client.close()
    s = client.stats
    assert (s.sent, s.rejected, s.failed, s.unknown, s.dropped) == (int(with_valid), 1, 0, 0, 0)
    assert collector.collector.metrics.requests[("/metrics", 200 if with_valid else 422)] == 1  # type: ignore[union-attr]
    assert "collector rejected 1 event(s), first: {'index': 0, 'field': 'status_code'" in caplog.text
    assert "got 700" in caplog.text and "gave up" not in caplog.text


@pytest.mark.parametrize("use_httpx", [False, True], ids=["stdlib", "httpx"])
def test_async_client_counts_an_all_invalid_batch_as_rejected(collector: BackgroundCollector,
                                                               use_httpx: bool) -> None:
    async def main() -> AsyncAnomalyClient:
        async with AsyncAnomalyClient(collector.url, service="aio-invalid", flush_interval=3600,
                                      use_httpx=use_httpx) as client:
            await client.send_metric("GET:/q", 700, 1.0)
            await client.send_metric("nope", 200, 1.0)
        return client

    s = asyncio.run(main()).stats
    assert (s.sent, s.rejected, s.failed, s.unknown, s.dropped) == (0, 2, 0, 0, 0)


def test_an_all_invalid_batch_sent_at_exit_is_rejected(collector: BackgroundCollector) -> None:
    script = textwrap.dedent(f"""
        import asyncio, atexit, dataclasses, json
        from anomalydesk_client import AsyncAnomalyClient
        # registered before the client's hook, so it runs after it
        atexit.register(lambda: print(json.dumps(dataclasses.asdict(client.stats))))
        client = AsyncAnomalyClient({collector.url!r}, service="exit-invalid", flush_interval=3600)
        async def main():
            await client.send_metric("GET:/q", 700, 1.0)
        asyncio.run(main())
    """)  # the client is not closed: its atexit hook sends the invalid event
    run = subprocess.run([sys.executable, "-c", script], check=True, timeout=60, capture_output=True, text=True)
    assert json.loads(run.stdout) == {"sent": 0, "rejected": 1, "dropped": 0, "failed": 0, "unknown": 0}
    assert "collector rejected 1 event(s)" in run.stderr


def test_a_refusal_that_is_not_about_the_events_stays_failed(redis_url: str) -> None:
    """401 (wrong key) and 413 (too many events; its body names the whole body, index null) are not
    a verdict on the events: `failed`, even when the events are invalid too."""
    settings = CollectorSettings(port=0, api_keys=["k" * 20], max_batch_events=2)
    with BackgroundCollector(settings, redis_url) as running:
        wrong_key = AnomalyClient(running.url, "w" * 20, service="refused", flush_interval=3600)
        wrong_key.send_metric("GET:/q", 700, 1.0)
        wrong_key.close()
        too_many = AnomalyClient(running.url, "k" * 20, service="refused", flush_interval=3600)
        for _ in range(3):
            too_many.send_metric("GET:/q", 700, 1.0)
        too_many.close()
        metrics = running.collector.metrics  # type: ignore[union-attr]
    assert metrics.requests[("/metrics", 401)] == 1 and metrics.requests[("/metrics", 413)] == 1
    assert (wrong_key.stats.failed, wrong_key.stats.rejected) == (1, 0)
    assert (too_many.stats.failed, too_many.stats.rejected) == (3, 0)


def test_overflow_drop_oldest_counts_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    client = AnomalyClient("http://127.0.0.1:9", service="s", max_queue=3, batch_size=100, flush_interval=3600)
    with caplog.at_level(logging.WARNING, logger="anomalydesk_client"):
        for i in range(5):
            client.send_metric("GET:/x", 200, float(i))
    assert [e["response_time"] for e in queued(client)] == [2.0, 3.0, 4.0]
    assert client.stats.dropped == 2
    assert any("queue full" in rec.message and "dropped the oldest" in rec.message for rec in caplog.records)
    client.queue.take(10)
    client.close()


def test_overflow_raise_keeps_the_queue() -> None:
    client = AnomalyClient("http://127.0.0.1:9", service="s", max_queue=2, batch_size=100,
                           flush_interval=3600, overflow="raise")
    client.send_metric("GET:/x", 200, 1.0)
    client.send_metric("GET:/x", 200, 2.0)
    with pytest.raises(QueueFull):
        client.send_metric("GET:/x", 200, 3.0)
    assert [e["response_time"] for e in queued(client)] == [1.0, 2.0]
    with pytest.raises(ValueError, match="overflow"):
        AnomalyClient("http://127.0.0.1:9", overflow="block")
    with pytest.raises(ValueError, match="cannot be sent as JSON"):
        client.send_metric("GET:/x", 200, float("nan"))
    client.queue.take(10)
    client.close()


def test_queued_events_are_sent_at_exit(collector: BackgroundCollector, r: redis.Redis) -> None:
    script = textwrap.dedent(f"""
        import asyncio
        from anomalydesk_client import AnomalyClient, AsyncAnomalyClient
        client = AnomalyClient({collector.url!r}, service="exit-sync", flush_interval=3600)
        for _ in range(5):
            client.send_metric("GET:/x", 200, 1.0)
        aclient = AsyncAnomalyClient({collector.url!r}, service="exit-async", flush_interval=3600)
        async def main():
            for _ in range(4):
                await aclient.send_metric("GET:/y", 201, 2.0)
        asyncio.run(main())
    """)  # neither client is closed: the atexit hooks must send
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    status = admin.status(r)
    assert status["events_total"] == 9
    assert set(status["services"]) == {"exit-sync", "exit-async"}


def test_timer_context_manager_and_decorators(collector: BackgroundCollector, r: redis.Redis) -> None:
    client = AnomalyClient(collector.url, service="timed", flush_interval=3600)
    with client.timer("GET:/ok"):
        pass
    with pytest.raises(RuntimeError), client.timer("GET:/boom"):
        raise RuntimeError("boom")
    with client.timer("GET:/missing") as t:
        t.status_code = 404

    @client.timer("POST:/sync")
    def work(x: int) -> int:
        return x * 2

    @client.timer("POST:/async")
    async def awork(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    assert work(2) == 4 and work(3) == 6
    assert asyncio.run(awork(1)) == 2
    events = queued(client)
    assert [(e["endpoint"], e["status_code"]) for e in events] == [
        ("GET:/ok", 200), ("GET:/boom", 500), ("GET:/missing", 404), ("POST:/sync", 200), ("POST:/sync", 200),
        ("POST:/async", 200)]
    assert all(e["response_time"] >= 0 and e["service"] == "timed" for e in events)
    client.close()
    assert events_total(r) == 6


async def asgi_app(scope: dict, receive: Any, send: Any) -> None:
    if scope["path"] == "/boom":
        raise RuntimeError("handler failed")
    status = 404 if scope["path"] == "/missing" else 201
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"part", "more_body": True})
    await send({"type": "http.response.body", "body": b"end", "more_body": False})


def test_asgi_middleware_records_each_request_once(collector: BackgroundCollector, r: redis.Redis) -> None:
    async def main() -> list[dict[str, Any]]:
        client = AsyncAnomalyClient(collector.url, service="asgi", flush_interval=3600)
        app = AnomalyASGIMiddleware(asgi_app, client, exclude_paths=["/healthz"])
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        for path, method in (("/orders/1", "GET"), ("/missing", "POST"), ("/healthz", "GET")):
            await app({"type": "http", "method": method, "path": path}, receive, send)
        with pytest.raises(RuntimeError):
            await app({"type": "http", "method": "GET", "path": "/boom"}, receive, send)
        events = queued(client)
        await client.aclose()
        return events

    events = asyncio.run(main())
    assert [(e["endpoint"], e["status_code"]) for e in events] == [
        ("GET:/orders/1", 201), ("POST:/missing", 404), ("GET:/boom", 500)]
    assert events_total(r) == 3


def test_wsgi_middleware_records_each_request_once(collector: BackgroundCollector, r: redis.Redis) -> None:
    def wsgi_app(environ: dict, start_response: Any) -> Any:
        path = environ["PATH_INFO"]
        if path == "/boom":
            raise RuntimeError("handler failed")
        if path == "/stream":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return (chunk for chunk in (b"a", b"b", b"c"))
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no"]

    client = AnomalyClient(collector.url, service="wsgi", flush_interval=3600)
    app = AnomalyWSGIMiddleware(wsgi_app, client)
    server = wsgiref.simple_server.make_server("127.0.0.1", 0, app,
                                               handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert request(base, "GET", "/stream")[::2] == (200, "abc")
        assert request(base, "POST", "/nothing/7")[0] == 404
        assert request(base, "GET", "/boom")[0] == 500
    finally:
        server.shutdown()
        server.server_close()
    events = queued(client)
    assert [(e["endpoint"], e["status_code"]) for e in events] == [
        ("GET:/stream", 200), ("POST:/nothing/7", 404), ("GET:/boom", 500)]
    client.close()
    assert events_total(r) == 3


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("use_httpx", [False, True], ids=["stdlib", "httpx"])
def test_async_client_flushes_on_time(collector: BackgroundCollector, r: redis.Redis, use_httpx: bool) -> None:
    async def main() -> None:
        async with AsyncAnomalyClient(collector.url, service="aio", flush_interval=0.05,
                                      use_httpx=use_httpx) as client:
            assert (client._httpx is not None) == use_httpx
            await client.send_metric("GET:/a", 200, 3.0)
            await client.send_business_metric("signups", 3.0)
            deadline = time.monotonic() + 20
            while client.stats.sent < 2:
                assert time.monotonic() < deadline, "the background task never flushed"
                await asyncio.sleep(0.02)
            assert (await client.health())["status"] == "ok"
            answer = await client.send_batch([{"endpoint": "GET:/b", "status_code": 200, "response_time": 1}])
            assert answer == {"accepted": 1, "rejected": []}

    asyncio.run(main())
    assert events_total(r) == 3


def test_a_kpi_without_a_service_belongs_to_the_clients_service(collector: BackgroundCollector,
                                                                r: redis.Redis) -> None:
    """`AnomalyClient(service="sdk2a").send_business_metric("orders", 5)` went to the pseudo-service
    `business`: the client's service applied to request metrics only. It applies to KPIs too (queued or
    through `send_batch`); an explicit service still wins, and a client without one still reports to
    `business`."""
    from anomalydesk.store.keys import Keys

    with AnomalyClient(collector.url, service="kpi-home", flush_interval=3600) as client:
        client.send_business_metric("orders", 5.0)
        client.send_business_metric("refunds", 1.0, service="kpi-other")
        assert client.send_batch([{"metric_name": "carts", "value": 2.0}])["accepted"] == 1
        client.flush()
    with AnomalyClient(collector.url, flush_interval=3600) as bare:
        bare.send_business_metric("visits", 9.0)
        bare.flush()
    services = {s.decode() for s in r.smembers(Keys().services)}
    assert {"kpi-home", "kpi-other", "business"} <= services, services
    assert client.stats.sent == 2 and bare.stats.sent == 1  # send_batch answers for itself


def test_sync_client_flushes_on_size(collector: BackgroundCollector, r: redis.Redis) -> None:
    client = AnomalyClient(collector.url, service="sized", batch_size=10, flush_interval=3600)
    for _ in range(10):
        client.send_metric("GET:/a", 200, 1.0)
    deadline = time.monotonic() + 20
    while client.stats.sent < 10:
        assert time.monotonic() < deadline, "a full batch was not sent"
        time.sleep(0.02)
    client.close()
    assert events_total(r) == 10


def test_https_with_a_private_ca(redis_url: str, tmp_path: Path, r: redis.Redis) -> None:
    cert, key = make_self_signed(tmp_path)
    settings = CollectorSettings(host="127.0.0.1", port=0, tls_cert=str(cert), tls_key=str(key),
                                 api_keys=["sdk-key-0123456789abcdef"])
    with BackgroundCollector(settings, redis_url) as running:
        assert running.url.startswith("https://")
        client = AnomalyClient(running.url, "sdk-key-0123456789abcdef", service="tls", verify=str(cert))
        assert client.send_batch([{"endpoint": "GET:/a", "status_code": 200, "response_time": 1}])["accepted"] == 1
        client.close()
        wrong_key = AnomalyClient(running.url, "wrong-key-0123456789abc", service="tls", verify=str(cert))
        with pytest.raises(AnomalyClientError) as caught:
            wrong_key.send_batch([{"endpoint": "GET:/a", "status_code": 200, "response_time": 1}])
        assert caught.value.status == 401
        wrong_key.close()
    assert events_total(r) == 1


@pytest.mark.parametrize("use_httpx", [False, True], ids=["stdlib", "httpx"])
def test_async_client_reports_an_unreachable_collector(use_httpx: bool) -> None:
    from conftest import free_port

    async def main() -> None:
        client = AsyncAnomalyClient(f"http://127.0.0.1:{free_port()}", service="s", max_retries=2, backoff=0.001,
                                    use_httpx=use_httpx)
        with pytest.raises(AnomalyClientError, match="unreachable") as caught:
            await client.send_batch([{"endpoint": "GET:/a", "status_code": 200, "response_time": 1}])
        assert caught.value.status is None
        await client.aclose()

    asyncio.run(main())


class _ScriptedCollector:
    """A fake collector (http.server in a thread) answering scripted (status, headers, body) in order."""

    def __init__(self, script: list[tuple[int, dict[str, str], dict]]):
        import http.server

        self.seen: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status, headers, answer = script[min(len(outer.seen), len(script)) - 1]
                raw = json.dumps(answer).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_503_and_429_are_retried_with_one_key_and_the_same_body() -> None:
    fake = _ScriptedCollector([(503, {"Retry-After": "0"}, {"error": "Redis is unreachable"}),
                               (429, {"Retry-After": "0"}, {"error": "rate limit"}),
                               (202, {}, {"accepted": 2, "rejected": []})])
    try:
        client = AnomalyClient(fake.url, "k" * 20, service="svc")
        client.send_metric("GET:/a", 200, 1.0)
        client.send_metric("GET:/b", 500, 2.0)
        client.close()
    finally:
        fake.close()
    assert len(fake.seen) == 3
    assert len({headers["idempotency-key"] for headers, _ in fake.seen}) == 1
    assert len({body for _, body in fake.seen}) == 1
    assert fake.seen[0][0]["authorization"] == "Bearer " + "k" * 20
    assert [e["endpoint"] for e in json.loads(fake.seen[0][1])] == ["GET:/a", "GET:/b"]
    assert (client.stats.sent, client.stats.failed) == (2, 0)


@pytest.mark.parametrize("status", [400, 401, 413, 422])
def test_other_4xx_are_not_retried(status: int, caplog: pytest.LogCaptureFixture) -> None:
    fake = _ScriptedCollector([(status, {}, {"error": "no"})])
    try:
        client = AnomalyClient(fake.url, service="svc")
        client.send_metric("GET:/a", 200, 1.0)
        with caplog.at_level(logging.WARNING, logger="anomalydesk_client"):
            client.close()
    finally:
        fake.close()
    assert len(fake.seen) == 1
    assert client.stats.failed == 1
    assert f"collector answered {status}" in caplog.text


def test_close_gives_up_after_its_deadline_and_counts_it(caplog: pytest.LogCaptureFixture) -> None:
    fake = _ScriptedCollector([(503, {"Retry-After": "0"}, {"error": "Redis is unreachable"})])
    try:
        client = AnomalyClient(fake.url, service="svc", timeout=0.5, max_retries=10**6, batch_size=2,
                               flush_interval=3600)
        for _ in range(6):
            client.send_metric("GET:/a", 200, 1.0)
        with caplog.at_level(logging.WARNING, logger="anomalydesk_client"):
            client.close()
    finally:
        fake.close()
    assert client.stats.failed == 6 and client.stats.sent == 0
    assert "gave up" in caplog.text


def test_async_close_keeps_a_batch_interrupted_in_the_background() -> None:
    """aclose() cancels a background send that is retrying: its events go back and are sent once."""
    fake = _ScriptedCollector([(503, {"Retry-After": "0.2"}, {"error": "busy"})] * 3
                              + [(202, {}, {"accepted": 3, "rejected": []})])

    async def main() -> AsyncAnomalyClient:
        client = AsyncAnomalyClient(fake.url, service="svc", batch_size=3, max_retries=50, use_httpx=False)
        for _ in range(3):
            await client.send_metric("GET:/a", 200, 1.0)
        while not fake.seen:
            await asyncio.sleep(0.01)  # the background send has started (and met a 503)
        await client.aclose()
        return client

    try:
        client = asyncio.run(main())
    finally:
        fake.close()
    assert (client.stats.sent, client.stats.failed) == (3, 0)
    assert len({headers["idempotency-key"] for headers, _ in fake.seen}) == 1  # same key after the interruption
    assert all(len(json.loads(body)) == 3 for _, body in fake.seen)
