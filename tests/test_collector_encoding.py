"""The small-batch encoder (plain Python, the collector's single events) gives numpy's payloads (pure unit tests)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from anomalydesk.config import SketchSettings
from anomalydesk.events import BusinessMetric, Metric
from anomalydesk.store import encoding
from anomalydesk.store.encoding import columns_of, config_from, encode

CONFIG = config_from(SketchSettings(), "functions")
ENDPOINTS = ("GET:/users/{id}", "POST:/orders", "GET:/items/{id}", "PUT:/cart/{id}")


def _events(n: int, seed: int) -> list[Metric | BusinessMetric]:
    rng = np.random.default_rng(seed)
    events: list[Metric | BusinessMetric] = [
        Metric(str(rng.choice(["orders", "users"])), str(rng.choice(ENDPOINTS)),
               int(rng.choice([200, 201, 302, 404, 429, 500, 503])),
               float(rng.choice([0.0, 0.05, 0.1, 3.0, 1e6])) if i % 17 == 0 else float(rng.lognormal(3, 1)),
               1.7e9 + float(rng.uniform(0, 30)))
        for i in range(n)
    ]
    events.append(BusinessMetric("orders", "revenue", 12.5, 0.0, 10.0, 1.7e9 + 3))
    return events


def _decoded(payloads: list[tuple[str, bytes]]) -> list[tuple[str, dict]]:
    out = []
    for service, body in payloads:
        payload = orjson.loads(body)
        for group in payload["w"]:
            group["ls"] = round(group["ls"], 6)  # summation order may differ in the last bits
        out.append((service, payload))
    return out


@pytest.mark.parametrize("replay", [False, True])
@pytest.mark.parametrize("n", [1, 7, 300])
def test_small_and_numpy_paths_give_the_same_payloads(n: int, replay: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    events = _events(n, seed=n)
    small = encode(columns_of(events), CONFIG, replay, "batch-1")
    monkeypatch.setattr(encoding, "SMALL_BATCH_EVENTS", 0)  # force the numpy path
    vectorised = encode(columns_of(events), CONFIG, replay, "batch-1")
    assert _decoded(small) == _decoded(vectorised)
    windows = {g["win"] for _, p in _decoded(small) for g in p["w"]}
    if not replay:
        assert windows == {0}  # live: the server's clock picks the window
    elif n == 300:
        assert len(windows) > 1  # replay: 30 s of timestamps span several windows


def test_small_path_counts_add_up() -> None:
    events = [Metric("orders", "GET:/a", 200, 10.0, None), Metric("orders", "GET:/a", 404, 20.0, None),
              Metric("orders", "POST:/b", 503, 0.01, None)]
    [(service, body)] = encode(columns_of(events), CONFIG, False, "b")
    [group] = orjson.loads(body)["w"]
    assert service == "orders"
    assert (group["n"], group["e4"], group["e5"], group["ls"]) == (3, 1, 1, 30.01)
    assert group["ep"] == ["GET:/a", 2, "POST:/b", 1]
    assert group["st"] == [200, 1, 404, 1, 503, 1]
    assert sum(group["h"][1::2]) == 3 and group["h"][0] == 0  # 0.01 ms falls in bucket 0


def test_replay_without_timestamp_is_refused_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    events = [Metric("orders", "GET:/a", 200, 10.0, None)]
    with pytest.raises(ValueError, match="timestamp"):
        encode(columns_of(events), CONFIG, True, "b")
    monkeypatch.setattr(encoding, "SMALL_BATCH_EVENTS", 0)
    with pytest.raises(ValueError, match="timestamp"):
        encode(columns_of(events), CONFIG, True, "b")
