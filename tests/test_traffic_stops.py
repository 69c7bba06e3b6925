"""Traffic stopped on purpose (`store.traffic_stops`) against a real redis-server and a real detector.

A tester stopped the demo traffic from the app and, a few windows later, got the notification
"(system) no service sent anything (3 services silent)": the detector took the deliberate stop for a
gap in the data. A demo that ends (Stop, its `--duration`, `demo --fast` ending at the present) now
records it, and its silence alarms nothing; real traffic stopping still opens the gap incident.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import redis

from anomalydesk.config import SketchSettings
from anomalydesk.detect.detector import Detector
from anomalydesk.detect.system_gap import SYSTEM
from anomalydesk.detect.training_run import train_service
from anomalydesk.ingest.demo import run_fast
from anomalydesk.store import admin, fingerprints, traffic_stops
from anomalydesk.store.ingest_buffer import IngestSink
from anomalydesk.store.keys import Keys
from anomalydesk.store.sealing import seal_all

K = Keys()
SERVICES = ["gateway", "users", "orders"]


def drain(det: Detector) -> None:
    while det.step().processed > 0:
        pass


def system_alerts(r: redis.Redis) -> list[dict]:
    alerts = [json.loads(f[b"alert"]) for _, f in r.xrange(K.alerts_log)]
    return [a for a in alerts if a["service"] == SYSTEM]


def wait_silent_windows(r: redis.Redis, services: list[str], n: int, timeout: float = 20.0) -> None:
    """Seal (as the app's ticker does) until each service's last `n` windows are sealed silent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seal_all(r)
        if all(len(fps := fingerprints.latest(r, s, n)) == n and all(fp.silent for fp in fps) for s in services):
            return
        time.sleep(0.1)
    raise AssertionError(f"{services}: not {n} silent windows in a row after {timeout} s")


def send_live(r: redis.Redis, services: list[str], seconds: float) -> float:
    """Real (non-demo) live traffic on `services` for `seconds`; when it ended (server clock)."""
    sink = IngestSink(r, replay=False)
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        for service in services:
            sink.add_arrays(service, ["GET:/a", "POST:/b"], np.array([0, 1, 0, 1]), np.array([200] * 4),
                            np.array([10.0, 20.0, 12.0, 25.0]), None)  # fmt: skip
        sink.flush()
        time.sleep(0.05)
    sink.close()
    seconds_now, micros = r.time()
    return seconds_now + micros / 1e6


def test_next_to_a_real_service_the_stopped_demo_services_are_not_scored_and_make_no_gap(r: redis.Redis) -> None:
    """Demo services stopped on purpose beside a real one: their zeros were scored ("requests 0"
    incidents: a service silent alone is its own incident). When the real service stops as well, that
    is its own outage, as when it was the only service (the stopped ones are no witnesses of a gap)."""
    admin.setup(r, SketchSettings(window_seconds=5))
    end = math.floor(time.time() / 86400) * 86400 - 2 * 86400 + 12 * 3600  # noon UTC, two days back
    run_fast(r, duration=3 * 3600, rate=120, services=3, seed=21, end=end)
    for service in SERVICES:
        assert train_service(r, service).version is not None
    det = Detector(r, seal=False, block_ms=10)
    drain(det)  # joins the groups at the end of the history
    traffic_stops.record(r, ["users", "orders"], end)  # the demo fed these two and was stopped at `end`
    run_fast(r, duration=600, rate=40, services=1, seed=22, end=end + 600)  # gateway (real) goes on
    drain(det)
    stopped = [fp for s in ("users", "orders") for fp in fingerprints.read(r, s, end, end + 600)]
    assert len(stopped) >= 2 * 100 and all(fp.silent for fp in stopped)  # their windows were sealed silent
    def alerted() -> set[str]:  # (gateway's own are its business: it alone sends, at another rate)
        return {a["service"] for _, f in r.xrange(K.alerts_log) if (a := json.loads(f[b"alert"]))} - {"gateway"}

    assert alerted() == set()  # before: users and orders opened "requests 0" incidents
    assert all(not json.loads(r.hget(K.detector_states, s)).get("incident") for s in ("users", "orders"))
    seal_all(r, now=end + 600 + 120)  # the real service stops too, not on purpose: its own outage
    drain(det)
    assert alerted() == set()  # no gap: the stopped two are no witnesses of one
