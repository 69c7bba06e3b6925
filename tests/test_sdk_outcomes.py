"""The Python SDK's accounting through failures (issue 19): a batch whose outcome the SDK cannot know
is `unknown` (not `failed`) and re-sent under the same key; retries last a time budget, not a count;
sent + rejected + unknown + failed + dropped = produced."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any

import pytest
from anomalydesk_client import AnomalyClient, AsyncAnomalyClient
from anomalydesk_client.client import RESEND_WINDOW_SECONDS

from anomalydesk.contract import BATCH_TTL_SECONDS
from conftest import free_port


class DroppingCollector:
    """A fake collector on a raw socket: reads each request whole, then either closes the connection
    without answering (as a collector SIGKILLed after reading) or answers scripted JSON."""

    def __init__(self) -> None:
        self.drop = True
        self.answer: tuple[int, dict[str, str], dict[str, Any]] | None = None
        self.keys: list[str] = []
        self.bodies: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            headers = {k.strip().lower(): v.strip() for k, v in
                       (line.split(":", 1) for line in head.decode().split("\r\n")[1:])}
            while len(body) < int(headers.get("content-length", 0)):
                body += conn.recv(65536)
            self.keys.append(headers.get("idempotency-key", ""))
            self.bodies.append(body)
            if self.drop or self.answer is None:
                return  # read, never answered: the client cannot know what happened
            status, extra, payload = self.answer
            raw = json.dumps(payload).encode()
            lines = [f"HTTP/1.1 {status} X", "Content-Type: application/json", f"Content-Length: {len(raw)}",
                     "Connection: close", *(f"{k}: {v}" for k, v in extra.items())]
            conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + raw)

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def produced_equals_counted(client: Any, produced: int) -> bool:
    s = client.stats
    return s.sent + s.rejected + s.unknown + s.failed + s.dropped == produced


def test_a_batch_read_but_never_answered_is_unknown_and_resent_under_its_key() -> None:
    fake = DroppingCollector()
    try:
        client = AnomalyClient(fake.url, service="svc", retry_for=0.3, backoff=0.01, backoff_max=0.05,
                               flush_interval=3600)
        for _ in range(4):
            client.send_metric("GET:/a", 200, 1.0)
        client.flush()
        assert (client.stats.unknown, client.stats.failed, client.stats.sent) == (4, 0, 0)
        assert produced_equals_counted(client, 4)
        fake.drop, fake.answer = False, (202, {}, {"accepted": 4, "rejected": []})
        client.flush()  # the parked batch goes first, under the same key
        assert (client.stats.unknown, client.stats.failed, client.stats.sent) == (0, 0, 4)
        assert len(set(fake.keys)) == 1 and len(set(fake.bodies)) == 1
        client.close()
    finally:
        fake.close()


def test_a_503_saying_stored_unknown_is_unknown_and_one_saying_no_is_failed() -> None:
    fake = DroppingCollector()
    fake.drop = False
    try:
        fake.answer = (503, {"Retry-After": "0"}, {"error": "late", "stored": "unknown"})
        client = AnomalyClient(fake.url, service="svc", retry_for=0.2, backoff=0.01, flush_interval=3600)
        client.send_metric("GET:/a", 200, 1.0)
        client.flush()
        assert (client.stats.unknown, client.stats.failed) == (1, 0)
        fake.answer = (503, {"Retry-After": "0"}, {"error": "down", "stored": "no"})
        client.send_metric("GET:/a", 200, 1.0)
        client.flush()  # the parked one stays unknown (it may be stored), the new one certainly is not
        assert (client.stats.unknown, client.stats.failed) == (1, 1)
        client.close()
        assert produced_equals_counted(client, 2)
    finally:
        fake.close()


def test_a_refused_connection_is_failed_not_unknown() -> None:
    client = AnomalyClient(f"http://127.0.0.1:{free_port()}", service="svc", retry_for=0.2, backoff=0.01,
                           flush_interval=3600)
    for _ in range(3):
        client.send_metric("GET:/a", 200, 1.0)
    client.flush()
    assert (client.stats.failed, client.stats.unknown) == (3, 0)  # nothing ever reached a collector
    client.close()


def test_the_retry_budget_is_time_not_a_count() -> None:
    fake = DroppingCollector()
    fake.drop = False
    fake.answer = (503, {"Retry-After": "0"}, {"error": "down", "stored": "no"})
    try:
        client = AnomalyClient(fake.url, service="svc", retry_for=1.0, flush_interval=3600)
        client.send_metric("GET:/a", 200, 1.0)
        started = time.monotonic()
        client.flush()
        took = time.monotonic() - started
        # Retry-After 0: without a time budget, 5 retries would have ended at once
        assert took >= 1.0 and len(fake.keys) > 6, (took, len(fake.keys))
        assert client.stats.failed == 1
        client.close()
    finally:
        fake.close()


def test_unknown_batches_are_resent_only_while_the_store_remembers_their_key() -> None:
    assert RESEND_WINDOW_SECONDS < BATCH_TTL_SECONDS - 30  # margin for clocks and the last retry


@pytest.mark.parametrize("use_httpx", [False, True], ids=["stdlib", "httpx"])
def test_async_client_counts_unknown_and_joins_a_running_flush(use_httpx: bool) -> None:
    fake = DroppingCollector()

    async def main() -> AsyncAnomalyClient:
        client = AsyncAnomalyClient(fake.url, service="svc", retry_for=0.3, backoff=0.01, backoff_max=0.05,
                                    flush_interval=3600, use_httpx=use_httpx)
        for _ in range(3):
            await client.send_metric("GET:/a", 200, 1.0)
        await asyncio.gather(*(client.flush() for _ in range(20)))  # one flush, joined by the others
        assert (client.stats.unknown, client.stats.failed) == (3, 0)
        fake.drop, fake.answer = False, (202, {}, {"accepted": 3, "rejected": []})
        await client.aclose()
        return client

    try:
        client = asyncio.run(main())
    finally:
        fake.close()
    assert (client.stats.sent, client.stats.unknown) == (3, 0)
    assert len(set(fake.keys)) == 1  # every attempt, the re-send included, under one key
    assert len(fake.keys) < 40  # 20 flush() calls did not each start a round of retries
