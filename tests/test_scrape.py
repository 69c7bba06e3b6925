"""Prometheus scrape source against a real prometheus_client-instrumented app and a real Redis."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from anomalydesk.config import SketchSettings
from anomalydesk.fingerprint import LAT_QUANTILE_REL_ERROR
from anomalydesk.ingest.metric_map import MapError, load_map
from anomalydesk.ingest.scrape import ScrapeError, Scraper
from anomalydesk.store import fingerprints
from anomalydesk.store.admin import setup
from anomalydesk.store.keys import Keys
from anomalydesk.store.sink import seal_all

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
KEYS = Keys()


class App:
    """An app instrumented with prometheus_client the usual way; its registry can be 'restarted'."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._make()
        self.server, self.thread = start_http_server(0, addr="127.0.0.1", registry=self.registry)
        self.url = f"http://127.0.0.1:{self.server.server_port}/metrics"
        self.done: list[tuple[str, int, float]] = []

    def _make(self) -> None:
        self.requests = Counter("http_requests", "Requests", ["method", "handler", "code"], registry=self.registry)
        self.duration = Histogram("http_request_duration_seconds", "Latency", ["method", "handler"],
                                  buckets=BUCKETS_S, registry=self.registry)
        self.basket = Gauge("basket_value_eur", "Mean basket", registry=self.registry)

    def restart(self) -> None:
        """What a process restart does to its counters: every series starts again from zero."""
        for metric in (self.requests, self.duration, self.basket):
            self.registry.unregister(metric)
        self._make()

    def serve(self, handler: str, code: int, seconds: float) -> None:
        self.requests.labels("GET", handler, str(code)).inc()
        self.duration.labels("GET", handler).observe(seconds)
        self.done.append((handler, code, seconds))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def app() -> Iterator[App]:
    running = App()
    yield running
    running.close()


def _traffic(app: App, n: int, rng: random.Random) -> list[tuple[str, int, float]]:
    start = len(app.done)
    for i in range(n):
        handler = ("/items", "/checkout", "/users/42")[i % 3]
        code = 500 if i % 10 == 0 else 404 if i % 7 == 0 else 200
        app.serve(handler, code, rng.lognormvariate(math.log(0.03), 0.8))
    return app.done[start:]


def _next_window(r: redis.Redis) -> None:
    window = int(r.time()[0])
    while int(r.time()[0]) <= window:
        time.sleep(0.02)


def _bucket_interval(values_ms: np.ndarray, q: float) -> tuple[float, float]:
    ordered = np.sort(values_ms)
    true = float(ordered[math.ceil(q * len(ordered)) - 1])
    bounds = [b * 1000 for b in BUCKETS_S]
    j = int(np.searchsorted(bounds, true, side="left"))
    low = bounds[j - 1] if j > 0 else bounds[0] / 2
    high = bounds[j] if j < len(bounds) else bounds[-1] * 2
    tol = 1 + LAT_QUANTILE_REL_ERROR
    return low / tol, high * tol


def test_rates_and_quantiles_match_the_app_across_a_reset(app: App, r: redis.Redis, tmp_path) -> None:
    setup(r, SketchSettings(window_seconds=1))  # 1 s windows: each scrape below gets its own window
    mapping = tmp_path / "map.toml"
    mapping.write_text('[http]\nservice = "shop"\n\n[[kpi]]\nmetric = "basket_value_eur"\nname = "basket"\n')
    scraper = Scraper(r, app.url, load_map(mapping))
    rng = random.Random(3)
    t0 = 1_000.0  # the scraper's clock: elapsed times are exact, whatever the machine's speed
    _traffic(app, 30, rng)  # before the first scrape: part of the baseline, never counted
    app.basket.set(42.5)
    first = scraper.scrape_once(now=t0)
    assert first.elapsed is None and first.requests == {}

    phase1 = _traffic(app, 120, rng)
    _next_window(r)
    report1 = scraper.scrape_once(now=t0 + 1)  # one window of traffic: taken as it is
    assert report1.requests == {"shop": 120} and report1.increase == {"shop": 120}
    assert report1.kpis == {"shop": {"basket": 42.5}}

    app.restart()
    phase2 = _traffic(app, 60, rng)  # fewer than before for some series, more for none: resets by _created too
    _next_window(r)
    report2 = scraper.scrape_once(now=t0 + 4)  # three windows' worth: one window holds a third of it
    assert report2.resets >= 6  # 3 handlers × 3 codes of counters, 3 histograms
    assert report2.increase == {"shop": 60} and report2.requests == {"shop": 20}

    seal_all(r, now=time.time() + 5)
    fps = [fp for fp in fingerprints.read(r, "shop") if fp.get("requests") > 0]
    assert [fp.get("requests") for fp in fps] == [120, 20]
    fp1 = fps[0]
    assert fp1.get("rate_5xx") * 120 == sum(1 for _, c, _ in phase1 if c >= 500)
    assert fp1.get("rate_4xx") * 120 == sum(1 for _, c, _ in phase1 if 400 <= c < 500)
    ms1 = np.array([s * 1000 for _, _, s in phase1])
    assert fp1.get("latency_mean_ms") == pytest.approx(ms1.mean(), rel=1e-9)
    for q, name in ((0.5, "latency_p50_ms"), (0.95, "latency_p95_ms"), (0.99, "latency_p99_ms")):
        low, high = _bucket_interval(ms1, q)
        assert low <= fp1.get(name) <= high, name
    # after the reset, the window's share of the traffic keeps the mix and the latency
    fp2 = fps[1]
    ms2 = np.array([s * 1000 for _, _, s in phase2])
    assert fp2.get("rate_5xx") == pytest.approx(sum(1 for _, c, _ in phase2 if c >= 500) / 60, abs=1 / 20)
    assert fp2.get("latency_mean_ms") == pytest.approx(ms2.mean(), rel=1e-9)
    low, high = _bucket_interval(ms2, 0.5)
    assert low <= fp2.get("latency_p50_ms") <= high
    assert fp1.kpis == {"basket": 42.5}
    assert r.hget(KEYS.state("shop"), "sparse") == b"1"  # scrapes further apart than a window


def test_unknown_families_are_reported(app: App, r: redis.Redis) -> None:
    Gauge("queue_depth", "Depth", registry=app.registry).set(3)
    scraper = Scraper(r, app.url)
    scraper.scrape_once(now=1.0)
    report = scraper.scrape_once(now=16.0)
    assert report.unknown["queue_depth"] == 1
    assert "http_requests" not in report.unknown


def test_an_unreachable_target_is_a_clear_error(r: redis.Redis) -> None:
    with pytest.raises(ScrapeError, match=r"cannot scrape http://127\.0\.0\.1:9/metrics"):
        Scraper(r, "http://127.0.0.1:9/metrics").scrape_once()


def test_mapping_file_errors_name_the_key(tmp_path) -> None:
    bad = tmp_path / "m.toml"
    bad.write_text('[[kpi]]\nmetric = "x"\nexpected_range = [5, 1]\n')
    with pytest.raises(MapError, match=r"kpi\[0\].expected_range: min 5 is above max 1"):
        load_map(bad)
    bad.write_text('[http]\nendpoint_label = ["handler"]\n')
    with pytest.raises(MapError, match="unknown key"):
        load_map(bad)


def test_scrape_command_runs_against_the_app(app: App, redis_url: str, r: redis.Redis) -> None:
    _traffic(app, 9, random.Random(1))
    proc = subprocess.run(
        [sys.executable, "-m", "anomalydesk.cli", "scrape", "--target", app.url, "--interval", "0.2",
         "--count", "2", "--redis", redis_url, "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    reports = [json.loads(chunk) for chunk in proc.stdout.replace("}\n{", "}\x00{").split("\x00")]
    assert len(reports) == 2 and reports[0]["elapsed"] is None
    assert reports[1]["elapsed"] > 0 and reports[1]["increase"] == {}  # no traffic between the two scrapes
    assert r.hget(KEYS.config, "window_seconds") is not None  # the command set the store up
    bad = subprocess.run([sys.executable, "-m", "anomalydesk.cli", "scrape", "--target", "ftp://x",
                          "--redis", redis_url], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--target must be an http(s) URL" in bad.stderr
