"""Redis restarts under load: demo traffic (direct sink) and an HTTP client (collector) send throughout.

Acknowledged events (the sink's accepted counts, the collector's 202 answers) are compared with what
the server counted after two restarts. Numbers go to docs/reliability.md; run with
`pytest -m slow tests/test_restart.py -s` to see them.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from anomalydesk import config
from anomalydesk.config import SketchSettings
from anomalydesk.ingest.collector import CollectorSettings
from anomalydesk.ingest.collector_server import BackgroundCollector
from anomalydesk.ingest.demo import DemoTraffic
from anomalydesk.store import admin
from anomalydesk.store.connection import connect
from anomalydesk.store.keys import Keys
from conftest import RedisServer

pytestmark = pytest.mark.slow

COLLECTED = "collected"  # the HTTP sender's service
DEMO_SERVICES = ["gateway", "users", "orders"]
KEYS = Keys()
WINDOW_SECONDS = 5
BATCH = 20
DEMO_RATE = 2_000.0
SECONDS_BETWEEN_RESTARTS = 3.0


@dataclass
class HttpSender:
    """Posts batches with an Idempotency-Key until each is acknowledged (202), as the SDKs do."""

    url: str
    acked: int = 0
    attempts: int = 0
    unavailable: int = 0  # 503 answers and refused connections
    ack_times: list[tuple[float, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def run(self) -> None:
        host, port = self.url.removeprefix("http://").split(":")
        try:
            while not self.stop.is_set():
                body = json.dumps([{"service": COLLECTED, "endpoint": "POST:/pay", "status_code": 200,
                                    "response_time": 5.0} for _ in range(BATCH)]).encode()  # fmt: skip
                key = uuid.uuid4().hex
                while True:  # the same batch, the same key, until acknowledged
                    self.attempts += 1
                    status, answer = _post(host, int(port), body, key)
                    if status == 202:
                        assert answer["accepted"] == BATCH, answer
                        self.acked += BATCH
                        self.ack_times.append((time.time(), BATCH))
                        break
                    if status not in (503, 0):
                        raise AssertionError(f"collector answered {status}: {answer}")
                    self.unavailable += 1
                    time.sleep(0.05)
                time.sleep(0.005)
        except BaseException as err:
            self.error = err


def _post(host: str, port: int, body: bytes, key: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("POST", "/metrics", body=body, headers={"Content-Type": "application/json",
                                                             "Idempotency-Key": key})  # fmt: skip
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    except (ConnectionError, OSError):
        return 0, {}
    finally:
        conn.close()


@dataclass
class Outcome:
    # acknowledged = every event the producer handed over and got an answer for: the demo's sink
    # flushed without error to the end (accepted, or part of a batch the server already had: a retry
    # after a lost reply is answered "duplicate", which counts it once, not twice)
    acked_demo: int
    counted_demo: int
    acked_http: int
    counted_http: int
    downtimes_s: list[float]
    recovery_s: list[float]
    acked_in_last_2s_before_kill: list[int]
    unavailable_answers: int
    duplicate_batches: int
    detector_alive: bool
    detector_caught_up: bool  # its consumer group delivered a fingerprint sealed after the last restart


def _wait_ping(port: int) -> None:
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    while True:
        try:
            if client.ping():
                return
        except redis.RedisError:
            time.sleep(0.01)


def _delivered_after(r: redis.Redis, since: float) -> bool:
    """True when the detectors' group delivered, on every demo service, a fingerprint of a window after `since`."""
    for service in DEMO_SERVICES:
        groups = r.xinfo_groups(KEYS.fingerprints(service))
        delivered = [g["last-delivered-id"] for g in groups if g["name"] == config.DETECTOR_GROUP.encode()]
        if not delivered or int(delivered[0].split(b"-")[0]) / 1000 < since - WINDOW_SECONDS:
            return False
    return True


def run_restarts(directory: Path, fsync: str, sig: signal.Signals, restarts: int = 2) -> Outcome:
    """Demo + HTTP load, `restarts` restarts of Redis with `sig`; what was acknowledged vs counted."""
    server = RedisServer(directory, "--appendonly", "yes", "--appendfsync", fsync)
    url = server.url
    r = connect(url)
    admin.setup(r, SketchSettings())
    demo = DemoTraffic(url, rate=DEMO_RATE, services=3, seed=1).start()
    collector = BackgroundCollector(CollectorSettings(port=0), url).start()
    sender = HttpSender(collector.url)
    thread = threading.Thread(target=sender.run, daemon=True)
    thread.start()
    detector = subprocess.Popen([sys.executable, "-m", "anomalydesk.cli", "detect", "--redis", url, "--no-seal"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    downtimes, recoveries, recent = [], [], []
    try:
        for _ in range(restarts):
            time.sleep(SECONDS_BETWEEN_RESTARTS)
            killed_at = time.time()
            recent.append(sum(n for t, n in sender.ack_times if t > killed_at - 2.0))
            acked_before = (demo.result.accepted, sender.acked)
            server.stop(sig)
            server.start()
            _wait_ping(server.port)
            downtimes.append(time.time() - killed_at)
            while demo.result.accepted <= acked_before[0] or sender.acked <= acked_before[1]:
                assert demo.error is None and sender.error is None, (demo.error, sender.error)
                time.sleep(0.01)
            recoveries.append(time.time() - killed_at)
        restarted_at = time.time()
        time.sleep(SECONDS_BETWEEN_RESTARTS + 2 * WINDOW_SECONDS)  # fingerprints sealed after the restart
        detector_alive = detector.poll() is None
        caught_up = _delivered_after(r, restarted_at)
    finally:
        if detector.poll() is None:
            detector.send_signal(signal.SIGTERM)
            detector.wait(timeout=60)
        sender.stop.set()
        thread.join(30)
        demo.stop()
        collector.stop()
    assert demo.error is None, demo.error
    assert sender.error is None, sender.error
    counted = {s["name"]: s["events"] for s in admin.list_services(r)}
    r.close()
    server.stop()
    return Outcome(
        acked_demo=demo.events + demo.business_metrics,
        counted_demo=sum(v for k, v in counted.items() if k != COLLECTED),
        acked_http=sender.acked, counted_http=counted.get(COLLECTED, 0), downtimes_s=downtimes,
        recovery_s=recoveries, acked_in_last_2s_before_kill=recent, unavailable_answers=sender.unavailable,
        duplicate_batches=demo.result.duplicate_batches, detector_alive=detector_alive,
        detector_caught_up=caught_up,
    )  # fmt: skip


def report(name: str, outcome: Outcome) -> None:
    print(f"\n{name}: {json.dumps(outcome.__dict__)}")


@pytest.fixture()
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "redis"


def test_graceful_restarts_lose_nothing_and_count_nothing_twice(workdir: Path) -> None:
    outcome = run_restarts(workdir, "everysec", signal.SIGTERM)
    report("graceful (SIGTERM, appendfsync everysec)", outcome)
    assert outcome.detector_alive and outcome.detector_caught_up  # the detector reconnected and resumed
    assert outcome.acked_demo > 0 and outcome.acked_http > 0
    assert outcome.counted_demo == outcome.acked_demo
    assert outcome.counted_http == outcome.acked_http


def test_hard_kills_with_fsync_always_lose_nothing(workdir: Path) -> None:
    outcome = run_restarts(workdir, "always", signal.SIGKILL)
    report("hard kill (SIGKILL, appendfsync always)", outcome)
    assert outcome.detector_alive and outcome.detector_caught_up
    assert outcome.counted_demo == outcome.acked_demo
    assert outcome.counted_http == outcome.acked_http


def test_hard_kills_with_fsync_everysec_lose_at_most_about_a_second(workdir: Path) -> None:
    outcome = run_restarts(workdir, "everysec", signal.SIGKILL)
    report("hard kill (SIGKILL, appendfsync everysec)", outcome)
    # never more counted than acknowledged (a retried batch is never counted twice) ...
    assert outcome.counted_demo <= outcome.acked_demo
    assert outcome.counted_http <= outcome.acked_http
    # ... and what is lost fits in the fsync interval: Redis fsyncs every second (up to two when a
    # previous fsync is slow), so per kill at most what was acknowledged in the 2 s before it
    lost_http = outcome.acked_http - outcome.counted_http
    assert lost_http <= sum(outcome.acked_in_last_2s_before_kill)
    lost_demo = outcome.acked_demo - outcome.counted_demo
    assert lost_demo <= 2 * 2 * DEMO_RATE  # two kills, two seconds each at the demo's mean rate
