"""The detector (`anomalydesk detect`, a subprocess) SIGKILLed at random moments, 20 times.

A backlog of fingerprints with injected faults waits in the streams; detectors are started one after
the other and killed at a random moment while they work, until the backlog is done. Nothing may be
skipped (every service's detector state reaches its last fingerprint, nothing pending in the group)
and no alert may be written twice; the alerts must be exactly those of one detector that never
crashed, run on a copy of the same data.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import pytest
import redis

from anomalydesk.detect.detector import Detector
from anomalydesk.ingest.demo import run_fast
from anomalydesk.ingest.demo_model import parse_inject
from anomalydesk.store.keys import Keys
from conftest import RedisServer, kill_at_random_then_finish

pytestmark = pytest.mark.slow

K = Keys()
W = 5
SERVICES = ["gateway", "users", "orders"]
KILLS = 20
DB_KILLED, DB_REFERENCE = 1, 2


def alerts(r: redis.Redis) -> list[dict]:
    return [json.loads(f[b"alert"]) for _, f in r.xrange(K.alerts_log)]


def progress(r: redis.Redis) -> dict[str, int]:
    out = {}
    for service in SERVICES:
        raw = r.hget(K.detector_states, service)
        out[service] = json.loads(raw)["last_window"] if raw else -1
    return out


def last_windows(r: redis.Redis) -> dict[str, int]:
    return {s: int(r.xrevrange(K.fingerprints(s), count=1)[0][1][b"window"]) for s in SERVICES}


def start_detector(server: RedisServer, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "anomalydesk.cli", "detect", "--redis", f"redis://127.0.0.1:{server.port}/{DB_KILLED}",
         "--no-seal", "--name", name, "--service-lease-ms", "500"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ},
    )  # fmt: skip


def test_a_detector_killed_20_times_skips_nothing_and_duplicates_nothing(tmp_path) -> None:
    server = RedisServer(tmp_path / "redis")
    r = server.client()
    end = math.floor(time.time() / W) * W - 2 * 86400
    run_fast(r, duration=3 * 3600, services=len(SERVICES), seed=21, end=end)
    trained = subprocess.run([sys.executable, "-m", "anomalydesk.cli", "--redis", server.url, "--json", "train"],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    for service in SERVICES:
        r.xgroup_create(K.fingerprints(service), "detectors", id="$")
    specs = [parse_inject(f"{kind}@{600 + 1200 * i}+300:{svc}")
             for i, (kind, svc) in enumerate([("latency", "orders"), ("errors", "users"), ("spike", "gateway"),
                                               ("drop", "orders"), ("new-dependency", "users")])]  # fmt: skip
    run_fast(r, duration=2 * 3600, services=len(SERVICES), seed=22, end=end + 2 * 3600, injects=specs)
    for db in (DB_KILLED, DB_REFERENCE):  # the same backlog twice
        for key in r.scan_iter(count=1000):
            r.copy(key, key, destination_db=db)
    killed = server.client(db=DB_KILLED)
    target = last_windows(killed)
    kill_at_random_then_finish(lambda name: start_detector(server, name), lambda: progress(killed), target,
                               KILLS, seed=7)  # fmt: skip
    for service in SERVICES:
        assert killed.xpending(K.fingerprints(service), "detectors")["pending"] == 0
    got = alerts(killed)
    ids = [a["id"] for a in got]
    assert len(ids) == len(set(ids)), "an alert was written twice"
    reference = server.client(db=DB_REFERENCE)
    det = Detector(reference, seal=False, block_ms=10)
    while det.step().processed > 0:
        pass
    assert progress(reference) == target
    expected = alerts(reference)
    assert expected, "the faults raised no alert: the comparison would prove nothing"
    assert sorted(ids) == sorted(a["id"] for a in expected)
    print(f"\ndetector killed {KILLS} times; {len(ids)} alerts, none twice, none missing")
    server.stop()
