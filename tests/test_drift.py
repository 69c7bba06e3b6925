"""Drift-aware scoring (issue 17): the moving baseline, model format 2, the synthetic drift sets through
`run_backtest`, and the level-shift incident live on a real redis-server."""

from __future__ import annotations

import json

import numpy as np
import pytest
import redis

from anomalydesk import config
from anomalydesk.detect import incidents
from anomalydesk.detect.backtest import Series, average_precision, replay, run_backtest
from anomalydesk.detect.baseline import Baseline, blocks_for, horizon_for
from anomalydesk.detect.detector import Detector
from anomalydesk.detect.forest import ModelFormatError
from anomalydesk.detect.model import Model
from anomalydesk.detect.train import TrainParams, train
from anomalydesk.fingerprint import FEATURE_INDEX, FEATURE_NAMES, N_FEATURES, SCHEMA_VERSION
from anomalydesk.store import models as registry
from anomalydesk.store.keys import Keys
from drift_sets import KINDS, make

K = Keys()


# --- the baseline ----------------------------------------------------------------------------------

def test_horizon_is_an_eighth_of_training_capped_in_windows_and_time() -> None:
    assert horizon_for(17_280, 5.0) == 2_160  # a day at W = 5 s: 3 hours
    assert horizon_for(7 * 17_280, 5.0) == config.BASELINE_MAX_WINDOWS  # a week: 4,096 windows (5.7 h)
    assert horizon_for(7 * 1_440, 60.0) == 360  # a week at W = 60 s: capped at 6 hours
    assert horizon_for(300, None) == 37 and horizon_for(40, None) == config.BASELINE_MIN_WINDOWS
    k, b = blocks_for(4_096)
    assert (k, b) == (64, 64)  # the state at the cap: 128 numbers per feature


def test_level_follows_a_permanent_shift_after_about_a_quarter_to_half_the_horizon() -> None:
    base = Baseline.seeded(400, np.zeros(2))  # K = B = 20
    values = np.zeros((800, 2))
    values[200:, 0] = 1.0  # feature 0 moves to 1 at row 200 and stays
    levels, after, _ = base.walk(values)
    assert levels[:200].max() == 0.0 and np.all(levels[:, 1] == 0.0)
    moved = np.flatnonzero(levels[:, 0] > 0.0)[0] - 200
    settled = np.flatnonzero(levels[:, 0] >= 1.0)[0] - 200
    assert 400 // 4 <= moved <= 400 // 4 + 20 and settled <= 3 * 400 // 4 + 20
    assert after.level()[0] == 1.0


def test_a_fault_shorter_than_a_quarter_of_the_horizon_leaves_the_level_alone() -> None:
    base = Baseline.seeded(400, np.zeros(1))
    values = np.zeros((600, 1))
    values[100:190] = 5.0  # 90 windows: under L/4 = 100
    levels, _, _ = base.walk(values)
    assert np.all(levels == 0.0)


def test_shift_is_reported_against_the_reference_and_accept_rebaselines() -> None:
    base = Baseline.seeded(400, np.zeros(1), start=0.0)
    values = np.zeros((400, 1))
    values[100:] = 2.0
    stamps = 1000.0 + 5.0 * np.arange(400)
    _, after, _ = base.walk(values, stamps)
    found = after.shift(np.ones(1), np.ones(1))
    assert found is not None and found.feature == 0 and found.reference == 0.0 and 1.0 <= found.level <= 2.0
    assert 1000.0 + 5.0 * 100 <= found.since <= 1000.0 + 5.0 * 140  # the first block beyond the midpoint
    accepted = after.accept()
    assert accepted.level()[0] == 2.0 and accepted.reference[0] == 2.0
    assert accepted.shift(np.ones(1), np.ones(1)) is None


def test_walk_accepting_reports_each_shift_once_and_goes_on_at_the_new_level() -> None:
    base = Baseline.seeded(100, np.zeros(1))
    values = np.zeros((600, 1))
    values[100:] = 3.0
    levels, _, shifts = base.walk(values, None, (np.ones(1), np.ones(1)))
    assert len(shifts) == 1 and shifts[0][1].feature == 0
    assert np.all(levels[shifts[0][0] + 1:] == 3.0)


def test_a_step_is_named_when_the_level_starts_to_follow_it_not_when_the_baseline_has_moved_far() -> None:
    base = Baseline.seeded(400, np.zeros(1))  # K = B = 20: the level starts to move with the 6th new block
    values = np.zeros((800, 1))
    values[100:] = 2.0  # a step of 2 units: beyond a step threshold of 1, under a shift threshold of 3
    unit, threshold, step = np.ones(1), np.full(1, 3.0), np.ones(1)
    _, shifts = base.walk(values, None, (unit, threshold, step))[1:]
    assert [(row, s.feature) for row, s in shifts] == [(100 + base.step_blocks * base.block - 1, 0)]
    assert shifts[0][1].level == 2.0 and shifts[0][1].reference == 0.0
    assert base.step_blocks == 6 and base.walk(values, None, (unit, threshold, threshold))[2] == []  # 2 < 3
    wobbly = values.copy()
    wobbly[160:180] = -1.0  # one block on the other side: no 6 blocks in a row on one side before row 280
    assert base.walk(wobbly[:280], None, (unit, threshold, step))[2] == []
    assert len(base.walk(wobbly[:300], None, (unit, threshold, step))[2]) == 1  # 180–299: six in a row


def test_a_step_is_dated_from_its_own_blocks_not_from_an_older_fault() -> None:
    base = Baseline.seeded(400, np.zeros(1))  # K = B = 20
    values = np.zeros((400, 1))
    values[20:60] = 2.0  # a fault of two blocks, long over
    values[200:] = 2.0  # then a step that stays
    stamps = 1000.0 + 5.0 * np.arange(400)
    _, after, _ = base.walk(values, stamps)
    found = after.shift(np.ones(1), np.full(1, 3.0), np.ones(1))
    assert found is not None and found.since == 1000.0 + 5.0 * 200  # the step's first block, not the fault's


def test_accepting_a_shift_rebaselines_only_the_features_that_moved() -> None:
    base = Baseline.seeded(400, np.zeros(2))
    values = np.zeros((300, 2))
    values[:, 0] = 2.0  # the new normal
    values[250:, 1] = 5.0  # a fault on feature 1 that started 50 windows ago
    _, after, _ = base.walk(values)
    limits = (np.ones(2), np.full(2, 3.0), np.ones(2))
    assert after.shift(*limits).feature == 0
    accepted = after.accept(*limits)
    assert accepted.reference.tolist() == [2.0, 0.0] and accepted.level().tolist() == [2.0, 0.0]
    assert after.accept().reference.tolist() == [2.0, 5.0]  # without the limits: every feature (old behaviour)


def test_state_round_trips_exactly_and_refuses_malformed_input() -> None:
    rng = np.random.default_rng(3)
    _, state, _ = Baseline.seeded(300, np.zeros(3)).walk(rng.normal(size=(137, 3)))
    data = json.loads(json.dumps(state.to_dict()))
    back = Baseline.from_dict(data, 3)
    for name in ("medians", "starts", "partial", "reference"):
        assert np.array_equal(getattr(back, name), getattr(state, name))
    assert len(json.dumps(data)) < 4 * 8 * 3 * (state.n_blocks + state.block)  # base64 float64, bounded
    for bad, message in ((dict(data, medians="%%%"), "base64"), (dict(data, block=0), "'block'"),
                         (dict(data, reference=data["medians"]), "'reference'")):
        with pytest.raises(ValueError, match=message):
            Baseline.from_dict(bad, 3)


# --- the model -------------------------------------------------------------------------------------

def _service(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = np.zeros((n, N_FEATURES))
    X[:, FEATURE_INDEX["requests"]] = rng.normal(500, 20, n).round()
    X[:, FEATURE_INDEX["rate_4xx"]] = rng.uniform(0.01, 0.03, n)
    X[:, FEATURE_INDEX["rate_5xx"]] = rng.choice([0.002, 0.004, 0.006], n)
    X[:, FEATURE_INDEX["latency_p50_ms"]] = rng.normal(40, 2, n)
    X[:, FEATURE_INDEX["latency_p95_ms"]] = rng.normal(120, 5, n)
    X[:, FEATURE_INDEX["latency_p99_ms"]] = rng.normal(200, 10, n)
    X[:, FEATURE_INDEX["latency_mean_ms"]] = rng.normal(55, 2, n)
    X[:, FEATURE_INDEX["endpoints_distinct"]] = rng.integers(11, 14, n)
    X[:, FEATURE_INDEX["top_endpoint_share"]] = rng.uniform(0.2, 0.3, n)
    X[:, FEATURE_INDEX["endpoint_entropy"]] = rng.normal(3.0, 0.05, n)
    X[:, FEATURE_INDEX["kpi_level"]] = rng.normal(1.0, 0.02, n)
    return X


@pytest.fixture(scope="module")
def small_model() -> Model:
    return train(_service(480, seed=0), TrainParams(trees=50), timestamps=300.0 * np.arange(480))


def test_format_two_round_trips_and_format_one_models_score_as_before(small_model: Model) -> None:
    X = _service(60, seed=1)
    assert small_model.format_version == 2 and small_model.metadata["format_version"] == 2
    loaded = Model.from_json(small_model.to_json())
    assert loaded.baseline is not None and np.array_equal(loaded.scores(X), small_model.scores(X))
    old = train(_service(480, seed=0), TrainParams(trees=50, drift=False))
    assert old.format_version == 1 and old.to_dict()["version"] == 1 and "baseline" not in old.to_dict()
    old_loaded = Model.from_json(old.to_json())
    assert old_loaded.baseline is None and np.array_equal(old_loaded.scores(X), old.scores(X))
    data = small_model.to_dict()
    assert loaded.step_threshold is not None and np.array_equal(loaded.step_threshold, small_model.step_threshold)
    before_steps = Model.from_dict({k: v for k, v in data.items() if k != "step_threshold"})
    assert before_steps.shift_limits[2] is before_steps.shift_threshold  # saved before steps: one threshold
    with pytest.raises(ModelFormatError, match="step_threshold"):
        Model.from_dict(dict(data, step_threshold=[0.0] * N_FEATURES))
    with pytest.raises(ModelFormatError, match="format version 3"):
        Model.from_dict(dict(data, version=3))
    with pytest.raises(ModelFormatError, match="baseline"):
        Model.from_dict(dict(data, baseline=dict(data["baseline"], partial_start="x")))


def test_registry_says_which_format_a_model_is(r: redis.Redis, small_model: Model) -> None:
    from anomalydesk.detect.training_run import TrainingData, store_model

    X = _service(480, seed=0)
    data = TrainingData(X=X, timestamps=300.0 * np.arange(480), windows=np.arange(480))
    version = store_model(r, "orders", small_model, data)
    assert registry.info(r, "orders", version).model_format == 2
    registry.save(r, "orders", train(X, TrainParams(trees=20, drift=False)).to_json(), {"windows": 480})
    assert [m.model_format for m in registry.list_models(r, "orders")] == [2, 1]


# --- the synthetic sets through the backtest ---------------------------------------------------------

def _no_stamps(series: Series) -> Series:
    return Series(series.path, series.feature_names, series.X, None, series.labels)


@pytest.fixture(scope="module")
def drift_runs() -> dict[str, dict]:
    out = {}
    for kind in KINDS:
        fit, test = (_no_stamps(s) for s in make(kind))
        params = TrainParams(feature_names=fit.feature_names)
        result = run_backtest(test, fit, params=params)
        model = train(fit.X, params)
        context = model.context_rows - 1
        X = np.vstack([fit.X[-context:], test.X])
        scores, _ = replay(model, X, None, context)
        adjusted = model.adjusted(X)
        levels, _, _ = model.walk(adjusted[context:], accept=True)
        Z = model.transform(X, None, np.vstack([np.tile(model.baseline.level(), (context, 1)), levels]))[context:]
        y = test.labels.astype(bool)
        raw = max(average_precision(y, model.raw_scores(Z)), average_precision(y, model.deviation(Z)))
        old = run_backtest(test, fit, params=TrainParams(feature_names=fit.feature_names, drift=False))
        out[kind] = {"result": result, "scores": scores, "raw_auprc": raw, "old": old, "labels": y,
                     "threshold": model.threshold}  # fmt: skip
    return out


def _late_normal_flag_rate(run: dict) -> float:
    from anomalydesk.detect.episodes import track_scores

    flagged, _ = track_scores(run["scores"], run["threshold"])
    late = (np.arange(flagged.size) >= 4500) & ~run["labels"]
    return float(flagged[late].mean())


def test_a_permanent_shift_is_absorbed_and_flags_late_rows_no_more_than_the_control(drift_runs: dict) -> None:
    control, shift = _late_normal_flag_rate(drift_runs["none"]), _late_normal_flag_rate(drift_runs["shift"])
    assert shift <= max(2 * control, 0.05)
    old = drift_runs["shift"]["old"]
    assert old["rows"]["flagged"] > 3000  # format 1 flagged every row after the shift (the 60 %)
    shifts = drift_runs["shift"]["result"]["level_shifts"]
    assert [s["feature"] for s in shifts] == ["c0"] and 2500 < shifts[0]["row"] < 2500 + 750  # within L


def test_a_fault_leaving_a_new_level_behind_is_found_without_an_endless_incident(drift_runs: dict) -> None:
    run = drift_runs["fault_shift"]["result"]
    assert run["pointwise"]["f1"] >= 0.5 > drift_runs["fault_shift"]["old"]["pointwise"]["f1"]
    assert [s["feature"] for s in run["level_shifts"]] == ["c0"]


def test_the_control_keeps_its_f1_at_every_forest_seed(drift_runs: dict) -> None:
    # with the plain out-of-bag calibration the default seed gave 0.577 (seeds 1, 2: 0.620, 0.652); with the
    # neighbours of each training window left out of its calibration trees 0.611 / 0.640 / 0.670, with the
    # opening margin (INCIDENT_OPEN_SCORE) 0.632 / 0.658 / 0.686. Format 1
    # gives 0.678 / 0.669 / 0.686 on this stationary set: following a baseline costs it about 0.04
    fit, test = (_no_stamps(s) for s in make("none"))
    for seed in (0, 1, 2):
        params = TrainParams(feature_names=fit.feature_names, random_state=seed)
        result = run_backtest(test, fit, params=params)
        assert result["events"]["recall"] == 1.0  # every fault found
        assert result["pointwise"]["f1"] >= 0.60, (seed, result["pointwise"])


@pytest.mark.parametrize("kind", KINDS)
def test_the_shipped_score_keeps_the_raw_verdicts_ranking(drift_runs: dict, kind: str) -> None:
    assert drift_runs[kind]["result"]["auprc"] >= 0.9 * drift_runs[kind]["raw_auprc"]


def test_the_product_leads_every_reference_peer_on_the_synthetic_sets() -> None:
    for kind in KINDS:
        fit, test = (_no_stamps(s) for s in make(kind))
        result = run_backtest(test, fit, reference=True)
        best = max(peer["pointwise"]["f1"] for name, peer in result["peers"].items())
        assert result["pointwise"]["f1"] > best, kind


# --- live: the level-shift incident on a real redis-server ------------------------------------------

W = 300


def _add(r: redis.Redis, service: str, window: int, row: np.ndarray) -> None:
    r.sadd(K.services, service)
    fields: dict[str, object] = dict(zip(FEATURE_NAMES, (float(v) for v in row), strict=True))
    fields.update(window=window, start=window * W, schema=SCHEMA_VERSION, no_data=0, kpis="", ws=W)
    r.xadd(K.fingerprints(service), fields, id=f"{window * W * 1000}-1")


def _alerts(r: redis.Redis) -> list[dict]:
    return [json.loads(f[b"alert"]) for _, f in r.xrange(K.alerts_log)]


def _feed(r: redis.Redis, det: Detector, rows: np.ndarray, first: int) -> None:
    for i, row in enumerate(rows):
        _add(r, "checkout", first + i, row)
        if i % 20 == 19 or i == len(rows) - 1:
            while det.step().processed:
                pass


def _shifted(n: int, seed: int) -> np.ndarray:
    X = _service(n, seed)
    X[:, FEATURE_INDEX["latency_p95_ms"]] *= 1.5  # 120 → 180 ms after a deploy, and it stays
    return X


@pytest.fixture()
def live(r: redis.Redis, small_model: Model) -> tuple[redis.Redis, Detector, Model]:
    registry.save(r, "checkout", small_model.to_json(), {"windows": 480, "schema": SCHEMA_VERSION,
                                                          "window_seconds": W})  # fmt: skip
    det = Detector(r, seal=False, block_ms=10, clock=lambda: 0.0)
    _feed(r, det, _service(60, seed=2), 1000)
    return r, det, small_model


def test_a_shift_opens_one_level_shift_incident_naming_it(live: tuple) -> None:
    r, det, model = live
    horizon = model.baseline.horizon
    _feed(r, det, _shifted(horizon, seed=3), 1060)
    shifts = [a for a in _alerts(r) if a["kind"] == "level_shift"]
    assert len(shifts) == 1
    text = shifts[0]["reasons"][0]["text"]
    assert text.startswith("new normal? p95 latency 12") and "→ 18" in text and "ms since" in text
    (incident,) = [i for i in incidents.list_incidents(r) if i.kind == "level_shift"]
    assert incident.is_open and incident.id.startswith("checkout:s")
    block = model.baseline.block
    assert 1060 - block <= incident.first_window <= 1060 + block  # where the shift began, to a block


def test_accepting_ends_the_alerts_and_feeds_training(live: tuple) -> None:
    r, det, model = live
    horizon = model.baseline.horizon
    _feed(r, det, _shifted(horizon, seed=3), 1060)
    (incident,) = [i for i in incidents.list_incidents(r) if i.kind == "level_shift"]
    accepted = incidents.accept(r, incident.id, "ops")
    assert accepted.accepted is not None and accepted.accepted.by == "ops" and not accepted.is_open
    before = len(_alerts(r))
    _feed(r, det, _shifted(horizon, seed=4), 1060 + horizon)
    after = [a for a in _alerts(r)[before:] if a["kind"] in ("new", "escalated", "level_shift")]
    assert after == []  # re-baselined at the new level: no anomaly, no new level-shift incident
    _, included = incidents.training_windows(r, "checkout")
    assert (incident.first_window, accepted.last_window) in included
    state = json.loads(r.hget(K.detector_states, "checkout"))
    assert state["baseline"]["model_version"] == 1 and state.get("shift_incident") is None


def test_not_accepted_it_stays_open_and_notifies_once_per_interval(live: tuple) -> None:
    r, det, model = live
    interval = config.LEVEL_SHIFT_RENOTIFY_SECONDS // W  # 48 windows of 5 minutes
    _feed(r, det, _shifted(model.baseline.horizon + 2 * interval, seed=5), 1060)
    shifts = [a for a in _alerts(r) if a["kind"] == "level_shift"]
    (incident,) = [i for i in incidents.list_incidents(r) if i.kind == "level_shift"]
    assert incident.is_open and {a["incident_id"] for a in shifts} == {incident.id}
    gaps = np.diff([a["window"] for a in shifts])
    assert len(shifts) >= 2 and np.all(gaps == interval)
    with pytest.raises(incidents.IncidentError, match="only a level shift"):
        anomaly = next(i for i in incidents.list_incidents(r, open_only=False) if i.kind == "anomaly")
        incidents.accept(r, anomaly.id)


def test_a_restarted_detector_continues_the_stored_baseline(live: tuple) -> None:
    r, det, model = live
    det.release()
    stored = json.loads(r.hget(K.detector_states, "checkout"))["baseline"]
    again = Detector(r, seal=False, block_ms=10, clock=lambda: 0.0)
    _feed(r, again, _service(1, seed=6), 1060)
    moved = json.loads(r.hget(K.detector_states, "checkout"))["baseline"]
    restored = Baseline.from_dict(stored, model.n_features)
    assert Baseline.from_dict(moved, model.n_features).partial.shape[0] in (restored.partial.shape[0] + 1, 0)


# --- robustness (issue 17, build 5) ---------------------------------------------------------------

def _replay_incidents(model: Model, history: np.ndarray, X: np.ndarray) -> tuple[list, list]:
    from anomalydesk.detect.episodes import track_scores

    context = model.context_rows - 1
    n = history.shape[0]
    stamps = 300.0 * np.arange(n - context, n + X.shape[0])
    scores, shifts = replay(model, np.vstack([history[-context:], X]), stamps, context)
    _, episodes = track_scores(scores, model.threshold)
    return [(e.start, e.end) for e in episodes], shifts


@pytest.fixture(scope="module")
def quiet_5xx() -> tuple[np.ndarray, Model]:
    X = _service(2000, seed=0)
    X[:, FEATURE_INDEX["rate_5xx"]] = 0.0  # a service that never answered 5xx in training
    return X, train(X, TrainParams(trees=60), timestamps=300.0 * np.arange(2000))


def _clean(n: int, seed: int) -> np.ndarray:
    X = _service(n, seed)
    X[:, FEATURE_INDEX["rate_5xx"]] = 0.0
    return X


def test_a_feature_constant_in_training_flags_its_first_move(quiet_5xx: tuple) -> None:
    history, model = quiet_5xx
    X = _clean(300, seed=1)
    X[100:110, FEATURE_INDEX["rate_5xx"]] = 0.05  # the first burst of errors it ever had
    found, _ = _replay_incidents(model, history, X)
    assert any(start <= 101 and end >= 109 for start, end in found), found


def test_a_stuck_feature_is_reported_as_stuck(quiet_5xx: tuple) -> None:
    history, model = quiet_5xx
    assert model.movable is not None and model.movable[FEATURE_INDEX["latency_p95_ms"]]
    assert not model.movable[FEATURE_INDEX["rate_5xx"]]  # always 0 in training: standing still is normal
    X = _clean(300, seed=2)
    X[100:, FEATURE_INDEX["latency_p95_ms"]] = 120.0  # a frozen gauge
    found, _ = _replay_incidents(model, history, X)
    assert found and found[-1][0] <= 100 + model.context_rows and found[-1][1] == 299
    from anomalydesk.detect.score import score

    result = score(model, np.vstack([history[-5:], X[:120]]))
    assert result.anomalous and result.reasons[0]["text"].startswith("p95 latency stuck at 120 ms")
    quiet, _ = _replay_incidents(model, history, _clean(300, seed=2))
    assert all(end - start < 10 for start, end in quiet)  # the same traffic, not frozen: nothing long


def test_a_ratio_at_zero_is_stuck_only_when_its_requests_make_that_unlikely(quiet_5xx: tuple) -> None:
    _, model = quiet_5xx
    j, requests = FEATURE_INDEX["rate_4xx"], FEATURE_INDEX["requests"]
    assert model.movable[j] and model.expected[j] > 0.01  # 1–3 % 4xx in training, never standing still
    busy = _clean(12, seed=3)
    busy[:, j] = 0.0  # 500 requests a window and not one 4xx for 6 windows: e^-60, a frozen exporter
    assert model.stuck(busy)[model.context_rows - 1:, j].all()
    night = busy.copy()
    night[:, requests] = 20.0  # 20 a window: six zeros in a row happen about one time in ten
    assert not model.stuck(night)[:, j].any()
    frozen = night.copy()
    frozen[:, j] = 0.05  # a ratio frozen at a value other than 0 is stuck at any traffic
    assert model.stuck(frozen)[model.context_rows - 1:, j].all()


def test_missing_values_are_filled_counted_and_cost_little() -> None:
    fit, test = (_no_stamps(s) for s in make("none"))
    rng = np.random.default_rng(9)
    holes_fit = np.where(rng.random(fit.X.shape) < 0.02, np.nan, fit.X)
    holes_test = np.where(rng.random(test.X.shape) < 0.02, np.nan, test.X)
    full = run_backtest(test, fit)
    gappy = run_backtest(Series(test.path, test.feature_names, holes_test, None, test.labels),
                         Series(fit.path, fit.feature_names, holes_fit, None, None))
    assert gappy["rows"]["missing_values"] == int(np.isnan(holes_fit).sum() + np.isnan(holes_test).sum()) > 2000
    assert gappy["events"]["recall"] == 1.0 and gappy["pointwise"]["f1"] >= full["pointwise"]["f1"] - 0.1


def test_missing_cells_in_a_csv_are_read_as_missing(tmp_path) -> None:
    from anomalydesk.detect.backtest import BacktestError, read_csv

    path = tmp_path / "gappy.csv"
    path.write_text("a,b,label\n1,2,0\n,3,0\nNaN,null,1\n4,x,0\n")
    with pytest.raises(BacktestError, match="column 'b' is not numeric \\(row 5: 'x'\\)"):
        read_csv(path)
    path.write_text("a,b,label\n1,2,0\n,3,0\nNaN,null,1\n")
    assert np.isnan(read_csv(path).X).sum() == 3


def test_a_slow_ramp_is_reported_not_absorbed_silently_and_not_an_endless_incident(quiet_5xx: tuple) -> None:
    history, model = quiet_5xx
    X = _clean(1500, seed=3)
    p95 = FEATURE_INDEX["latency_p95_ms"]
    X[200:1200, p95] *= np.linspace(1.0, 1.6, 1000)  # +60 % over 83 hours of 5-minute windows
    X[1200:, p95] *= 1.6
    found, shifts = _replay_incidents(model, history, X)
    assert shifts and {s["feature"] for s in shifts} == {"latency_p95_ms"}  # said, by the long-horizon check
    assert all(end - start < 50 for start, end in found)  # no incident that never ends


P99_LATER = 1.15  # p99's move in full, after it was 1.08× (seen as 1.065×, the baseline lagging) at the acceptance


def _deploy(n: int, seed: int, p99: float) -> np.ndarray:
    """A deploy: p95 latency 1.5× (plain to see), p99 latency `p99`× (as weak evidence can hide it)."""
    X = _shifted(n, seed)
    X[:, FEATURE_INDEX["latency_p99_ms"]] *= p99
    return X


def _shift_incidents(r: redis.Redis) -> list:
    return [i for i in incidents.list_incidents(r, open_only=False) if i.kind == "level_shift"]


def _accepted_deploy(r: redis.Redis, det: Detector, horizon: int, p99: float):
    """A deploy over L windows (p95 1.5×, p99 `p99`×), its level-shift incident accepted by "ops"."""
    _feed(r, det, _deploy(horizon, seed=3, p99=p99), 1060)
    (incident,) = _shift_incidents(r)
    incidents.accept(r, incident.id, "ops")
    return incident


def _later(horizon: int, p99: float, **factors: float) -> np.ndarray:
    """The L windows after the acceptance: the deploy's traffic, each feature in `factors` moved on."""
    rows = _deploy(horizon, seed=5, p99=p99)
    for name, factor in factors.items():
        rows[:, FEATURE_INDEX[name]] *= factor
    return rows


def test_a_feature_that_moved_with_an_accepted_shift_is_taken_along_not_named_again(live: tuple) -> None:
    """A deploy moved p95 and p99 latency; p99's move was still under its threshold when the operator
    accepted p95's new level, then crossed it. That is the change the operator accepted: p99 is
    re-baselined quietly and recorded on the accepted incident, not asked about in a second "new normal?"
    incident (the demo's `shift` on another day's traffic opened one 49 minutes after the acceptance)."""
    r, det, model = live
    horizon = model.baseline.horizon
    _feed(r, det, _deploy(horizon, seed=3, p99=1.08), 1060)
    (incident,) = _shift_incidents(r)
    assert incident.reasons[0]["feature"] == "latency_p95_ms"
    incidents.accept(r, incident.id, "ops")
    _feed(r, det, _deploy(1, seed=4, p99=1.08), 1060 + horizon)  # the detector sees the acceptance
    state = json.loads(r.hget(K.detector_states, "checkout"))
    recorded = state["shift_followers"]["features"]
    assert sorted(recorded) == ["latency_p95_ms", "latency_p99_ms"]
    assert {name: f["side"] for name, f in recorded.items()} == {"latency_p95_ms": 1.0, "latency_p99_ms": 1.0}
    p95, p99 = (recorded[name]["to"] - recorded[name]["from"] for name in ("latency_p95_ms", "latency_p99_ms"))
    assert p95 > p99 > 0  # how far each had moved (model space, log): p95 by far the most
    before = len(_alerts(r))
    _feed(r, det, _deploy(horizon, seed=5, p99=P99_LATER), 1061 + horizon)  # p99's move shows in full
    assert [i.id for i in _shift_incidents(r)] == [incident.id]  # no second level-shift incident
    assert [a for a in _alerts(r)[before:] if a["kind"] == "level_shift"] == []
    (accepted,) = _shift_incidents(r)
    taken = [reason for reason in accepted.reasons if reason["feature"] == "latency_p99_ms"]
    assert len(taken) == 1 and "moved with this change, taken along with its acceptance" in taken[0]["text"]
    day = config.LEVEL_SHIFT_FOLLOW_SECONDS // W
    _feed(r, det, _deploy(day, seed=6, p99=P99_LATER), 1061 + 2 * horizon)
    assert "shift_followers" not in json.loads(r.hget(K.detector_states, "checkout"))  # a day passed


def test_an_accepted_feature_moving_on_as_its_evidence_grows_is_taken_along(live: tuple) -> None:
    """Values are shrunk towards the median by their evidence, so a night's level shows less of a deploy's
    shift than the morning's: on the demo's traffic of 2 December p50 latency, accepted with the deploy,
    moved on 3.6 hours later and opened a second "new normal?". Its further move to the same side, within
    a day, is the accepted change."""
    r, det, model = live
    horizon = model.baseline.horizon
    incident = _accepted_deploy(r, det, horizon, p99=1.0)
    _feed(r, det, _later(horizon, p99=1.0, latency_p95_ms=1.3), 1060 + horizon)  # p95 moves on: 180 → 234 ms
    assert [i.id for i in _shift_incidents(r)] == [incident.id]
    (accepted,) = _shift_incidents(r)
    taken = [reason for reason in accepted.reasons if reason.get("taken_along")]
    assert [reason["feature"] for reason in taken] == ["latency_p95_ms"]


def test_a_feature_that_moves_after_the_acceptance_opens_its_own_incident(live: tuple) -> None:
    """Taking along is for the accepted change only: p99 latency, which had not moved when p95's new level
    was accepted, moving afterwards is news, and asks on its own."""
    r, det, model = live
    horizon = model.baseline.horizon
    incident = _accepted_deploy(r, det, horizon, p99=1.0)
    _feed(r, det, _later(horizon, p99=1.3), 1060 + horizon)
    (second,) = [i for i in _shift_incidents(r) if i.id != incident.id]
    assert second.reasons[0]["feature"] == "latency_p99_ms" and second.is_open


def test_a_follower_taken_along_takes_no_other_feature_with_it(live: tuple) -> None:
    """p99 latency, on the move at the acceptance, crosses its threshold in the windows where p50 latency,
    which had not moved, shifts too: p99 is taken along, and p50 asks on its own (re-baselining every
    feature beyond its threshold with the follower took p50's move in without a word)."""
    r, det, model = live
    horizon = model.baseline.horizon
    incident = _accepted_deploy(r, det, horizon, p99=1.08)
    _feed(r, det, _later(horizon, p99=P99_LATER, latency_p50_ms=1.3), 1060 + horizon)
    (second,) = [i for i in _shift_incidents(r) if i.id != incident.id]
    assert second.reasons[0]["feature"] == "latency_p50_ms" and second.is_open
    (accepted,) = [i for i in _shift_incidents(r) if i.id == incident.id]
    assert [reason["feature"] for reason in accepted.reasons if reason.get("taken_along")] == ["latency_p99_ms"]


def test_a_second_larger_change_after_an_acceptance_asks_on_its_own(live: tuple) -> None:
    """Taken along is a move like the accepted one: p95 latency accepted at 120 → 180 ms, then a second
    deploy takes it to 540 ms, three times the first move's distance and more: "new normal?" again."""
    r, det, model = live
    horizon = model.baseline.horizon
    incident = _accepted_deploy(r, det, horizon, p99=1.0)
    _feed(r, det, _later(horizon, p99=1.0, latency_p95_ms=3.0), 1060 + horizon)
    (second,) = [i for i in _shift_incidents(r) if i.id != incident.id]
    assert second.reasons[0]["feature"] == "latency_p95_ms" and second.is_open
