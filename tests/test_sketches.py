"""The gears library's own sketches (the `functions` backend of stock Redis 7) against exact counts."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from anomalydesk.config import SketchSettings
from anomalydesk.store import admin, sketches
from anomalydesk.store.sink import IngestSink

pytestmark = pytest.mark.backends  # runs once per sketch backend (conftest.BOTH_BACKENDS)

SERVICE = "zipf"


def _zipf_stream(n_keys: int, n_events: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_keys + 1) ** 1.1
    return rng.choice(n_keys, size=n_events, p=weights / weights.sum())


def test_interaction_filter_false_positive_rate_within_bound(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=5, filter_capacity=10_000, filter_error=0.001))
    members = [f"GET:/m/x{i}" for i in range(25_000)]  # 2.5x capacity: the filter grows layers
    sink = IngestSink(r, max_batch=100_000)
    idx = np.arange(len(members))
    sink.add_arrays("svc", members, idx, np.full(len(idx), 200), np.ones(len(idx)))
    sink.close()
    info = sketches.info(r, "svc")
    assert info["filter"]["layers"] >= 2 and info["filter"]["items"] <= len(members)
    assert all(sketches.has_interactions(r, "svc", members))  # no false negatives
    strangers = [f"GET:/s/y{i}" for i in range(25_000)]
    false_positives = sum(sketches.has_interactions(r, "svc", strangers))
    assert false_positives / len(strangers) <= 2 * 0.001  # documented bound for a grown filter


def test_new_interactions_counted_once_per_endpoint(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=5))
    sink = IngestSink(r, replay=True)
    names = [f"GET:/n/e{i}" for i in range(300)]
    t0 = 1_790_000_000.0
    for repeat in range(3):  # the same 300 endpoints, three windows
        idx = np.arange(300)
        sink.add_arrays("svc", names, idx, np.full(300, 200), np.ones(300), np.full(300, t0 + 5 * repeat + 1))
    sink.add_arrays("svc", names[:1], np.zeros(1, dtype=int), np.full(1, 200), np.ones(1), np.full(1, t0 + 16))
    sink.close()
    from anomalydesk.store import fingerprints

    fps = fingerprints.read(r, "svc")
    assert [fp.get("new_interactions") for fp in fps] == [300, 0, 0]
    assert [fp.get("endpoints_distinct") for fp in fps] == pytest.approx([300, 300, 300], rel=0.02)  # HLL


def test_status_counts_and_unknown_service(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=5))
    sink = IngestSink(r)
    status = np.array([200] * 90 + [503] * 7 + [404] * 3)
    sink.add_arrays("api", ["GET:/a"], np.zeros(100, dtype=int), status, np.ones(100))
    sink.close()
    assert sketches.status_counts(r, "api", [200, 503, 404, 500]) == {200: 90, 503: 7, 404: 3, 500: 0}
    with pytest.raises(sketches.NoSketches, match="has sent nothing"):
        sketches.topk(r, "nobody")
