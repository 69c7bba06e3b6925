"""One call per sketch per batch: a batch of many endpoints leaves the sketches exactly as the same
endpoints sent one call each do (gears library 6: bulk Count-Min and filter updates, BF.MADD)."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from anomalydesk.config import SketchSettings
from anomalydesk.store import admin, fingerprints, sketches
from anomalydesk.store.keys import Keys
from anomalydesk.store.sink import IngestSink

pytestmark = pytest.mark.backends  # runs once per sketch backend (conftest.BOTH_BACKENDS)

# a first filter layer of about 900 bytes, so one endpoint per call takes the per-item path and the
# 1,200 of one call the bulk path (the library's BULK_BYTES_PER_ITEM is 512); the filter grows a layer
# midway through the batch
SETTINGS = SketchSettings(window_seconds=5, filter_capacity=500, filter_error=0.001)
NAMES = [f"GET:/bulk/e{i}" for i in range(1_200)]
COUNTS = np.arange(len(NAMES)) % 7 + 1


def _send(sink: IngestSink, service: str, names: list[str], counts: np.ndarray) -> None:
    idx = np.repeat(np.arange(len(names)), counts)
    sink.add_arrays(service, names, idx, np.where(idx % 3 == 0, 503, 200), np.ones(len(idx)))
    sink.flush()


def _one_by_one(sink: IngestSink, service: str) -> None:
    for name, count in zip(NAMES, COUNTS, strict=True):
        _send(sink, service, [name], np.array([count]))


def _sketch_bytes(r: redis.Redis, service: str) -> dict[str, bytes | None]:
    tag = Keys().tag(service)
    layers = int(r.hget(f"{tag}:state", "bf_layers") or 0)
    out = {k: r.get(f"{tag}:{k}") for k in ("cms:ep", "cms:st")}
    for i in range(1, layers + 1):
        out[f"bf:{i}"] = r.get(f"{tag}:bf:{i}")
        out[f"bf_n{i}"] = r.hget(f"{tag}:state", f"bf_n{i}")
    return out


def test_a_batch_updates_the_sketches_as_one_call_per_endpoint(r: redis.Redis, sketch_backend: str) -> None:
    admin.setup(r, SETTINGS)
    sink = IngestSink(r, max_batch=100_000)
    _one_by_one(sink, "single")
    _send(sink, "single", NAMES, COUNTS)  # every endpoint again, in one call: nothing is new
    _send(sink, "batch", NAMES, COUNTS)
    _one_by_one(sink, "batch")
    sink.close()

    strangers = [f"GET:/bulk/s{i}" for i in range(2_000)]
    for service in ("single", "batch"):
        assert sketches.info(r, service)["filter"]["layers"] >= 2
    assert sketches.info(r, "single")["filter"]["items"] == sketches.info(r, "batch")["filter"]["items"]
    assert sketches.endpoint_counts(r, "single", NAMES) == sketches.endpoint_counts(r, "batch", NAMES)
    truth = dict(zip(NAMES, (2 * COUNTS).tolist(), strict=True))
    assert all(est >= truth[name] for name, est in sketches.endpoint_counts(r, "batch", NAMES).items())
    assert sketches.status_counts(r, "single", [200, 503]) == sketches.status_counts(r, "batch", [200, 503])
    assert all(sketches.has_interactions(r, "batch", NAMES))
    assert sketches.has_interactions(r, "single", strangers) == sketches.has_interactions(r, "batch", strangers)
    if sketch_backend == "functions":  # the library's own sketches: the very same bytes
        single, batch = _sketch_bytes(r, "single"), _sketch_bytes(r, "batch")
        assert single == batch and len(single) >= 4


def test_new_interactions_of_a_batch_are_its_first_sightings(r: redis.Redis) -> None:
    admin.setup(r, SETTINGS)
    sink = IngestSink(r, replay=True, max_batch=100_000)
    t0 = 1_790_000_000.0
    items = [0]
    for window, names in enumerate((NAMES[:700], NAMES, NAMES[:1])):  # 700 new; 500 of 1,200 new; none new
        idx = np.arange(len(names))
        sink.add_arrays("svc", names, idx, np.full(len(idx), 200), np.ones(len(idx)),
                        np.full(len(idx), t0 + 5 * window + 1))
        sink.flush()
        items.append(sketches.info(r, "svc")["filter"]["items"])
    sink.close()
    fps = fingerprints.read(r, "svc")
    new = [fp.get("new_interactions") for fp in fps]
    assert len(new) == 2  # the third window is still open
    assert new == [items[1] - items[0], items[2] - items[1]]  # a filter false positive is not new
    assert 690 <= new[0] <= 700 and 490 <= new[1] <= 500  # bound: 2 x 0.001 per check
    assert items[3] == items[2]  # the last window's endpoint is known


def test_topk_takes_over_the_smallest_counter_by_name_in_byte_order(r: redis.Redis, sketch_backend: str) -> None:
    """Space-Saving (functions backend) against a reference: ties at the smallest count go to the name
    first in byte order (ZPOPMIN's), whatever the server's locale makes of Lua's string comparison."""
    if sketch_backend != "functions":
        pytest.skip("native Top-K is RedisBloom's HeavyKeeper (tests/test_backends.py)")
    admin.setup(r, SketchSettings(window_seconds=5, topk=10))  # 100 counters
    names = [f"GET:/{c}{i}" for i in range(150) for c in ("a", "B", "_")]
    rng = np.random.default_rng(4)
    sink = IngestSink(r, max_batch=100_000)
    reference: dict[str, float] = {}
    for _ in range(600):
        i, count = int(rng.integers(0, len(names))), int(rng.integers(1, 4))
        _send(sink, "svc", [names[i]], np.array([count]))
        name = names[i]
        if name in reference or len(reference) < 100:
            reference[name] = reference.get(name, 0) + count
        else:
            smallest = min(reference, key=lambda n: (reference[n], n.encode()))
            reference[name] = reference.pop(smallest) + count
    sink.close()
    stored = {m.decode(): s for m, s in r.zrange(Keys().topk("svc"), 0, -1, withscores=True)}
    assert stored == reference
