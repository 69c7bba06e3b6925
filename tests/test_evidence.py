"""Evidence weighting, rule-owned features and per-input extremes in train() and the model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomalydesk import config
from anomalydesk.detect.features import evidence_weights, shrink
from anomalydesk.detect.forest import ModelFormatError, seal
from anomalydesk.detect.model import Model
from anomalydesk.detect.score import score, score_batch
from anomalydesk.detect.train import TrainParams, train
from anomalydesk.fingerprint import FEATURE_INDEX, FEATURE_NAMES, N_FEATURES

COL = FEATURE_INDEX


def _service(n: int, seed: int) -> np.ndarray:
    """Service-like windows with a daily-ish swing in traffic (40 to 400 requests) and rare 5xx."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, N_FEATURES))
    requests = rng.poisson(220 + 180 * np.sin(np.arange(n) / 300.0))
    X[:, COL["requests"]] = np.maximum(requests, 40)
    X[:, COL["rate_5xx"]] = rng.binomial(X[:, COL["requests"]].astype(int), 0.004) / X[:, COL["requests"]]
    X[:, COL["rate_4xx"]] = rng.uniform(0.01, 0.03, n)
    X[:, COL["latency_p50_ms"]] = rng.normal(40, 3, n)
    X[:, COL["latency_p95_ms"]] = rng.normal(150, 10, n)
    X[:, COL["latency_p99_ms"]] = rng.normal(210, 15, n)
    X[:, COL["latency_mean_ms"]] = rng.normal(55, 4, n)
    X[:, COL["endpoints_distinct"]] = 7
    X[:, COL["top_endpoint_share"]] = rng.uniform(0.2, 0.3, n)
    X[:, COL["endpoint_entropy"]] = rng.normal(3.0, 0.1, n)
    X[:, COL["kpi_level"]] = rng.normal(1.0, 0.05, n)
    return X


@pytest.fixture(scope="module")
def model() -> Model:
    return train(_service(3000, seed=1), TrainParams(trees=60))


def test_weights_are_requests_over_requests_plus_pseudo_count() -> None:
    X = np.array([[10.0, 0.5], [90.0, 0.5]])
    w = evidence_weights(X, 0, np.array([0.0, 10.0]))
    assert w.tolist() == [[1.0, 0.5], [1.0, 0.9]]
    assert shrink(np.array([[3.0, 3.0]]), np.array([1.0, 1.0]), np.array([[1.0, 0.5]])).tolist() == [[3.0, 2.0]]
    assert evidence_weights(X, None, np.array([0.0, 10.0])) is None


def test_a_ratio_is_judged_by_the_requests_behind_it(model: Model) -> None:
    assert model.evidence_column == FEATURE_NAMES.index("requests")
    assert model.evidence_prior[COL["rate_5xx"]] == config.EVIDENCE_PSEUDO_REQUESTS["rate_5xx"]
    rows = _service(model.context_rows, seed=2)
    wiggle = np.arange(model.context_rows) % 3  # real counts move a little (constant ones are "stuck")
    rows[:, COL["requests"]] = 220 + wiggle
    rows[:, COL["rate_5xx"]] = 0.0
    quiet, busy = rows.copy(), rows.copy()
    quiet[:, COL["requests"]] = 45 + wiggle  # a quiet hour …
    quiet[-1, COL["rate_5xx"]] = 1 / 45  # … and one error in 45 requests
    busy[-1, COL["rate_5xx"]] = 0.3  # a real error burst: 66 errors in 220 requests
    # the baseline follows the traffic's swing: a quiet hour is measured against a quiet level, as live
    quiet_level = np.median(model.adjusted(np.vstack([quiet[:1]] * 8)), axis=0)
    assert not score(model, quiet, level=quiet_level).anomalous
    result = score(model, busy)
    assert result.anomalous and result.reasons[0]["feature"] == "rate_5xx"


def test_without_evidence_the_same_quiet_window_weighs_more(model: Model) -> None:
    plain = train(_service(3000, seed=1), TrainParams(trees=60, evidence=False))
    assert plain.evidence_prior is None
    rows = _service(plain.context_rows, seed=2)
    rows[:, COL["rate_5xx"]] = 0.0
    rows[-1, COL["requests"]], rows[-1, COL["rate_5xx"]] = 45, 2 / 45
    weighted = model.transform(rows)[-1, COL["rate_5xx"]]
    unweighted = plain.transform(rows)[-1, COL["rate_5xx"]]
    assert abs(weighted) < abs(unweighted) / 2


def test_out_of_range_business_values_are_left_to_the_rules(model: Model) -> None:
    # never non-zero in training: without the rule exclusion one stray value was a z in the hundreds
    assert model.ignored is not None and model.ignored[COL["kpi_out_of_range"]]
    rows = _service(model.context_rows, seed=3)
    stray = rows.copy()
    stray[-1, COL["kpi_out_of_range"]] = 2
    assert score_batch(model, stray)[-1] == pytest.approx(score_batch(model, rows)[-1])


def test_a_heavy_tailed_input_does_not_hide_a_new_endpoint() -> None:
    X = _service(12_000, seed=4)
    X[:2, COL["new_interactions"]] = [7, 2]  # start-up: every endpoint is new once
    X[::2000, COL["latency_p99_ms"]] = 3000.0  # a few very slow requests: a heavy-tailed input
    m = train(X, TrainParams(trees=60))
    rows = _service(m.context_rows, seed=5)
    rows[-2:, COL["endpoints_distinct"]] = 11
    rows[-2, COL["new_interactions"]] = 4
    result = score(m, rows)
    assert result.anomalous
    assert result.reasons[0]["feature"] in {"endpoints_distinct", "new_interactions"}


def test_new_fields_survive_json_and_older_models_still_load(model: Model) -> None:
    again = Model.from_json(model.to_json())
    assert np.array_equal(again.extreme, model.extreme) and again.extreme_power == model.extreme_power
    assert np.array_equal(again.evidence_prior, model.evidence_prior)
    assert np.array_equal(again.ignored, model.ignored)
    rows = _service(20, seed=6)
    assert np.allclose(score_batch(again, rows), score_batch(model, rows))
    payload = json.loads(model.to_json())["payload"]
    for key in ("evidence_column", "evidence_prior", "extreme", "extreme_power", "ignored"):
        payload.pop(key)
    older = Model.from_json(seal(payload))
    assert older.extreme is None and older.evidence_prior is None and older.ignored is None


@pytest.mark.parametrize(("key", "value", "message"), [
    ("extreme", [1.0, 2.0], "'extreme' must be"),
    ("evidence_column", 99, "'evidence_column' must be a feature index"),
    ("evidence_prior", [-1.0] * N_FEATURES, "'evidence_prior' must be"),
    ("ignored", [2] * N_FEATURES, "'ignored' must be"),
    ("extreme_power", 3, "'extreme_power' must be a number in"),
])
def test_malformed_new_fields_are_refused(model: Model, key: str, value: object, message: str) -> None:
    payload = json.loads(model.to_json())["payload"]
    payload[key] = value
    with pytest.raises(ModelFormatError, match=message):
        Model.from_json(seal(payload))
