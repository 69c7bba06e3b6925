"""Count-Min Sketch and Top-K against exact counts of a Zipf stream (100k keys), on both sketch backends."""

from __future__ import annotations

import math
from collections.abc import Iterator

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


@pytest.fixture(scope="module")
def zipf_service(redis_server) -> Iterator[tuple[redis.Redis, np.ndarray, list[str], int]]:
    """100k distinct endpoints, 1M events in a Zipf(1.1) mix, ingested in batches (once per module)."""
    r = redis_server.client()
    r.flushall()
    admin.setup(r, SketchSettings(window_seconds=5))
    n_keys, n_events = 100_000, 1_000_000
    stream = _zipf_stream(n_keys, n_events)
    names = [f"GET:/item/k{i}" for i in range(n_keys)]
    sink = IngestSink(r, max_batch=200_000)
    for chunk in np.array_split(stream, 10):
        sink.add_arrays(SERVICE, names, chunk, np.full(len(chunk), 200), np.full(len(chunk), 3.0))
    sink.close()
    yield r, np.bincount(stream, minlength=n_keys), names, n_events
    r.close()


def test_count_min_sketch_within_its_error_bound(zipf_service) -> None:
    r, exact, names, total = zipf_service
    info = sketches.info(r, SERVICE)
    width, depth = info["cms"]["width"], info["cms"]["depth"]
    bound = math.e / width * total  # additive error bound ε·N, exceeded with probability ≤ e^-depth
    estimates = np.empty(len(names), dtype=np.int64)
    for start in range(0, len(names), 5_000):
        batch = names[start:start + 5_000]
        counts = sketches.endpoint_counts(r, SERVICE, batch)
        estimates[start:start + 5_000] = [counts[n] for n in batch]
    assert (estimates >= exact).all()  # a Count-Min Sketch never under-counts
    violations = np.mean(estimates - exact > bound)
    assert violations <= math.exp(-depth), f"{violations:.4%} of keys beyond ε·N={bound:.0f}"
    # and the heavy keys are close in relative terms
    assert estimates[0] == pytest.approx(exact[0], rel=0.01)


def test_topk_finds_the_true_heavy_hitters(zipf_service, sketch_backend: str) -> None:
    r, exact, names, total = zipf_service
    listed = sketches.topk(r, SERVICE)
    info = sketches.info(r, SERVICE)["topk"]
    k, counters = info["k"], info["width"]
    assert len(listed) == k and counters == max(100, 10 * k)
    true_order = np.argsort(-exact)
    heavy = [names[i] for i in true_order[:k] if exact[i] > total / counters]
    assert heavy, "the stream should have heavy hitters"
    found = {name for name, _ in listed}
    if sketch_backend == "functions":  # Space-Saving: every key above N / counters is listed, always
        assert set(heavy) <= found
    else:  # HeavyKeeper decays at random: the documented bound (docs/engine.md), recall of the true top-k
        # ≥ 0.9. Until library version 9 it missed the third of ten in 7 of 31 runs: a batch's endpoints went
        # to TOPK.INCRBY in table order (test_heavy_endpoints_late_in_a_batch_still_reach_the_topk); 0 of 40 since
        top = {names[i] for i in true_order[:k]}
        assert len(top & found) >= 0.9 * k, sorted(top - found)
    for name, estimate in listed:
        truth = exact[names.index(name)]
        if sketch_backend == "functions":  # Space-Saving over-estimates by at most N / counters
            assert truth <= estimate <= truth + total / counters
        else:  # HeavyKeeper never over-estimates; its decay can under-count (measured 0.82–1.0 of the truth)
            assert 0 < estimate <= truth


def test_heavy_endpoints_late_in_a_batch_still_reach_the_topk(redis_server, sketch_backend: str) -> None:
    """One batch: 10 heavy endpoints (8,000 events each) among 1,000 moderate ones (100 each). HeavyKeeper
    lets an item take a counter held by another only by decaying it unit by unit (chance 0.9^count), so an
    endpoint reaching its counters after a holder of 100 could never take them: sent in table order, the
    third heaviest of the Zipf stream above went missing in about one run in four. The library sends a
    batch's endpoints heaviest first, so all 10 are listed (on functions, Space-Saving lists them anyway)."""
    r = redis_server.client()
    service = "late-heavy"
    admin.setup(r, SketchSettings(window_seconds=5))
    heavy = [f"GET:/item/heavy{i}" for i in range(10)]
    moderate = [f"GET:/item/m{i}" for i in range(1_000)]
    names = moderate + heavy  # the heavy ones last in the batch as built
    idx = np.concatenate([np.repeat(np.arange(1_000), 100), np.repeat(np.arange(1_000, 1_010), 8_000)])
    with IngestSink(r, max_batch=len(idx)) as sink:
        sink.add_arrays(service, names, idx, np.full(len(idx), 200), np.full(len(idx), 3.0))
    listed = {name for name, _ in sketches.topk(r, service)}
    assert set(heavy) <= listed, sorted(set(heavy) - listed)
    r.close()
