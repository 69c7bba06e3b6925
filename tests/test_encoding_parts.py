"""How a high-cardinality batch is split into FCALLs: by the distinct endpoints it holds (pure unit tests)."""

from __future__ import annotations

import numpy as np
import orjson

from anomalydesk.config import SketchSettings
from anomalydesk.store.encoding import MAX_ENDPOINTS_PER_CALL, Columns, config_from, encode

CONFIG = config_from(SketchSettings(), "functions")
NAMES = [f"GET:/p/e{i}" for i in range(50_000)]


def _payloads(idx: np.ndarray, ts: np.ndarray | None = None, replay: bool = False) -> list[dict]:
    cols = Columns()
    cols.add_arrays(NAMES, idx, np.full(len(idx), 200), np.ones(len(idx)), ts)
    return [orjson.loads(p) for _, p in encode({"svc": cols}, CONFIG, replay, "b")]


def test_a_large_vocabulary_with_few_endpoints_in_the_batch_is_one_call() -> None:
    idx = np.random.default_rng(1).integers(0, 50_000, 1_000)  # the producer's list names 50,000
    (payload,) = _payloads(idx)
    assert payload["batch"] == "b"
    assert len(payload["w"][0]["ep"]) // 2 == len(np.unique(idx))


def test_a_window_of_many_endpoints_is_split_into_full_parts() -> None:
    rng = np.random.default_rng(2)
    idx = np.concatenate([rng.permutation(50_000)[:5_000], rng.integers(0, 50_000, 3_000)])
    ts = np.concatenate([np.full(5_000, 1_790_000_001.0), np.full(3_000, 1_790_000_006.0)])
    payloads = _payloads(idx, ts, replay=True)
    parts = [(p["w"][0]["win"], len(p["w"][0]["ep"]) // 2, p["w"][0]["n"], p["batch"]) for p in payloads]
    first, second = 1_790_000_001 // 5, 1_790_000_006 // 5
    distinct_second = len(np.unique(idx[5_000:]))
    assert [(w, e) for w, e, _, _ in parts] == [(first, MAX_ENDPOINTS_PER_CALL)] * 2 + [(first, 1_000)] + [
        (second, e) for e in ([MAX_ENDPOINTS_PER_CALL, distinct_second - MAX_ENDPOINTS_PER_CALL]
                              if distinct_second > MAX_ENDPOINTS_PER_CALL else [distinct_second])]
    assert sum(n for w, _, n, _ in parts if w == first) == 5_000
    assert sum(n for w, _, n, _ in parts if w == second) == 3_000
    assert [b for *_, b in parts] == [f"b:{i}" for i in range(len(parts))]
    counted: dict[str, int] = {}
    for p in payloads:  # every endpoint in one part of its window only
        ep = p["w"][0]["ep"]
        for name, count in zip(ep[::2], ep[1::2], strict=True):
            key = f"{p['w'][0]['win']}:{name}"
            assert key not in counted
            counted[key] = count
    assert sum(counted.values()) == 8_000
