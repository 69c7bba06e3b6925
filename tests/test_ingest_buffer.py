"""The buffered producer never calls Redis while holding its buffer's lock (real redis-server, CLIENT PAUSE).

A flush stuck on a paused server must not stop other threads from adding events: the flush swaps the
buffer out under the lock and reads the settings, encodes and writes outside it.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from anomalydesk.events import Metric
from anomalydesk.store import admin, ingest_core
from anomalydesk.store.ingest_buffer import IngestSink
from conftest import RedisServer

EVENT = Metric("orders", "GET:/orders/{id}", 200, 12.5, None)
PAUSE_MS = 1500


def waiting_on_redis(thread: threading.Thread) -> set[str] | None:
    """The function names on `thread`'s stack while it waits for a Redis reply, else None."""
    frame = sys._current_frames().get(thread.ident or -1)
    names: set[str] = set()
    waiting = False
    while frame is not None:
        code = frame.f_code
        names.add(code.co_name)
        waiting = waiting or ("redis" in code.co_filename and code.co_name in ("read_response", "_read_from_socket"))
        frame = frame.f_back
    return names if waiting else None


@pytest.mark.parametrize(("mode", "stuck_in"), [
    ("ALL", "read_settings"),  # every command paused: the flush is stuck re-reading the settings
    ("WRITE", "fcall"),  # reads go on, writes paused: the flush is stuck in its FCALL (one service: no
                         # pipeline; registering the service comes after the FCALL stored its events)
])  # fmt: skip
def test_add_does_not_wait_for_a_flush_stuck_on_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, stuck_in: str,
) -> None:
    server = RedisServer(tmp_path / "redis")
    flusher = threading.Thread()
    client = server.client(socket_timeout=10)
    control = server.client()
    try:
        sink = IngestSink(client, max_batch=10**9, retry_attempts=1)  # flushes only when told to
        sink.add(EVENT)
        assert sink.flush().accepted == 1  # setup and library done, settings cached
        monkeypatch.setattr(ingest_core, "CONFIG_TTL_SECONDS", 0.0)  # every flush re-reads the settings
        sink.add(EVENT)

        control.execute_command("CLIENT", "PAUSE", PAUSE_MS, mode)
        paused_at = time.monotonic()
        flushed = {}
        flusher = threading.Thread(target=lambda: flushed.update(result=sink.flush()), name="flusher")
        flusher.start()
        stack: set[str] | None = None
        while not (stack and stuck_in in stack) and time.monotonic() - paused_at < PAUSE_MS / 1000 / 2:
            stack = waiting_on_redis(flusher)  # (an unpaused read may pass by on the way)
            time.sleep(0.002)
        assert stack and stuck_in in stack, f"the flush never waited on the paused server in {stuck_in}: {stack}"

        started = time.monotonic()
        sink.add(EVENT)  # another producer, while the flush waits for Redis
        took = time.monotonic() - started
        assert flusher.is_alive(), "the pause ended before add() ran: the test proved nothing"
        assert took < 0.1, f"add() waited {took:.3f}s for a flush stuck on Redis"
        assert sink.buffered == 2  # the one being flushed and the one just added

        flusher.join(timeout=10)
        assert time.monotonic() - paused_at >= PAUSE_MS / 1000 * 0.9  # the flush did wait for the pause
        assert flushed["result"].accepted == 1
        assert sink.flush().accepted == 1  # the event added meanwhile was kept for the next flush
        assert sink.buffered == 0
        assert admin.status(client)["events_total"] == 3
    finally:
        if flusher.is_alive():
            flusher.join(timeout=10)
        control.close()
        client.close()
        server.stop()


def test_a_batch_the_server_refuses_is_dropped_and_the_next_ones_go_through(tmp_path: Path) -> None:
    from anomalydesk.store.ingest_core import InvalidBatch
    from anomalydesk.store.keys import Keys

    server = RedisServer(tmp_path / "redis")
    client = server.client()
    try:
        sink = IngestSink(client, max_batch=10**9, retry_attempts=1)
        sink.add(EVENT)
        sink.add(Metric("broken", "GET:/x", 200, 1.0, None))
        assert sink.flush().accepted == 2  # both services set up and known to the writer
        client.delete(Keys().cms_endpoints("broken"))
        client.rpush(Keys().cms_endpoints("broken"), "not a sketch")  # a key of the wrong type: refused as it is
        sink.add(Metric("broken", "GET:/x", 200, 1.0, None))
        with pytest.raises(InvalidBatch):
            sink.flush()
        assert sink.refused_batches == 1 and sink.buffered == 0
        sink.add(EVENT)
        assert sink.flush().accepted == 1  # it used to stay at the head and refuse every later flush
        assert admin.status(client)["events_total"] == 3
    finally:
        client.close()
        server.stop()
