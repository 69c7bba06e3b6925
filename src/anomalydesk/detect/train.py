"""Training: a pure function from a service's recent fingerprint vectors to a `Model`.

`train(X, params, progress, cancel, timestamps)` runs in a worker (GUI) or the detector process; it
touches no Redis and no Qt. The forest is scikit-learn's Isolation Forest grown one tree at a time
(`_grow`: the same seeds, samples and trees as `IsolationForest(random_state=…).fit`), so progress is
real: it is reported and `cancel()` is checked every `params.chunk_trees` trees.

Two verdicts are calibrated from the training data alone (no labels): the forest's anomaly score,
each training window scored out-of-bag (only by the trees that did not draw it), and the largest
robust |z| of the window's inputs, each input's |z| taken relative to its own training extreme
(`model.deviation_of`), so a rarely non-zero count does not set the bar for every input. Each
threshold is a high quantile of its training values (the budget is shared), so together they
flag at most `false_alarm_rate` of the training windows, plus the share of training windows that
look contaminated (`training_contamination`: anomalies in unlabelled training data sit at the top
of the forest's scores), so that normal windows are flagged at the chosen rate. Each is calibrated to 0–100 (typical
window → `SCORE_AT_MEDIAN`, threshold → `SEVERITY_WARNING`, as far beyond the threshold as the
threshold is beyond typical → `SEVERITY_CRITICAL`), monotone, and a window's score is the larger of
the two.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import sklearn
from sklearn.tree import ExtraTreeRegressor
from sklearn.utils.random import sample_without_replacement

from anomalydesk import config
from anomalydesk.detect.baseline import Baseline, horizon_for, step_distance
from anomalydesk.detect.features import (
    KINDS,
    count_features,
    count_resolution,
    daily_profile,
    deseasonalise,
    evidence_weights,
    robust_center_scale,
    shrink,
    to_model_space,
    window_features,
)
from anomalydesk.detect.forest import ForestArrays
from anomalydesk.detect.model import Model, calibrated, deviation_of
from anomalydesk.detect.thresholds import calibration, training_contamination, upper_quantile
from anomalydesk.fingerprint import FEATURE_NAMES, SCHEMA_VERSION

QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)
_MAX_INT = np.iinfo(np.int32).max  # scikit-learn's seed range
_RAW_CEILING = 1.0 - 4e-6  # the forest's raw score never exceeds 1: an extrapolated threshold stays below


class TrainingCancelled(Exception):
    """`cancel()` returned true while the forest was growing."""


class InsufficientHistory(ValueError):
    """Fewer training windows than `min_windows`: the service is still learning."""

    def __init__(self, have: int, need: int):
        super().__init__(f"need at least {need} windows of history to train, have {have} "
                         f"({need - have} more to go)")
        self.have, self.need = have, need


@dataclass(frozen=True)
class TrainParams:
    """What `train` is told; stored in the model's metadata."""

    feature_names: tuple[str, ...] = FEATURE_NAMES
    trees: int = config.DEFAULT_TREES
    max_samples: int = config.DEFAULT_MAX_SAMPLES
    false_alarm_rate: float = config.DEFAULT_FALSE_ALARM_RATE
    false_alarms_per_day: float = config.FALSE_ALARM_WINDOWS_PER_DAY
    context_rows: int = config.MODEL_CONTEXT_ROWS
    chunk_trees: int = config.TRAIN_CHUNK_TREES
    min_windows: int = config.MIN_TRAINING_WINDOWS
    evidence: bool = True  # weight per-request statistics by their requests (config.EVIDENCE_PSEUDO_REQUESTS)
    drift: bool = True  # level inputs against a moving baseline (model format 2, detect/baseline.py)
    random_state: int = 0
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, object] = field(default_factory=dict)  # recorded as given (e.g. service name)

    def __post_init__(self) -> None:
        if not self.feature_names:
            raise ValueError("feature_names must not be empty")
        if self.trees < 1 or self.chunk_trees < 1:
            raise ValueError("trees and chunk_trees must be at least 1")
        if self.max_samples < 2:
            raise ValueError("max_samples must be at least 2")
        if not 0.0 < self.false_alarm_rate < 0.5:
            raise ValueError(f"false_alarm_rate must be in (0, 0.5), got {self.false_alarm_rate}")
        if self.false_alarms_per_day <= 0:
            raise ValueError(f"false_alarms_per_day must be positive, got {self.false_alarms_per_day}")
        if self.context_rows < 1:
            raise ValueError("context_rows must be at least 1")
        if self.min_windows < 2:
            raise ValueError("min_windows must be at least 2")


def train(
    X: np.ndarray,
    params: TrainParams | None = None,
    progress: Callable[[float], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    timestamps: np.ndarray | None = None,
) -> Model:
    """Fit a model on (n, f) windows (oldest first); raises InsufficientHistory or TrainingCancelled."""
    params = params or TrainParams()
    report = progress or (lambda fraction: None)
    X = _check_matrix(X, params.feature_names)
    n = X.shape[0]
    if n < params.min_windows:
        raise InsufficientHistory(n, params.min_windows)
    if timestamps is not None:
        timestamps = np.asarray(timestamps, dtype=np.float64).reshape(-1)
        if timestamps.shape[0] != n or not np.all(np.isfinite(timestamps)):
            raise ValueError(f"timestamps: need {n} finite values, got {timestamps.shape[0]}")
    report(0.0)

    expected = np.median(X, axis=0)
    q75, q25 = np.percentile(X, [75, 25], axis=0)
    span = _covered_seconds(timestamps)
    daily_cycle = timestamps is not None and span >= config.DAILY_CYCLE_MIN_SECONDS
    counts = count_features(X)
    logs = np.array([name in config.MODEL_LOG_FEATURES for name in params.feature_names]) & np.all(X >= 0, axis=0)
    Xm, overall = to_model_space(X, counts | logs), to_model_space(expected, counts | logs)
    profile = daily_profile(Xm, timestamps, overall) if daily_cycle else None
    evidence_column, evidence_prior = _evidence(params)
    weights = evidence_weights(X, evidence_column, evidence_prior)
    adjusted = shrink(deseasonalise(Xm, timestamps, profile, overall), overall, weights)
    ignored = np.array([name in config.MODEL_IGNORED_FEATURES for name in params.feature_names])
    adjusted[:, ignored] = overall[ignored]
    derived = window_features(adjusted, params.context_rows, evidence_prior > 0 if weights is not None else None)
    rate, spacing = _false_alarm_rate(params, timestamps)
    f = X.shape[1]
    baseline = None
    if params.drift:
        seed = Baseline.seeded(horizon_for(n, spacing), np.median(adjusted, axis=0),
                               float(timestamps[0]) if timestamps is not None else 0.0)
        levels, baseline, _ = seed.walk(adjusted, timestamps)
        derived[:, :f] -= levels
        derived[:, f:2 * f] -= levels
    resolution = np.tile(count_resolution(expected, counts), len(KINDS))
    center, scale = robust_center_scale(derived, resolution)
    Z = (derived - center) / scale
    extreme = _extremes(Z)
    shift_threshold = step_threshold = None
    if baseline is not None:
        wander = np.abs(levels - baseline.reference).max(axis=0) / scale[:f]
        shift_threshold = np.maximum.reduce([extreme[:f], config.LEVEL_SHIFT_WANDER_FACTOR * wander,
                                             np.full(f, config.LEVEL_SHIFT_MIN_Z)])
        step_threshold = np.maximum(config.LEVEL_SHIFT_WANDER_FACTOR * _step_wander(adjusted, baseline, scale[:f]),
                                    config.LEVEL_SHIFT_STEP_MIN_Z)

    Z32 = np.ascontiguousarray(Z, dtype=np.float32)  # scikit-learn's trees split float32, and so we score
    trees, drawn = _grow(Z32, params, report, cancel)
    arrays = ForestArrays.from_trees(trees, n_features=Z.shape[1], max_samples=drawn[0].shape[0])
    oob_raw = _out_of_bag_scores(arrays, trees, drawn, Z32, radius=params.context_rows - 1)
    deviation = deviation_of(Z, extreme, config.DEVIATION_EXTREME_POWER, resolution / scale)
    # two verdicts sharing the false-alarm budget, so the union stays within it
    rate_dev = rate * config.DEVIATION_ALARM_SHARE
    contamination = training_contamination(oob_raw)
    rate_forest = min(rate - rate_dev + contamination, config.CONTAMINATION_MAX_FACTOR * (rate - rate_dev))
    threshold_raw = min(upper_quantile(oob_raw, rate_forest), _RAW_CEILING)
    threshold_dev = upper_quantile(deviation, rate_dev)
    cal_raw, cal_score = calibration(oob_raw, threshold_raw, ceiling=1.0)
    dev_raw, dev_score = calibration(deviation, threshold_dev, ceiling=None)
    scored = np.maximum(calibrated(oob_raw, cal_raw, cal_score), calibrated(deviation, dev_raw, dev_score))

    if daily_cycle:
        note = f"daily cycle modelled: history spans {span / 86400:.1f} days"
    elif timestamps is None:
        note = "no timestamps: time of day not modelled"
    else:
        note = (f"less than a day of history ({span / 3600:.1f} h): the daily cycle is not modelled yet, "
                "so a normal night-time low may be flagged until the model is retrained")
    metadata = {
        "trained_at": time.time(),
        "windows": n,
        "schema": params.schema_version,
        "params": _params_dict(params),
        "threshold": config.SEVERITY_WARNING,
        "false_alarm_rate": rate,
        "window_seconds": spacing,
        "threshold_raw": threshold_raw,
        "threshold_deviation": threshold_dev,
        "training_contamination": contamination,
        "forest_alarm_share": rate_forest,
        "severity_cutoffs": {"warning": config.SEVERITY_WARNING, "critical": config.SEVERITY_CRITICAL},
        "score_quantiles": {f"p{q * 100:g}": float(np.quantile(scored, q)) for q in QUANTILES},
        "raw_quantiles": {f"p{q * 100:g}": float(np.quantile(oob_raw, q)) for q in QUANTILES},
        "training_flag_rate": float(np.mean(scored >= config.SEVERITY_WARNING)),
        "daily_cycle": bool(daily_cycle),
        "count_features": [name for name, c in zip(params.feature_names, counts, strict=True) if c],
        "log_features": [name for name, c in zip(params.feature_names, logs, strict=True) if c],
        "history_seconds": span if timestamps is not None else None,
        "note": note,
        "feature_median": dict(zip(params.feature_names, map(float, expected), strict=True)),
        "feature_iqr": dict(zip(params.feature_names, map(float, q75 - q25), strict=True)),
        # how often each feature was not 0: a normal of 0 with an IQR of 0 says "usually 0", not how usually
        "feature_nonzero_share": dict(zip(params.feature_names, map(float, np.mean(X != 0, axis=0)), strict=True)),
        "format_version": 2 if baseline is not None else 1,
        "baseline_windows": None if baseline is None else baseline.horizon,
    }
    model = Model(
        forest=arrays, feature_names=tuple(params.feature_names), context_rows=params.context_rows,
        center=center, scale=scale, expected=expected, spread=q75 - q25, profile=profile, counts=counts,
        calibration_raw=cal_raw, calibration_score=cal_score, deviation_raw=dev_raw,
        deviation_score=dev_score, metadata=metadata, evidence_column=evidence_column,
        evidence_prior=evidence_prior if weights is not None else None, extreme=extreme,
        ignored=ignored if ignored.any() else None, extreme_power=config.DEVIATION_EXTREME_POWER,
        logs=logs if logs.any() else None, baseline=baseline, shift_threshold=shift_threshold,
        step_threshold=step_threshold,
        movable=_movable(X, params.context_rows, ignored) if baseline is not None else None,
    )
    report(1.0)
    return model


def _movable(X: np.ndarray, context_rows: int, ignored: np.ndarray) -> np.ndarray:
    """(f,) features never exactly constant over a whole context in training (and not rule-owned)."""
    if context_rows < 2 or X.shape[0] < context_rows:
        return np.zeros(X.shape[1], dtype=bool)
    windows = np.lib.stride_tricks.sliding_window_view(X, context_rows, axis=0)
    return ~np.any(windows.max(axis=2) == windows.min(axis=2), axis=0) & ~ignored


def _check_matrix(X: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(names):
        raise ValueError(f"training data must be (windows, {len(names)}) for features {', '.join(names)}; "
                         f"got shape {X.shape}")
    bad = ~np.isfinite(X)
    if bad.any():
        row, column = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"training data: feature {names[column]!r} is not a finite number in window {row}")
    return X


def _evidence(params: TrainParams) -> tuple[int | None, np.ndarray]:
    """(column counting the requests, pseudo-count of each feature) from the feature names."""
    names = params.feature_names
    if config.EVIDENCE_COLUMN not in names or not params.evidence:
        return None, np.zeros(len(names))
    prior = np.array([config.EVIDENCE_PSEUDO_REQUESTS.get(name, 0.0) for name in names])
    return names.index(config.EVIDENCE_COLUMN), prior


def _extremes(Z: np.ndarray) -> np.ndarray:
    """Each input's extreme |z| in training: a high quantile, at least DEVIATION_EXTREME_FLOOR."""
    return np.maximum(np.quantile(np.abs(Z), config.DEVIATION_EXTREME_QUANTILE, axis=0),
                      config.DEVIATION_EXTREME_FLOOR)


def _step_wander(adjusted: np.ndarray, baseline: Baseline, unit: np.ndarray) -> np.ndarray:
    """(f,) the largest step (`baseline.step_distance`, in `unit`s) the training rows' block medians made
    from the training median, blocks as the walk over them laid them."""
    n, b, q = adjusted.shape[0] // baseline.block, baseline.block, baseline.step_blocks
    if n < q:
        return np.zeros(adjusted.shape[1])
    medians = np.median(adjusted[:n * b].reshape(n, b, -1), axis=1)
    signed = (medians - baseline.reference) / unit
    return np.max([step_distance(signed[t - q:t]) for t in range(q, n + 1)], axis=0)


def _false_alarm_rate(params: TrainParams, timestamps: np.ndarray | None) -> tuple[float, float | None]:
    """(share of windows allowed over the threshold, window spacing in seconds if known).

    The stricter of `false_alarm_rate` and `false_alarms_per_day` windows a day: at 5-minute
    windows (288 a day) the default 2 % is 5.8 windows a day, but at 5-second windows (17,280 a
    day) it would be 346, each a chance to open an incident.
    """
    if timestamps is None or timestamps.shape[0] < 2:
        return params.false_alarm_rate, None
    steps = np.diff(np.sort(timestamps))
    steps = steps[steps > 0]
    if steps.size == 0:
        return params.false_alarm_rate, None
    spacing = float(np.median(steps))
    per_day = params.false_alarms_per_day * spacing / config.DAILY_CYCLE_MIN_SECONDS
    return min(params.false_alarm_rate, per_day), spacing


def _covered_seconds(timestamps: np.ndarray | None) -> float:
    """The time the windows cover: from the first window's start to the end of the last (its start plus
    the usual step). A day of 5-s windows covers 86,400 s; first start to last start, 86,395 s, was
    "less than a day", so the Demo panel's "Backfill a day" and Train never modelled the daily cycle."""
    if timestamps is None or timestamps.shape[0] == 0:
        return 0.0
    steps = np.diff(np.sort(timestamps))
    steps = steps[steps > 0]
    last = float(np.median(steps)) if steps.size else 0.0
    return float(timestamps.max() - timestamps.min()) + last


def _grow(X: np.ndarray, params: TrainParams, report: Callable[[float], None],
          cancel: Callable[[], bool] | None) -> tuple[list[ExtraTreeRegressor], list[np.ndarray]]:
    """The isolation trees and the rows each drew, exactly as `IsolationForest.fit` makes them.

    scikit-learn's `IsolationForest.fit` (bagging over `ExtraTreeRegressor(max_features=1,
    splitter="random")`) has no per-tree progress, and `warm_start` steps re-walk every earlier tree;
    its per-tree Python overhead is also about three times the growing itself. Here each tree gets the
    seed, the subsample and the depth limit `IsolationForest` would give it (a test compares the trees
    node by node), grown on its own rows only. `X` is float32 and C-contiguous, as the trees need.
    """
    n, n_features = X.shape
    max_samples = min(params.max_samples, n)
    max_depth = int(np.ceil(np.log2(max(max_samples, 2))))
    y = np.random.RandomState(params.random_state).uniform(size=n)  # a non-constant target: any split is kept
    seeds = np.random.RandomState(params.random_state).randint(_MAX_INT, size=params.trees)
    trees: list[ExtraTreeRegressor] = []
    drawn: list[np.ndarray] = []
    for t, seed in enumerate(seeds):
        if t % params.chunk_trees == 0:
            if cancel is not None and cancel():
                raise TrainingCancelled(f"training cancelled after {t} of {params.trees} trees")
            report(0.9 * t / params.trees)
        draw = np.random.RandomState(seed)
        sample_without_replacement(n_features, n_features, random_state=draw)  # bagging's column draw comes first
        rows = np.sort(sample_without_replacement(n, max_samples, random_state=draw))
        tree = ExtraTreeRegressor(max_features=1, splitter="random", max_depth=max_depth,
                                  random_state=np.random.RandomState(seed).randint(_MAX_INT))  # fmt: skip
        with sklearn.config_context(skip_parameter_validation=True):  # constant, valid parameters
            trees.append(tree.fit(X[rows], y[rows], check_input=False))
        drawn.append(rows)
    report(0.9)
    return trees, drawn


def _out_of_bag_scores(arrays: ForestArrays, trees: list[ExtraTreeRegressor], drawn: list[np.ndarray],
                       X: np.ndarray, radius: int = 0) -> np.ndarray:
    """Each training window's anomaly score from the trees that drew none of the windows within `radius`
    of it (the windows whose inputs share rows with its own: `context_rows` − 1); where fewer than
    `config.OOB_MIN_TREE_SHARE` of the trees are that far, from the trees that did not draw the window
    itself, and from all trees if none.

    A tree that drew the window before or after scores it as nearly seen: their value, mean and std
    are computed over mostly the same rows. Out of bag in the plain sense, the training windows of an
    autocorrelated service looked more normal than new ones (control set of issue 17: 2.2 % of new
    normal windows over the forest's threshold against its 1.5 % share of the budget in training).

    Each tree's `apply` finds the leaves (on the same float32 inputs the arrays' walk compares, so the
    same leaves: a test checks) in a fraction of the walk's time over 10,000 windows.
    """
    n = X.shape[0]
    paths = np.empty((n, len(trees)))
    for t, tree in enumerate(trees):
        paths[:, t] = arrays.leaf_path[arrays.roots[t] + tree.apply(X, check_input=False)]
    out_of_bag = np.ones(paths.shape, dtype=bool)
    far = np.ones(paths.shape, dtype=bool)
    for t, rows in enumerate(drawn):
        out_of_bag[rows, t] = False
        if radius > 0:
            edges = np.zeros(n + 1, dtype=np.int64)  # +1 where a drawn window's neighbourhood starts, −1 after it ends
            np.add.at(edges, np.maximum(rows - radius, 0), 1)
            np.add.at(edges, np.minimum(rows + radius + 1, n), -1)
            far[:, t] = np.cumsum(edges[:n]) == 0
    far &= out_of_bag
    enough = far.sum(axis=1) >= max(1, int(np.ceil(config.OOB_MIN_TREE_SHARE * len(trees))))
    chosen = np.where(enough[:, None], far, out_of_bag)
    chosen[~chosen.any(axis=1)] = True
    return arrays.anomaly_score_from_paths(paths, chosen)


def _params_dict(params: TrainParams) -> dict[str, object]:
    data = asdict(params)
    data["feature_names"] = list(params.feature_names)
    return data
