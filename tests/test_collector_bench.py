"""`bench collector` gives its DESIGN.md keys from a real run (slow: ~30 s); its generator reads answers right."""

from __future__ import annotations

import asyncio

import pytest

from anomalydesk.bench import collector as bench_collector
from anomalydesk.bench.collector_load import LoadError, _Connection, build_request


@pytest.mark.slow
def test_bench_collector_quick(redis_url: str) -> None:
    result = bench_collector.run(True, redis_url)
    assert {"events_per_s", "direct_events_per_s", "single_p99_ms"} <= set(result)
    assert result["events_per_s"] > 0 and result["direct_events_per_s"] > 0
    assert result["endpoints_5000_events_per_s"] > 0 and result["direct_endpoints_5000_events_per_s"] > 0
    assert result["http_errors"] == 0
    assert result["stored_events_match"] is True  # every 202 batch is in events_total, nothing more
    assert result["single_requests"] == 3 * result["single_rate_target"]
    assert result["single_p99_ms"] >= result["single_p50_ms"] > 0
    assert result["single_max_ms"] >= result["single_p99_ms"]
    assert result["single_send_lag_p99_ms"] >= 0
    for per in (result["cpu_us_per_event"], result["endpoints_5000_cpu_us_per_event"],
                result["cpu_us_per_single_request"]):
        assert {"collector", "generator", "redis"} <= set(per)  # redis: the throwaway server runs here
        assert per["collector"] > 0


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True


async def test_generator_reads_answers_split_anywhere_in_order() -> None:
    connection = _Connection()
    transport = _Transport()
    connection.connection_made(transport)
    request = build_request("http://127.0.0.1:4000", "/metrics", b'{"a": 1}')
    assert request.startswith(b"POST /metrics HTTP/1.1\r\nHost: 127.0.0.1:4000\r\n")
    assert request.endswith(b"Content-Length: 8\r\n\r\n{\"a\": 1}")
    first, second = connection.send(request), connection.send(request)
    answers = (b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 28\r\n\r\n"
               b'{"accepted":1,"rejected":[]}'
               b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\nRetry-After: 2\r\n\r\n{}")
    for i in range(0, len(answers), 7):  # arbitrary chunk boundaries, inside headers and bodies
        connection.data_received(answers[i:i + 7])
    assert (await first, await second) == (202, 503)
    assert transport.written == [request, request]


async def test_generator_fails_waiting_requests_on_an_unreadable_answer_or_a_closed_connection() -> None:
    connection = _Connection()
    connection.connection_made(_Transport())
    waiting = connection.send(b"x")
    connection.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")  # no Content-Length
    with pytest.raises(LoadError, match="unreadable"):
        await waiting
    with pytest.raises(LoadError, match="closed"):
        await connection.send(b"x")
