"""A trained detection model: feature pipeline, forest, score calibration and metadata, as data only.

`Model.to_json()` writes one sealed JSON blob (see `forest.seal`): the forest's node arrays, the
robust-scaling constants, the optional daily profile, the calibration anchors and the metadata.
`Model.from_json()` refuses anything malformed, tampered or of another format with a
`ModelFormatError`; loading never executes anything.

Scoring pipeline (the same for training, live scoring and the backtest):
rows → counts as log(1 + x) → deseasonalise (daily profile, if any) → value/mean/std/jump over `context_rows`
→ robust scaling → forest anomaly score in (0, 1] and largest robust |z| → each calibrated to 0–100
→ the larger of the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anomalydesk.detect.features import (
    HOURS_PER_DAY,
    KINDS,
    deseasonalise,
    from_model_space,
    hours_of_day,
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

MODEL_FORMAT = "anomalydesk.model"
MODEL_FORMAT_VERSION = 1


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

    @property
    def n_features(self) -> int:
        """Number of raw features per row."""
        return len(self.feature_names)

    @property
    def threshold(self) -> float:
        """The calibrated score at and above which a window is anomalous."""
        return float(self.metadata.get("threshold", self.calibration_score[2]))

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

    def expected_rows(self, n: int, timestamps: np.ndarray | None = None) -> np.ndarray:
        """(n, f) expected value of each feature: the hour's profile with a daily cycle, else the median."""
        if self.profile is not None and timestamps is not None:
            return from_model_space(self.profile[hours_of_day(timestamps)], self.counts)
        return np.tile(self.expected, (n, 1))

    def transform(self, X: np.ndarray, timestamps: np.ndarray | None = None) -> np.ndarray:
        """(n, 4·f) robust-scaled derived features of each row, given the rows before it."""
        X = self.check_rows(X)
        if timestamps is not None:
            timestamps = np.asarray(timestamps, dtype=np.float64).reshape(-1)
            if timestamps.shape[0] != X.shape[0]:
                raise ValueError(f"{timestamps.shape[0]} timestamps for {X.shape[0]} rows")
        adjusted = deseasonalise(to_model_space(X, self.counts), timestamps, self.profile,
                                 to_model_space(self.expected, self.counts))
        return (window_features(adjusted, self.context_rows) - self.center) / self.scale

    def raw_scores(self, Z: np.ndarray) -> np.ndarray:
        """Forest anomaly score in (0, 1] (0.5 ≈ unremarkable, near 1 = isolated at once)."""
        return -self.forest.score_samples(Z)

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """Raw forest anomaly scores → 0–100, monotone, threshold ↦ SEVERITY_WARNING."""
        return np.interp(raw, self.calibration_raw, self.calibration_score)

    def calibrate_deviation(self, deviation: np.ndarray) -> np.ndarray:
        """Largest robust |z| of a row → 0–100, monotone, threshold ↦ SEVERITY_WARNING."""
        return np.interp(deviation, self.deviation_raw, self.deviation_score)

    def scores_from(self, Z: np.ndarray) -> np.ndarray:
        """0–100 score of transformed rows: the larger of the forest's and the deviation's verdict.

        The forest sees unusual combinations; it is blind to *how far* out a single input is (a
        point beyond the training range is isolated at the first split on that input, which few
        paths reach among 4·f inputs). The largest robust |z| sees exactly that.
        """
        deviation = np.abs(Z).max(axis=1)
        return np.maximum(self.calibrate(self.raw_scores(Z)), self.calibrate_deviation(deviation))

    def scores(self, X: np.ndarray, timestamps: np.ndarray | None = None) -> np.ndarray:
        """Calibrated 0–100 score of every row (each with the rows before it as context)."""
        return self.scores_from(self.transform(X, timestamps))

    # --- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready payload (numbers, strings and the metadata object)."""
        return {
            "format": MODEL_FORMAT,
            "version": MODEL_FORMAT_VERSION,
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
        if data.get("version") != MODEL_FORMAT_VERSION:
            raise ModelFormatError(f"model: format version {data.get('version')!r} is not {MODEL_FORMAT_VERSION}")
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
                   profile=profile, counts=counts.astype(bool), metadata=metadata, **arrays, **anchors)
