"""train(): progress, cancel, minimum history, threshold from the data, daily cycle, safe model blobs."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from anomalydesk import config
from anomalydesk.detect.forest import ModelFormatError, seal
from anomalydesk.detect.model import Model
from anomalydesk.detect.score import score_batch
from anomalydesk.detect.thresholds import training_contamination, upper_quantile
from anomalydesk.detect.train import (
    InsufficientHistory,
    TrainingCancelled,
    TrainParams,
    train,
)

NAMES = ("a", "b", "c")
DAY = 86_400.0
STEP = 300.0  # 5-minute windows: 288 a day


def _normal(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.normal(10, 1, n), rng.gamma(2.0, 1.0, n), np.full(n, 3.0)])


def _params(**kw) -> TrainParams:
    return TrainParams(feature_names=NAMES, **{"trees": 30, "chunk_trees": 10, "min_windows": 100, **kw})


def test_progress_is_real_and_reaches_one() -> None:
    seen: list[float] = []
    train(_normal(600), _params(trees=40), progress=seen.append)
    assert seen[0] == 0.0 and seen[-1] == 1.0
    assert all(b >= a for a, b in itertools.pairwise(seen))
    assert len([p for p in seen if 0.0 < p < 1.0]) == 4  # one step per chunk of 10 trees


def test_cancel_raises_and_stops_growing() -> None:
    seen: list[float] = []
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(TrainingCancelled, match="after 20 of 100 trees"):
        train(_normal(600), _params(trees=100), progress=seen.append, cancel=cancel)
    assert max(seen) < 1.0


def test_too_little_history_is_a_clear_error() -> None:
    need = config.MIN_TRAINING_WINDOWS
    with pytest.raises(InsufficientHistory, match=rf"need at least {need} windows.*have {need - 1}"):
        train(_normal(need - 1), TrainParams(feature_names=NAMES))


def test_bad_input_names_the_feature() -> None:
    X = _normal(300)
    X[17, 1] = np.nan
    with pytest.raises(ValueError, match="feature 'b' is not a finite number in window 17"):
        train(X, _params())
    with pytest.raises(ValueError, match=r"\(windows, 3\)"):
        train(X[:, :2], _params())


def test_threshold_from_training_data_controls_false_alarms() -> None:
    model = train(_normal(4000), _params(trees=60, false_alarm_rate=0.02))
    assert model.threshold == config.SEVERITY_WARNING
    assert model.calibrate(np.array([model.metadata["threshold_raw"]]))[0] == pytest.approx(config.SEVERITY_WARNING)
    fresh = score_batch(model, _normal(4000, seed=1))
    rate = float(np.mean(fresh >= model.threshold))
    assert 0.005 < rate < 0.06, rate  # target 2 %, out-of-bag calibrated
    # a typical window: each verdict maps its median to SCORE_AT_MEDIAN, the score is the larger one
    assert config.SCORE_AT_MEDIAN <= model.metadata["score_quantiles"]["p50"] < config.SEVERITY_WARNING - 20


def test_contaminated_training_still_flags_normal_windows_at_the_budget() -> None:
    """Anomalies in unlabelled training data take the top of the forest's scores; their share is left
    above the threshold in addition to the budget, so new normal windows are flagged at about the rate."""
    clean = train(_normal(4000), _params(trees=60))
    assert clean.metadata["training_contamination"] == 0.0
    assert clean.metadata["forest_alarm_share"] == pytest.approx(0.02 * (1 - config.DEVIATION_ALARM_SHARE))
    X = _normal(4000)
    for start in range(100, 4000, 400):  # 10 two-window incidents, each also in its neighbours' context
        X[start:start + 2, 0] += 6.0
        X[start:start + 2, 1] += 8.0
    model = train(X, _params(trees=60))
    share = 0.02 * (1 - config.DEVIATION_ALARM_SHARE)
    assert model.metadata["training_contamination"] > 0.005
    assert share < model.metadata["forest_alarm_share"] <= config.CONTAMINATION_MAX_FACTOR * share
    rate = float(np.mean(score_batch(model, _normal(4000, seed=1)) >= model.threshold))
    assert rate > 0.008, rate  # 0.0008 with the plain quantile threshold (1.4 % with this one)


def test_contamination_counts_only_a_tail_beyond_the_bulks_own() -> None:
    bulk = np.random.default_rng(3).normal(0.45, 0.025, 6000)
    assert training_contamination(bulk) == 0.0
    assert training_contamination(np.concatenate([bulk, np.full(180, 0.75)])) == pytest.approx(180 / 6180, abs=0.001)
    assert training_contamination(np.concatenate([bulk, np.full(config.THRESHOLD_TAIL_WINDOWS - 1, 0.75)])) == 0.0


def test_calibration_is_monotone_and_bounded() -> None:
    model = train(_normal(600), _params())
    raw = np.linspace(0.0, 1.0, 1001)
    calibrated = model.calibrate(raw)
    assert np.all(np.diff(calibrated) >= 0) and calibrated[0] == 0.0 and 99.0 <= calibrated[-1] < 100.0
    assert np.all(np.diff(calibrated[raw > model.metadata["threshold_raw"]]) > 0)


def test_the_score_keeps_ranking_beyond_critical_and_never_reaches_100() -> None:
    """The deviation verdict has no ceiling: past the critical anchor the score keeps rising (strictly), so
    windows far out still rank against each other; the severity cut-offs sit where they did."""
    model = train(_normal(600), _params())
    anchors = model.deviation_raw
    deviation = np.concatenate([np.linspace(0.0, anchors[-1], 500), anchors[-1] * np.logspace(0, 9, 500)[1:]])
    scores = model.calibrate_deviation(deviation)
    assert np.all(np.diff(scores[deviation > anchors[1]]) > 0) and np.all(scores < 100.0)
    assert scores[-1] > scores[-2] > 99.9
    at = model.calibrate_deviation(anchors)
    assert at[-3:-1] == pytest.approx([config.SEVERITY_WARNING, config.SEVERITY_CRITICAL])
    assert at[-1] == pytest.approx(99.0)


def test_constant_feature_is_guarded_and_a_change_in_it_scores_high() -> None:
    model = train(_normal(800), _params(trees=60))
    assert np.all(np.isfinite(model.scale)) and np.all(model.scale > 0)
    quiet = _normal(20, seed=3)
    moved = quiet.copy()
    moved[-1, 2] = 9.0  # the feature that never moved, moves
    assert score_batch(model, moved)[-1] >= config.SEVERITY_WARNING > score_batch(model, quiet)[-1]


def _daily(days: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(0, days * DAY, STEP)
    hour = (t / 3600) % 24
    requests = 1000 + 800 * np.cos((hour - 14) / 24 * 2 * np.pi) + rng.normal(0, 40, t.size)  # night low
    latency = 200 + rng.normal(0, 10, t.size)
    errors = np.abs(rng.normal(0.004, 0.001, t.size))
    return np.column_stack([requests, latency, errors]), t


def test_daily_cycle_modelled_with_a_full_day() -> None:
    X, t = _daily(4)
    model = train(X, _params(trees=60), timestamps=t)
    assert model.metadata["daily_cycle"] is True and model.profile is not None
    night = (t / 3600) % 24 == 2
    assert model.profile[2, 0] < 400 < 1600 < model.profile[14, 0]
    X2, t2 = _daily(1, seed=5)
    scores = score_batch(model, X2, t2 + 4 * DAY)
    assert np.mean(scores[(t2 / 3600) % 24 < 5] >= model.threshold) < 0.1  # the night is normal
    # the same night-time level at 14:00 is not: a midday drop to 200 requests for an hour
    midday = ((t2 / 3600) % 24 >= 14) & ((t2 / 3600) % 24 < 15)
    dropped = X2.copy()
    dropped[midday, 0] = X[night, 0].mean()
    dropped_scores = score_batch(model, dropped, t2 + 4 * DAY)
    assert np.all(dropped_scores[midday] >= model.threshold)


def test_a_day_of_windows_is_a_day() -> None:
    """The Demo panel's "Backfill a day" gives 17,280 5-s windows: 86,395 s from the first start to the
    last, "less than a day of history (24.0 h)", so the one-click path never modelled the daily cycle.
    The windows cover a day: the last one ends at the day's end. One window fewer does not."""
    X, t = _daily(1)
    assert t.size == 288 and t[-1] - t[0] == DAY - STEP
    assert train(X, _params(), timestamps=t).metadata["daily_cycle"] is True
    short = train(X[1:], _params(), timestamps=t[1:]).metadata
    assert short["daily_cycle"] is False and "less than a day of history (23.9 h)" in short["note"]


def test_less_than_a_day_says_so() -> None:
    X, t = _daily(0.5)
    model = train(X, _params(), timestamps=t)
    assert model.metadata["daily_cycle"] is False and model.profile is None
    assert "less than a day" in model.metadata["note"]
    no_time = train(X, _params())
    assert no_time.metadata["daily_cycle"] is False and "no timestamps" in no_time.metadata["note"]


def test_metadata_records_what_the_model_knows() -> None:
    model = train(_normal(500), _params(extra={"service": "payments"}))
    meta = model.metadata
    assert meta["windows"] == 500 and meta["schema"] == 1 and meta["params"]["trees"] == 30
    assert meta["params"]["extra"] == {"service": "payments"}
    assert set(meta["feature_median"]) == set(NAMES) and meta["feature_iqr"]["c"] == 0.0
    assert {"p50", "p99"} <= set(meta["score_quantiles"])
    json.dumps(meta)  # JSON-able as is


@pytest.fixture(scope="module")
def model() -> Model:
    X, t = _daily(1.5)
    return train(X, _params(), timestamps=t)


def test_model_round_trip_scores_identically(model: Model) -> None:
    X, t = _daily(0.2, seed=9)
    loaded = Model.from_json(model.to_json())
    np.testing.assert_array_equal(score_batch(loaded, X, t), score_batch(model, X, t))
    assert loaded.metadata == json.loads(json.dumps(model.metadata))


def _tampered(model: Model, change) -> bytes:
    payload = json.loads(model.to_json())["payload"]
    change(payload)
    return seal(payload)


@pytest.mark.parametrize(("change", "message"), [
    (lambda p: p["scale"].pop(), "'scale' has shape"),
    (lambda p: p["scale"].__setitem__(0, -1.0), "'scale' must be positive"),
    (lambda p: p["profile"].pop(), "'profile' has shape"),
    (lambda p: p.update(feature_names=["a"]), "derived features were declared"),
    (lambda p: p["calibration_raw"].reverse(), "anchors must be increasing"),
    (lambda p: p.update(context_rows="6"), "'context_rows' must be an integer"),
    (lambda p: p.update(format="pickle"), "unknown format"),
])
def test_malformed_model_refused(model: Model, change, message: str) -> None:
    with pytest.raises(ModelFormatError, match=message):
        Model.from_json(_tampered(model, change))


def test_tampered_model_refused(model: Model) -> None:
    outer = json.loads(model.to_json())
    outer["payload"]["expected"][0] = 1e9
    with pytest.raises(ModelFormatError, match="sha256 mismatch"):
        Model.from_json(json.dumps(outer))


@pytest.mark.parametrize(("spacing", "expected"), [
    (5.0, config.FALSE_ALARM_WINDOWS_PER_DAY * 5.0 / DAY),  # 17,280 windows a day: the daily budget rules
    (STEP, min(config.DEFAULT_FALSE_ALARM_RATE, config.FALSE_ALARM_WINDOWS_PER_DAY * STEP / DAY)),
    (None, config.DEFAULT_FALSE_ALARM_RATE),
])
def test_false_alarm_budget_per_day_when_the_window_length_is_known(spacing, expected) -> None:
    X = _normal(400)
    stamps = None if spacing is None else 1_700_000_000 + spacing * np.arange(400)
    model = train(X, _params(), timestamps=stamps)
    assert model.metadata["false_alarm_rate"] == pytest.approx(expected)
    assert model.metadata["window_seconds"] == spacing


def test_counts_are_judged_relative_to_their_level() -> None:
    rng = np.random.default_rng(4)
    X = np.column_stack([rng.poisson(200, 3000), rng.normal(50, 2, 3000), rng.integers(11, 14, 3000)])
    model = train(X.astype(float), _params(trees=60))
    assert model.counts.tolist() == [True, False, True]
    assert model.metadata["count_features"] == ["a", "c"]
    quiet = X[:6].astype(float)
    one_less = quiet.copy()
    one_less[-1, 2] = 10  # one endpoint fewer than ever: a count's smallest step is not an alarm
    assert score_batch(model, one_less)[-1] < config.SEVERITY_WARNING
    dropped = quiet.copy()
    dropped[-2:, 0] = 40  # requests down 80 %
    assert score_batch(model, dropped)[-1] >= config.SEVERITY_WARNING
    with pytest.raises(ModelFormatError, match="'counts' must be 3 values of 0 or 1"):
        Model.from_json(_tampered(model, lambda p: p["counts"].__setitem__(0, 2)))


def test_upper_quantile_extrapolates_beyond_the_training_maximum() -> None:
    """A budget below what the data resolves: the exponential tail, not the training maximum."""
    rng = np.random.default_rng(4)
    values = rng.exponential(1.0, 17_280)  # a day of 5-second windows
    assert upper_quantile(values, 0.02) == pytest.approx(float(np.quantile(values, 0.98)))
    rate = 1.0 / 17_280 / 10  # one window in ten days: true quantile ln(172,800) = 12.06
    extrapolated = upper_quantile(values, rate)
    assert extrapolated > values.max() + 1.0
    assert extrapolated == pytest.approx(np.log(1.0 / rate), rel=0.2)
    fresh = rng.exponential(1.0, 17_280 * 10)  # ten new days pass it about once, not every other day
    assert np.count_nonzero(fresh > extrapolated) <= 5


def test_recent_windows_reads_what_the_store_reads(r, redis_url: str) -> None:
    """Training's lean reader (features only) against `fingerprints.latest`, on a real redis-server."""
    import redis

    from anomalydesk.detect.training_run import recent_windows
    from anomalydesk.fingerprint import FEATURE_NAMES, SCHEMA_VERSION, matrix
    from anomalydesk.store import fingerprints
    from anomalydesk.store.keys import Keys

    keys = Keys()
    rng = np.random.default_rng(2)
    for w in range(1000, 2500):  # more than one page of 1,000
        fields = {name: float(v) for name, v in zip(FEATURE_NAMES, rng.random(len(FEATURE_NAMES)) * 100, strict=True)}
        fields.update(window=w, start=w * 5, schema=SCHEMA_VERSION, no_data=int(w % 97 == 0),
                      kpis=json.dumps({"orders_per_window": 3.0}))
        if w == 1500:
            del fields["endpoint_entropy"], fields["schema"]  # an older entry: defaults apply
        r.xadd(keys.fingerprints("svc"), fields, id=f"{w * 5000}-1")
    text = redis.Redis.from_url(redis_url, decode_responses=True)
    for n in (10, 1200, 5000):
        expected = fingerprints.latest(r, "svc", n, keys=keys)
        for client in (r, text):
            got = recent_windows(client, "svc", n, keys=keys)
            assert [fp.window for fp in got] == [fp.window for fp in expected]
            assert [(fp.start, fp.schema, fp.no_data) for fp in got] == [
                (fp.start, fp.schema, fp.no_data) for fp in expected]
            np.testing.assert_array_equal(matrix(got), matrix(expected))
    text.close()
    assert recent_windows(r, "nothing", 10, keys=keys) == []


def test_robust_context_spread_reports_one_outlier_once() -> None:
    """window_features: a robust column's std leaves out the context's most outlying value."""
    from anomalydesk.detect.features import window_features

    X = np.ones((14, 2))
    X[3] = 9.0  # one outlier
    X[[10, 12]] = 5.0  # a fluctuation over several windows
    F = window_features(X, 6, robust=np.array([True, False]))
    robust_std, plain_std = F[:, 4], F[:, 5]
    assert np.all(robust_std[:10] == 0.0) and np.all(plain_std[3:9] > 2.9)  # plain: six windows of it
    assert robust_std[12] == pytest.approx(1.6) and robust_std[13] == pytest.approx(1.6)
    # the jump of a robust column is measured from the recent level: the return is no second change
    robust_jump, plain_jump = F[:, 6], F[:, 7]
    assert robust_jump[3] == plain_jump[3] == 8.0 and robust_jump[4] == 0.0 and plain_jump[4] == 8.0
    np.testing.assert_array_equal(F[:, [0, 1, 2, 3, 5, 7]], window_features(X, 6)[:, [0, 1, 2, 3, 5, 7]])


def test_robust_spread_and_step_match_their_definition() -> None:
    from numpy.lib.stride_tricks import sliding_window_view

    from anomalydesk.detect.features import _robust_spread_and_step

    Y = np.random.default_rng(0).lognormal(size=(300, 3))
    windows = sliding_window_view(np.concatenate([np.repeat(Y[:1], 5, axis=0), Y]), 6, axis=0)
    spread, step = _robust_spread_and_step(windows)
    for i, j in itertools.product(range(windows.shape[0]), range(windows.shape[1])):
        v = windows[i, j]
        outlier = np.argmax(np.abs(v - np.median(v)))
        assert spread[i, j] == pytest.approx(np.delete(v, outlier).std(), abs=1e-12)
        assert step[i, j] == pytest.approx(abs(v[-1] - np.median(v[:-1])), abs=1e-12)


def test_trees_grown_one_at_a_time_are_isolation_forests_trees_with_their_draws() -> None:
    """`_grow` gives each tree the seed, rows and depth `IsolationForest.fit` would: same trees, node by
    node, the same rows drawn, and the same out-of-bag leaves from `apply` as from the arrays' walk."""
    from sklearn.ensemble import IsolationForest

    from anomalydesk.detect.forest import ForestArrays
    from anomalydesk.detect.train import _grow

    Z = _normal(600)
    X32 = np.ascontiguousarray(Z, dtype=np.float32)
    params = _params(trees=30, chunk_trees=7, max_samples=128, random_state=11)
    trees, drawn = _grow(X32, params, lambda f: None, None)
    forest = IsolationForest(n_estimators=30, max_samples=128, random_state=11).fit(Z)
    assert len(trees) == len(drawn) == 30
    for mine, theirs, rows, their_rows in zip(trees, forest.estimators_, drawn, forest.estimators_samples_,
                                              strict=True):  # fmt: skip
        a, b = mine.tree_, theirs.tree_
        assert a.node_count == b.node_count > 1
        for name in ("children_left", "children_right", "feature", "threshold", "n_node_samples"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert np.array_equal(rows, np.sort(their_rows))
    mine_arrays = ForestArrays.from_trees(trees, n_features=Z.shape[1], max_samples=128)
    np.testing.assert_allclose(mine_arrays.score_samples(Z), forest.score_samples(Z), rtol=1e-12)  # sum order
    applied = np.stack([mine_arrays.leaf_path[mine_arrays.roots[t] + tree.apply(X32, check_input=False)]
                        for t, tree in enumerate(trees)], axis=1)  # fmt: skip
    np.testing.assert_array_equal(applied, mine_arrays.leaf_paths(Z))
