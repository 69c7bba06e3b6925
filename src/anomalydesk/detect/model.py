"""A trained detection model: feature pipeline, forest, score calibration and metadata, as data only.

`Model.to_json()` writes one sealed JSON blob (see `forest.seal`): the forest's node arrays, the
robust-scaling constants, the optional daily profile, the calibration anchors and the metadata.
`Model.from_json()` refuses anything malformed, tampered or of another format with a
`ModelFormatError`; loading never executes anything.

Scoring pipeline (the same for training, live scoring and the backtest):
rows → counts and latencies as log(1 + x) → deseasonalise (daily profile, if any) → per-request statistics shrunk by
their evidence (features.shrink) = the adjusted values (`adjusted`) → value/mean/std/jump over `context_rows`, value and
mean less the service's slowly moving baseline (format 2, detect/baseline.py) → robust scaling → forest
anomaly score in (0, 1] and the largest robust |z|, each input's |z| relative to its own training
extreme → each calibrated to 0–100 → the larger of the two.

Why this module is long: the pipeline above is one chain of steps over one set of stored arrays,
and `Model` is where it is written once for training, live scoring and the backtest, beside the
format that stores those arrays (`to_dict`/`from_dict` validate what the steps read). Split, a
step and the data it needs would sit in different modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from anomalydesk import config
from anomalydesk.detect.baseline import Baseline
from anomalydesk.detect.features import (
    HOURS_PER_DAY,
    KINDS,
    count_resolution,
    deseasonalise,
    evidence_weights,
    from_model_space,
    hours_of_day,
    shrink,
    to_model_space,
    window_features,
)
from anomalydesk.detect.forest import (
    ForestArrays,
    ModelFormatError,
    float_array,
    int_array,
    require_int,
    seal,
    unseal,
)
from anomalydesk.fingerprint import FEATURES

MODEL_FORMAT = "anomalydesk.model"
MODEL_FORMAT_VERSION = 2  # 2: level inputs against a moving baseline (detect/baseline.py)
MODEL_FORMAT_VERSIONS = (1, 2)  # loadable: a format-1 model scores as it always did (no baseline)


FEATURE_UNITS = {f.name: f.unit for f in FEATURES}


@dataclass(frozen=True)
class Model:
    """Everything needed to score a service's fingerprints; immutable, serialisable without pickle."""

    forest: ForestArrays
    feature_names: tuple[str, ...]
    context_rows: int
    center: np.ndarray  # (4·f,) median of each derived column in training
    scale: np.ndarray  # (4·f,) its IQR (guarded, see features.robust_center_scale)
    expected: np.ndarray  # (f,) median of each raw feature in training: the "normal" value
    spread: np.ndarray  # (f,) IQR of each raw feature in training
    profile: np.ndarray | None  # (24, f) per-hour-of-day medians (model space), or None
    counts: np.ndarray  # (f,) bool: used as log(1 + x) (features.count_features)
    calibration_raw: np.ndarray  # increasing raw anomaly scores …
    calibration_score: np.ndarray  # … and the 0–100 scores they map to (piecewise linear)
    deviation_raw: np.ndarray  # increasing largest-|z| values …
    deviation_score: np.ndarray  # … and their 0–100 scores
    metadata: dict[str, Any] = field(default_factory=dict)
    evidence_column: int | None = None  # raw column counting the requests behind a row (features.shrink)
    evidence_prior: np.ndarray | None = None  # (f,) pseudo-count of each feature, 0 = not shrunk
    extreme: np.ndarray | None = None  # (4·f,) each input's training extreme |z|
    extreme_power: float = 1.0  # the deviation's unit per input: (extreme / median extreme) ** this
    ignored: np.ndarray | None = None  # (f,) bool: held at its normal level, judged elsewhere (rules)
    logs: np.ndarray | None = None  # (f,) bool: non-count features also used as log(1 + x) (latencies)
    baseline: Baseline | None = None  # format 2: the baseline at the end of training (None: format 1)
    shift_threshold: np.ndarray | None = None  # (f,) a level shift beyond this many value-IQRs (baseline.py)
    step_threshold: np.ndarray | None = None  # (f,) … or a step of the newest block medians beyond this many
    movable: np.ndarray | None = None  # (f,) bool, format 2: never constant over a whole context in training

    def stuck(self, X: np.ndarray) -> np.ndarray:
        """(n, f) bool: a `movable` feature exactly constant over the row's whole context (a stuck exporter,
        a frozen gauge); all False without `movable` (format 1) or before a full context."""
        X = np.asarray(X, dtype=np.float64)
        out = np.zeros(X.shape, dtype=bool)
        w = self.context_rows
        if self.movable is None or w < 2 or X.shape[0] < w or not self.movable.any():
            return out
        windows = sliding_window_view(X, w, axis=0)  # (n - w + 1, f, w)
        out[w - 1:] = (windows.max(axis=2) == windows.min(axis=2)) & self.movable
        if self.evidence_column is not None and out.any():
            out[w - 1:] &= ~self._zero_by_chance(windows)
        return out

    def _zero_by_chance(self, windows: np.ndarray) -> np.ndarray:
        """(n - w + 1, f) bool: a share of requests at 0 over the context that its few requests explain. A
        ratio at its training median r over N requests is 0 with chance (1 − r)^N ≈ exp(−r·N): at night,
        20 requests a window at a 2 % 4xx ratio give six zeros in a row one time in six — no frozen
        exporter. Counted as stuck only below `config.STUCK_ZERO_CHANCE` (a ratio whose median is 0 never)."""
        assert self.evidence_column is not None
        requests = windows[:, self.evidence_column, :].sum(axis=1)  # (m,)
        out = np.zeros(windows.shape[:2], dtype=bool)
        for j, name in enumerate(self.feature_names):
            if FEATURE_UNITS.get(name) != "%":
                continue
            zero = windows[:, j, 0] == 0.0
            rate = float(self.expected[j])
            out[:, j] = zero & ((rate <= 0.0) | (np.exp(-rate * requests) >= config.STUCK_ZERO_CHANCE))
        return out

    @property
    def format_version(self) -> int:
        """1: level inputs against the training median; 2: against the moving baseline."""
        return 1 if self.baseline is None else 2

    @property
    def n_features(self) -> int:
        """Number of raw features per row."""
        return len(self.feature_names)

    @property
    def threshold(self) -> float:
        """The calibrated score at and above which a window is anomalous."""
        return float(self.metadata.get("threshold", self.calibration_score[2]))

    @property
    def log_scale(self) -> np.ndarray:
        """(f,) bool: features used as log(1 + x): the counts and `logs`."""
        return self.counts if self.logs is None else self.counts | self.logs

    @property
    def robust_spread(self) -> np.ndarray | None:
        """(f,) bool: per-request statistics, whose context std leaves out one outlier (with evidence)."""
        return None if self.evidence_prior is None else self.evidence_prior > 0

    # --- the pipeline ---------------------------------------------------------------------------
    def check_rows(self, X: np.ndarray) -> np.ndarray:
        """Rows as a float (n, f) array; a wrong width or a non-finite value is a ValueError."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[None, :]
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features ({', '.join(self.feature_names)}), "
                             f"got shape {X.shape}")
        bad = ~np.isfinite(X)
        if bad.any():
            column = int(np.argwhere(bad)[0][1])
            raise ValueError(f"feature {self.feature_names[column]!r} has a non-finite value")
        return X

    def expected_rows(self, n: int, timestamps: np.ndarray | None = None,
                      levels: np.ndarray | None = None) -> np.ndarray:
        """(n, f) expected value of each feature: the hour's profile with a daily cycle, else the median;
        with `levels` (format 2: the baseline, adjusted space) that level at the hour."""
        seasonal = self.profile is not None and timestamps is not None
        if levels is None:
            if seasonal:
                return from_model_space(self.profile[hours_of_day(timestamps)], self.log_scale)
            return np.tile(self.expected, (n, 1))
        base = np.broadcast_to(levels, (n, self.n_features))
        if seasonal:
            base = base + self.profile[hours_of_day(timestamps)] - to_model_space(self.expected, self.log_scale)
        return from_model_space(base, self.log_scale)

    def adjusted(self, X: np.ndarray, timestamps: np.ndarray | None = None) -> np.ndarray:
        """(n, f) each row in model space, deseasonalised, shrunk by its evidence, ignored features held:
        what the window features are computed from, and what the baseline follows. Row by row."""
        X = self.check_rows(X)
        if timestamps is not None:
            timestamps = np.asarray(timestamps, dtype=np.float64).reshape(-1)
            if timestamps.shape[0] != X.shape[0]:
                raise ValueError(f"{timestamps.shape[0]} timestamps for {X.shape[0]} rows")
        overall = to_model_space(self.expected, self.log_scale)
        adjusted = deseasonalise(to_model_space(X, self.log_scale), timestamps, self.profile, overall)
        adjusted = shrink(adjusted, overall, self.evidence(X))
        if self.ignored is not None:
            adjusted[:, self.ignored] = overall[self.ignored]
        return adjusted

    def transform(self, X: np.ndarray, timestamps: np.ndarray | None = None,
                  levels: np.ndarray | None = None) -> np.ndarray:
        """(n, 4·f) robust-scaled derived features of each row, given the rows before it.

        `levels`: (n, f) or (f,) the baseline each row is measured against (format 2); without, the
        rows are walked from the end-of-training baseline (`walk`), as a series following training."""
        adjusted = self.adjusted(X, timestamps)
        derived = window_features(adjusted, self.context_rows, self.robust_spread)
        if self.baseline is not None:
            if levels is None:
                levels = self.walk(adjusted)[0]
            f = self.n_features
            derived[:, :f] -= levels
            derived[:, f:2 * f] -= levels
        return (derived - self.center) / self.scale

    def walk(self, adjusted: np.ndarray, stamps: np.ndarray | None = None, state: Baseline | None = None,
             accept: bool = False) -> tuple[np.ndarray, Baseline, list]:
        """Baseline.walk over adjusted rows from `state` (default: the end of training); with `accept`,
        each level shift is accepted as it appears (the backtest). A format-1 model has no baseline."""
        if self.baseline is None:
            raise ValueError("a format-1 model has no baseline")
        start = state or self.baseline
        return start.walk(adjusted, stamps, self.shift_limits if accept else None)

    @property
    def shift_limits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(unit, threshold, step) for `Baseline.shift` / `accept` (format 2; a model saved before the step
        threshold existed uses its shift threshold for steps as well)."""
        if self.shift_threshold is None:
            raise ValueError("a format-1 model has no level-shift thresholds")
        step = self.shift_threshold if self.step_threshold is None else self.step_threshold
        return self.level_unit, self.shift_threshold, step

    @property
    def level_unit(self) -> np.ndarray:
        """(f,) a level's unit: the value input's training IQR (its robust scale)."""
        return self.scale[:self.n_features]

    def evidence(self, X: np.ndarray) -> np.ndarray | None:
        """(n, f) evidence weight of each value (features.evidence_weights), None if not used."""
        if self.evidence_prior is None:
            return None
        return evidence_weights(X, self.evidence_column, self.evidence_prior)

    def relative_deviation(self, Z: np.ndarray) -> np.ndarray:
        """(n, 4·f) each input's |z| in units of its own training extreme (plain |z| for older models)."""
        return np.abs(Z) if self.extreme is None else np.abs(Z) / self.extreme

    def deviation(self, Z: np.ndarray) -> np.ndarray:
        """(n,) the deviation verdict's input: the largest |z| of the row, see `deviation_of`."""
        if self.extreme is None:
            return np.abs(Z).max(axis=1)
        step = np.tile(count_resolution(self.expected, self.counts), len(KINDS)) / self.scale
        return deviation_of(Z, self.extreme, self.extreme_power, step)

    def raw_scores(self, Z: np.ndarray) -> np.ndarray:
        """Forest anomaly score in (0, 1] (0.5 ≈ unremarkable, near 1 = isolated at once)."""
        return -self.forest.score_samples(Z)

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """Raw forest anomaly scores → 0–100, increasing, threshold ↦ SEVERITY_WARNING (`calibrated`)."""
        return calibrated(raw, self.calibration_raw, self.calibration_score)

    def calibrate_deviation(self, deviation: np.ndarray) -> np.ndarray:
        """Largest robust |z| of a row → 0–100, increasing, threshold ↦ SEVERITY_WARNING (`calibrated`)."""
        return calibrated(deviation, self.deviation_raw, self.deviation_score)

    def scores_from(self, Z: np.ndarray) -> np.ndarray:
        """0–100 score of transformed rows: the larger of the forest's and the deviation's verdict.

        The forest sees unusual combinations; it is blind to *how far* out a single input is (a
        point beyond the training range is isolated at the first split on that input, which few
        paths reach among 4·f inputs). The largest robust |z| sees exactly that, each input measured
        against its own training extreme, so a heavy-tailed input does not set the bar for all.
        """
        deviation = self.deviation(Z)
        return np.maximum(self.calibrate(self.raw_scores(Z)), self.calibrate_deviation(deviation))

    def scores(self, X: np.ndarray, timestamps: np.ndarray | None = None,
               levels: np.ndarray | None = None) -> np.ndarray:
        """Calibrated 0–100 score of every row (each with the rows before it as context); a row with a
        stuck feature (`stuck`) scores at least `config.STUCK_SCORE`."""
        scores = self.scores_from(self.transform(X, timestamps, levels))
        return with_stuck(scores, self.stuck(self.check_rows(X)))

    # --- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready payload (numbers, strings and the metadata object)."""
        return {
            "format": MODEL_FORMAT,
            "version": self.format_version,
            "forest": self.forest.to_dict(),
            "feature_names": list(self.feature_names),
            "context_rows": self.context_rows,
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "expected": self.expected.tolist(),
            "spread": self.spread.tolist(),
            "profile": None if self.profile is None else self.profile.tolist(),
            "counts": [int(c) for c in self.counts],
            "calibration_raw": self.calibration_raw.tolist(),
            "calibration_score": self.calibration_score.tolist(),
            "deviation_raw": self.deviation_raw.tolist(),
            "deviation_score": self.deviation_score.tolist(),
            "metadata": self.metadata,
            "evidence_column": self.evidence_column,
            "evidence_prior": None if self.evidence_prior is None else self.evidence_prior.tolist(),
            "extreme": None if self.extreme is None else self.extreme.tolist(),
            "extreme_power": self.extreme_power,
            "ignored": None if self.ignored is None else [int(i) for i in self.ignored],
            "logs": None if self.logs is None else [int(i) for i in self.logs],
            **({} if self.baseline is None else {
                "baseline": self.baseline.to_dict(),
                "shift_threshold": None if self.shift_threshold is None else self.shift_threshold.tolist(),
                "step_threshold": None if self.step_threshold is None else self.step_threshold.tolist(),
                "movable": None if self.movable is None else [int(m) for m in self.movable]}),
        }

    def to_json(self) -> bytes:
        """One sealed JSON blob (payload + sha256), safe to store in Redis."""
        return seal(self.to_dict())

    @classmethod
    def from_json(cls, blob: bytes | str) -> Model:
        """Load a blob from `to_json`; anything malformed or tampered raises ModelFormatError."""
        return cls.from_dict(unseal(blob))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Model:
        """Rebuild and validate a model payload."""
        where = "model"
        if data.get("format") != MODEL_FORMAT:
            raise ModelFormatError(f"model: unknown format {data.get('format')!r}")
        version = data.get("version")
        if isinstance(version, bool) or version not in MODEL_FORMAT_VERSIONS:
            raise ModelFormatError(f"model: format version {version!r} is not one of "
                                   f"{', '.join(map(str, MODEL_FORMAT_VERSIONS))}")
        names = data.get("feature_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ModelFormatError("model: 'feature_names' must be a non-empty list of strings")
        f = len(names)
        context_rows = require_int(data, "context_rows", where)
        if context_rows < 1:
            raise ModelFormatError("model: 'context_rows' must be at least 1")
        forest = ForestArrays.from_dict(data.get("forest"))
        if forest.n_features != len(KINDS) * f:
            raise ModelFormatError(f"model: forest expects {forest.n_features} inputs, "
                                   f"{len(KINDS) * f} derived features were declared")
        arrays = {}
        for key, size in (("center", len(KINDS) * f), ("scale", len(KINDS) * f), ("expected", f),
                          ("spread", f)):
            arrays[key] = float_array(data, key, where)
            if arrays[key].shape != (size,):
                raise ModelFormatError(f"model: {key!r} has shape {arrays[key].shape}, expected ({size},)")
        if np.any(arrays["scale"] <= 0):
            raise ModelFormatError("model: 'scale' must be positive")
        counts = int_array(data, "counts", where)
        if counts.shape != (f,) or not np.all((counts == 0) | (counts == 1)):
            raise ModelFormatError(f"model: 'counts' must be {f} values of 0 or 1")
        profile = None
        if data.get("profile") is not None:
            profile = float_array(data, "profile", where, ndim=2)
            if profile.shape != (HOURS_PER_DAY, f):
                raise ModelFormatError(f"model: 'profile' has shape {profile.shape}, expected ({HOURS_PER_DAY}, {f})")
        anchors = {}
        for raw_key, score_key in (("calibration_raw", "calibration_score"), ("deviation_raw", "deviation_score")):
            raw, mapped = float_array(data, raw_key, where), float_array(data, score_key, where)
            if raw.shape != mapped.shape or raw.size < 3:
                raise ModelFormatError(f"model: {raw_key!r} and {score_key!r} must have equal length (≥ 3)")
            if np.any(np.diff(raw) <= 0) or np.any(np.diff(mapped) < 0):
                raise ModelFormatError(f"model: {raw_key!r} anchors must be increasing")
            anchors[raw_key], anchors[score_key] = raw, mapped
        metadata = data.get("metadata")
        if not isinstance(metadata, dict):
            raise ModelFormatError("model: 'metadata' must be an object")
        return cls(forest=forest, feature_names=tuple(names), context_rows=context_rows,
                   profile=profile, counts=counts.astype(bool), metadata=metadata, **arrays, **anchors,
                   **_optional_arrays(data, f), **_baseline(data, f, version))


def _baseline(data: dict[str, Any], f: int, version: int) -> dict[str, Any]:
    """Format 2's end-of-training baseline and level-shift thresholds (none in format 1)."""
    if version < 2:
        return {}
    try:
        baseline = Baseline.from_dict(data.get("baseline"), f)
    except ValueError as err:
        raise ModelFormatError(f"model: {err}") from None
    threshold = float_array(data, "shift_threshold", "model")
    if threshold.shape != (f,) or np.any(threshold <= 0):
        raise ModelFormatError(f"model: 'shift_threshold' must be {f} positive values")
    step = None
    if data.get("step_threshold") is not None:
        step = float_array(data, "step_threshold", "model")
        if step.shape != (f,) or np.any(step <= 0):
            raise ModelFormatError(f"model: 'step_threshold' must be {f} positive values")
    movable = None
    if data.get("movable") is not None:
        mask = int_array(data, "movable", "model")
        if mask.shape != (f,) or not np.all((mask == 0) | (mask == 1)):
            raise ModelFormatError(f"model: 'movable' must be {f} values of 0 or 1")
        movable = mask.astype(bool)
    return {"baseline": baseline, "shift_threshold": threshold, "step_threshold": step, "movable": movable}


def with_stuck(scores: np.ndarray, stuck: np.ndarray) -> np.ndarray:
    """Scores raised to at least `config.STUCK_SCORE` where a row has a stuck feature."""
    return np.where(stuck.any(axis=1), np.maximum(scores, config.STUCK_SCORE), scores)


def _optional_arrays(data: dict[str, Any], f: int) -> dict[str, Any]:
    """evidence_column, evidence_prior, extreme, ignored, logs: absent (None) in models trained before them."""
    where = "model"
    out: dict[str, Any] = {"evidence_column": None, "evidence_prior": None, "extreme": None, "ignored": None,
                           "logs": None}  # fmt: skip
    for key in ("ignored", "logs"):
        if data.get(key) is not None:
            mask = int_array(data, key, where)
            if mask.shape != (f,) or not np.all((mask == 0) | (mask == 1)):
                raise ModelFormatError(f"model: {key!r} must be {f} values of 0 or 1")
            out[key] = mask.astype(bool)
    if data.get("evidence_prior") is not None:
        column = data.get("evidence_column")
        if isinstance(column, bool) or not isinstance(column, int) or not 0 <= column < f:
            raise ModelFormatError(f"model: 'evidence_column' must be a feature index below {f}, got {column!r}")
        prior = float_array(data, "evidence_prior", where)
        if prior.shape != (f,) or np.any(prior < 0):
            raise ModelFormatError(f"model: 'evidence_prior' must be {f} non-negative values")
        out["evidence_column"], out["evidence_prior"] = column, prior
    if data.get("extreme") is not None:
        extreme = float_array(data, "extreme", where)
        if extreme.shape != (len(KINDS) * f,) or np.any(extreme <= 0):
            raise ModelFormatError(f"model: 'extreme' must be {len(KINDS) * f} positive values")
        out["extreme"] = extreme
        power = data.get("extreme_power", 1.0)
        if isinstance(power, bool) or not isinstance(power, int | float) or not 0.0 <= power <= 1.0:
            raise ModelFormatError(f"model: 'extreme_power' must be a number in [0, 1], got {power!r}")
        out["extreme_power"] = float(power)
    return out


TAIL_AT_TOP = 99.0  # the score at the last anchor (the old ceiling of 100)


def calibrated(raw: np.ndarray, anchors_raw: np.ndarray, anchors_score: np.ndarray) -> np.ndarray:
    """Raw verdicts → 0–100 through the anchors (typical → SCORE_AT_MEDIAN, threshold → warning, critical →
    critical), strictly increasing all the way: beyond the critical anchor (the second to last) the score
    keeps rising, 100 − (100 − critical) / (1 + k·x) with x the distance past critical in units of the
    critical-to-last-anchor span and k putting the last anchor at TAIL_AT_TOP; it approaches 100 and never
    reaches it, so windows far beyond critical still rank (a plateau at 100 made the score lose its order:
    25–97 % of the rows of a drifting series scored exactly 100). Below critical: linear between anchors.
    """
    raw = np.asarray(raw, dtype=np.float64)
    r_crit, r_top = float(anchors_raw[-2]), float(anchors_raw[-1])
    s_crit = float(anchors_score[-2])
    k = (100.0 - s_crit) / (100.0 - TAIL_AT_TOP) - 1.0
    below = np.interp(raw, anchors_raw[:-1], anchors_score[:-1])
    past = np.maximum(raw - r_crit, 0.0) / max(r_top - r_crit, 1e-12)
    tail = 100.0 - (100.0 - s_crit) / (1.0 + k * past)
    return np.where(raw > r_crit, tail, below)


def deviation_of(Z: np.ndarray, extreme: np.ndarray, power: float, step: np.ndarray) -> np.ndarray:
    """(n,) largest |z| of each row, each input's |z| less `step` over (its extreme / the median) ** power.

    Power 0 is the plain largest |z| (one heavy-tailed input then sets the bar for all); 1 measures
    every input against its own training extreme (a light-tailed input drifting just past its
    extreme then alarms); in between keeps some of both. `step` is a count's smallest change (one
    unit, in z; 0 for other features): one endpoint fewer than ever is not news.
    """
    unit = (extreme / np.median(extreme)) ** power
    return (np.maximum(np.abs(Z) - step, 0.0) / unit).max(axis=1)
