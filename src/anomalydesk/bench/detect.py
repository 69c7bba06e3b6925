"""Detection benchmark: live scoring latency with Redis round trips, and training on windows from Redis.

- `score_p50_ms` / `score_p99_ms`: one fingerprint is appended to a service's stream (not timed), then
  one detector step is timed: lease renewals, service list, model index, silences, XREADGROUP of the
  fingerprint, the state and incident reads, numpy scoring with the context windows, and the Lua
  commit that writes state (and alerts) and XACKs. That is everything the live detector does per
  fingerprint, so it is an upper bound on the per-fingerprint cost.
- `sklearn_score_p99_ms`: scikit-learn's `IsolationForest.score_samples` on one row at a time,
  fitted on the same derived features (same trees and sample size), no Redis.
- `train_s`: `training_run.train_service` on 10,000 windows (quick: 3,000): reading them from Redis,
  training (out-of-bag calibration included) and storing the model.
- `sklearn_fit_s`: `IsolationForest.fit` on the same windows' derived features, in the same run.

Fingerprints are synthetic (a noisy daily cycle per feature) and written in the gears library's
stream format under a private key prefix that is deleted afterwards.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import redis
from sklearn.ensemble import IsolationForest

from anomalydesk import config
from anomalydesk.fingerprint import FEATURE_NAMES, SCHEMA_VERSION
from anomalydesk.store.keys import Keys

SERVICE = "bench-svc"
PREFIX = "adbench:"
WINDOWS, WINDOWS_QUICK = 10_000, 3_000
SCORED, SCORED_QUICK = 2_000, 300
_BASE = {"requests": 200.0, "rate_4xx": 0.03, "rate_5xx": 0.005, "latency_p50_ms": 40.0, "latency_p95_ms": 120.0,
         "latency_p99_ms": 250.0, "latency_mean_ms": 55.0, "endpoints_distinct": 8.0, "new_interactions": 0.0,
         "top_endpoint_share": 0.3, "endpoint_entropy": 2.6, "kpi_level": 1.0, "kpi_out_of_range": 0.0}  # fmt: skip


def synthetic(n: int, start_window: int, seed: int = 5, window_s: int = config.DEFAULT_WINDOW_SECONDS) -> np.ndarray:
    """(n, features) plausible fingerprints: a daily cycle on volume, noise everywhere."""
    rng = np.random.default_rng(seed)
    t = (start_window + np.arange(n)) * window_s
    cycle = 1.0 + 0.5 * np.sin(2 * np.pi * t / 86400.0)
    base = np.array([_BASE[name] for name in FEATURE_NAMES])
    X = base * (1.0 + 0.08 * rng.standard_normal((n, len(base))))
    X[:, FEATURE_NAMES.index("requests")] *= cycle
    X[:, FEATURE_NAMES.index("new_interactions")] = rng.poisson(0.02, n)
    X[:, FEATURE_NAMES.index("kpi_out_of_range")] = 0
    return np.abs(X)


def _append(r: redis.Redis, keys: Keys, rows: np.ndarray, first_window: int, window_s: int) -> None:
    pipe = r.pipeline(transaction=False)
    for i, row in enumerate(rows):
        w = first_window + i
        fields: dict[str, Any] = dict(zip(FEATURE_NAMES, row.tolist(), strict=True))
        fields.update(window=w, start=w * window_s, schema=SCHEMA_VERSION, no_data=0, kpis="")
        pipe.xadd(keys.fingerprints(SERVICE), fields, id=f"{w * window_s * 1000}-1")
    pipe.execute()


def _cleanup(r: redis.Redis) -> None:
    for key in r.scan_iter(match=f"{PREFIX}*", count=1000):
        r.delete(key)


def _percentile_ms(samples: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(samples) * 1000.0, q)), 3)


def run(quick: bool, redis_url: str | None) -> dict[str, Any]:
    """Measure and return {score_p50_ms, score_p99_ms, sklearn_score_p99_ms, train_s, sklearn_fit_s}.

    Without `redis_url` the measurement runs on a throwaway redis-server, as the other parts do.
    """
    from anomalydesk.bench.server import throwaway

    with throwaway(redis_url) as url:
        return _measure(quick, url)


def _measure(quick: bool, redis_url: str) -> dict[str, Any]:
    from anomalydesk.detect.detector import Detector
    from anomalydesk.detect.service_state import load_model
    from anomalydesk.detect.train import TrainParams
    from anomalydesk.detect.training_run import train_service

    n_train, n_scored = (WINDOWS_QUICK, SCORED_QUICK) if quick else (WINDOWS, SCORED)
    window_s = config.DEFAULT_WINDOW_SECONDS
    keys = Keys(PREFIX)
    r = redis.Redis.from_url(redis_url)
    try:
        _cleanup(r)
        r.hset(keys.config, "window_seconds", window_s)
        r.sadd(keys.services, SERVICE)
        first = int(time.time() // window_s) - n_train - n_scored - 10
        X = synthetic(n_train + n_scored, first)
        _append(r, keys, X[:n_train], first, window_s)
        params = TrainParams(min_windows=min(config.MIN_TRAINING_WINDOWS, n_train))

        began = time.perf_counter()
        outcome = train_service(r, SERVICE, params=params, keys=keys)
        train_s = time.perf_counter() - began
        if outcome.version is None:
            raise RuntimeError(f"benchmark training did not produce a model: {outcome.skipped}")

        _, model = load_model(r, SERVICE, keys=keys)
        Z = model.transform(X[:n_train], (first + np.arange(n_train)) * float(window_s))
        reference = IsolationForest(n_estimators=params.trees, max_samples=params.max_samples, random_state=0)
        began = time.perf_counter()
        reference.fit(Z)
        sklearn_fit_s = time.perf_counter() - began
        sk_times = []
        for i in range(min(n_scored, Z.shape[0])):
            t = time.perf_counter()
            reference.score_samples(Z[i : i + 1])
            sk_times.append(time.perf_counter() - t)

        detector = Detector(r, keys=keys, seal=False, block_ms=1, name="bench")
        detector.step()  # joins the group, takes the service, loads the model
        while detector.step().processed:
            pass
        times = []
        for i in range(n_scored):
            _append(r, keys, X[n_train + i : n_train + i + 1], first + n_train + i, window_s)
            t = time.perf_counter()
            result = detector.step()
            times.append(time.perf_counter() - t)
            if result.processed != 1:
                raise RuntimeError(f"benchmark detector step handled {result.processed} fingerprints, not 1")
        detector.release()
        return {
            "score_p50_ms": _percentile_ms(times, 50),
            "score_p99_ms": _percentile_ms(times, 99),
            "sklearn_score_p99_ms": _percentile_ms(sk_times, 99),
            "train_s": round(train_s, 3),
            "sklearn_fit_s": round(sklearn_fit_s, 3),
            "windows": n_train,
            "scored": n_scored,
        }
    finally:
        _cleanup(r)
        r.close()
