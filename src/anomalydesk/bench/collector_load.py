"""The collector benchmark's load generator: pre-built HTTP/1.1 requests over raw keep-alive connections.

An HTTP client library spends more CPU per request than the collector does (aiohttp's client took
about 550 µs per single-event request here, the collector about 380 µs), and the generator shares
the machine's cores with the collector and Redis. This one writes pre-encoded request bytes and
reads only the status line and Content-Length of each answer, so its CPU time per request stays
small and is reported beside the collector's.
"""

from __future__ import annotations

import asyncio
import collections
import time
from urllib.parse import urlsplit

_HEADER_END = b"\r\n\r\n"


class LoadError(RuntimeError):
    """The collector closed a connection or sent an answer the generator cannot read."""


def build_request(base_url: str, path: str, body: bytes) -> bytes:
    """One complete `POST path` request with a JSON body, ready to write on a keep-alive connection."""
    host = urlsplit(base_url).netloc
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("ascii") + body


def _content_length(head: bytes) -> int | None:
    """Content-Length of a lower-cased header block (None when absent or not a number)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip() == b"content-length":
            return int(value) if value.strip().isdigit() else None
    return None


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time; the future gets the answer's status code."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiting: collections.deque[asyncio.Future[int]] = collections.deque()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes) -> asyncio.Future[int]:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self.closed or self.transport is None:
            future.set_exception(LoadError("the collector closed the connection"))
            return future
        self._waiting.append(future)
        self.transport.write(request)
        return future

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._waiting:
            end = self._buffer.find(_HEADER_END)
            if end < 0:
                return
            head = bytes(self._buffer[:end]).lower()
            length = _content_length(head)
            if not head.startswith(b"http/1.1 ") or length is None:
                self._fail(LoadError(f"unreadable answer: {head[:80]!r}"))
                return
            total = end + len(_HEADER_END) + length
            if len(self._buffer) < total:
                return
            del self._buffer[:total]
            self._waiting.popleft().set_result(int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(LoadError(f"the collector closed the connection ({exc})"))

    def _fail(self, err: Exception) -> None:
        self.closed = True
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(err)
        if self.transport is not None:
            self.transport.close()


async def _connect(base_url: str) -> _Connection:
    parts = urlsplit(base_url)
    _, connection = await asyncio.get_running_loop().create_connection(
        _Connection, parts.hostname, parts.port)
    return connection


async def closed_loop(base_url: str, requests: list[bytes], connections: int, seconds: float) -> tuple[int, int]:
    """Each connection sends the next request as soon as the previous is answered; (202 answers, others)."""
    ok = errors = 0
    deadline = time.perf_counter() + seconds
    pool = [await _connect(base_url) for _ in range(connections)]

    async def worker(connection: _Connection, offset: int) -> None:
        nonlocal ok, errors
        i = offset
        while time.perf_counter() < deadline:
            status = await connection.send(requests[i % len(requests)])
            if status == 202:
                ok += 1
            else:
                errors += 1
            i += connections

    try:
        await asyncio.gather(*(worker(c, k) for k, c in enumerate(pool)))
    finally:
        for connection in pool:
            if connection.transport is not None:
                connection.transport.close()
    return ok, errors


async def open_loop(base_url: str, requests: list[bytes], rate: float, seconds: float,
                    warm_connections: int = 16, max_connections: int = 256) -> dict[str, object]:
    """Send at a fixed `rate` whatever the answers do (open loop); latency counts from the scheduled time.

    A request due while every open connection waits for an answer goes on a new connection (up to
    `max_connections`, opened like any client would, so its connect time is part of its latency); past
    that it waits for the first free one. Returns `latencies` (seconds), `send_lag` (seconds from the
    scheduled time to the write), `errors` (non-202 answers) and `connections` (opened in all).
    """
    loop = asyncio.get_running_loop()
    idle = collections.deque([await _connect(base_url) for _ in range(warm_connections)])
    opened = len(idle)
    freed: asyncio.Future[None] | None = None  # set when the sender waits for a free connection
    latencies: list[float] = []
    lags: list[float] = []
    errors = 0
    outstanding: set[asyncio.Future[int]] = set()

    def answered(connection: _Connection, scheduled: float, future: asyncio.Future[int]) -> None:
        nonlocal errors
        outstanding.discard(future)
        latencies.append(time.perf_counter() - scheduled)
        if future.exception() is not None or future.result() != 202:
            errors += 1
        if not connection.closed:
            idle.append(connection)
            if freed is not None and not freed.done():
                freed.set_result(None)

    async def take() -> _Connection:
        nonlocal opened, freed
        while not idle:
            if opened < max_connections:
                opened += 1
                return await _connect(base_url)
            freed = loop.create_future()
            await freed
        return idle.popleft()

    total = int(seconds * rate)
    start = time.perf_counter() + 0.05
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        connection = await take()
        lags.append(time.perf_counter() - scheduled)
        future = connection.send(requests[i % len(requests)])
        outstanding.add(future)
        future.add_done_callback(lambda f, c=connection, s=scheduled: answered(c, s, f))
    if outstanding:
        await asyncio.wait(outstanding)
    for connection in idle:
        if connection.transport is not None:
            connection.transport.close()
    return {"latencies": latencies, "send_lag": lags, "errors": errors, "connections": opened}
