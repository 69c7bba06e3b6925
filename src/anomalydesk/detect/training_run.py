"""Training a service from Redis: select its windows, train (pure), store and activate the model.

Window selection (`training_data`): the service's most recent fingerprints, minus `no_data`
windows, minus windows inside confirmed incidents (an anomaly must not become "normal"), plus the
windows of incidents an operator marked false positive (put back even when they are older than the
range read). `retrain_if_better` is the detector's scheduled retraining: it holds back the newest
normal windows, trains a candidate on the rest and activates it only when its false-alarm rate on
the held-back windows is no worse than the active model's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import redis

from anomalydesk import config
from anomalydesk.detect import incidents
from anomalydesk.detect.model import Model
from anomalydesk.detect.score import score_batch
from anomalydesk.detect.service_state import load_model
from anomalydesk.detect.train import InsufficientHistory, TrainParams, train
from anomalydesk.fingerprint import FEATURE_NAMES, SCHEMA_VERSION, Fingerprint
from anomalydesk.store import fingerprints
from anomalydesk.store import models as registry
from anomalydesk.store.keys import Keys


@dataclass
class TrainingData:
    """The windows one training uses, oldest first, and what was left out or put back."""

    windows: np.ndarray  # int64 window indices
    timestamps: np.ndarray  # float64 window starts (epoch seconds)
    X: np.ndarray  # (windows, features)
    excluded: int = 0  # windows inside confirmed incidents
    restored: int = 0  # false-positive windows put back from outside the range read

    def __len__(self) -> int:
        return int(self.windows.shape[0])

    def head(self, n: int) -> TrainingData:
        """The first `n` windows (negative: all but the last -n), with the same counts."""
        return TrainingData(self.windows[:n], self.timestamps[:n], self.X[:n], self.excluded, self.restored)


@dataclass
class TrainOutcome:
    """What `train_service` did for one service."""

    service: str
    version: int | None = None
    windows: int = 0
    seconds: float = 0.0
    skipped: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON shape printed by `train --json`."""
        out: dict[str, Any] = {"service": self.service, "version": self.version, "windows": self.windows,
                               "seconds": round(self.seconds, 3)}  # fmt: skip
        if self.skipped:
            out["skipped"] = self.skipped
        for key in ("threshold", "daily_cycle", "note", "training_flag_rate", "excluded_windows",
                    "restored_windows", "replaced"):  # fmt: skip
            if key in self.metadata:
                out[key] = self.metadata[key]
        return out


_NAMES = ("window", "start", "schema", "no_data", *FEATURE_NAMES)
_DEFAULTS = ("nan", "nan", str(SCHEMA_VERSION), "0", *("0" for _ in FEATURE_NAMES))  # as from_stream_entry


def _recent_rows(r: redis.Redis, service: str, n: int, *, keys: Keys) -> np.ndarray:
    """(m, 4 + features) for the last `n` fingerprints, oldest first: window, start, schema, no_data, features."""
    rows = fingerprints.latest_columns(r, service, n, _NAMES, _DEFAULTS, keys=keys)
    if not np.all(np.isfinite(rows[:, :2])):
        raise ValueError(f"fingerprint stream of {service!r}: an entry without a window or start")
    return rows


def recent_windows(r: redis.Redis, service: str, n: int, *, keys: Keys) -> list[Fingerprint]:
    """The last `n` fingerprints of a service, oldest first, features only (no KPI values).

    Several times faster than `fingerprints.latest` over thousands of windows (see `latest_columns`).
    """
    return [Fingerprint(service=service, window=int(v[0]), start=float(v[1]), vector=v[4:], schema=int(v[2]),
                        no_data=bool(v[3] == 1.0)) for v in _recent_rows(r, service, n, keys=keys)]  # fmt: skip


def _inside(windows: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros(windows.shape, dtype=bool)
    for lo, hi in spans:
        mask |= (windows >= lo) & (windows <= hi)
    return mask


def training_data(
    r: redis.Redis, service: str, windows: int | None = None, *, keys: Keys | None = None
) -> TrainingData:
    """The service's training windows (see the module docstring), oldest first, one row per window."""
    keys = keys or Keys(config.key_prefix())
    rows = _recent_rows(r, service, windows or config.DEFAULT_RETENTION_WINDOWS, keys=keys)
    excluded_spans, included_spans = incidents.training_windows(r, service, keys=keys)
    numbers = rows[:, 0].astype(np.int64)
    usable = (rows[:, 3] != 1.0) & (rows[:, 2] == SCHEMA_VERSION)
    left_out = usable & _inside(numbers, excluded_spans) & ~_inside(numbers, included_spans)
    kept = rows[usable & ~left_out]
    restored: list[np.ndarray] = []
    if rows.shape[0] and rows[0, 0] != 0:
        oldest, window_s = rows[0, 0], rows[0, 1] / rows[0, 0]
        for lo, hi in included_spans:
            if lo >= oldest:
                continue
            restored += [np.concatenate([[fp.window, fp.start, fp.schema, 0.0], fp.vector])
                         for fp in fingerprints.read(r, service, lo * window_s, hi * window_s, keys=keys)
                         if not fp.no_data and fp.schema == SCHEMA_VERSION]  # fmt: skip
    restored_rows = np.array(restored).reshape(-1, rows.shape[1])
    restored_rows = restored_rows[~np.isin(restored_rows[:, 0], kept[:, 0])]
    # one row per window, the newest entry of a window winning, sorted by window
    everything = np.concatenate([restored_rows, kept])[::-1]
    _, first = np.unique(everything[:, 0], return_index=True)
    chosen = everything[first]
    restored_count = len(np.unique(restored_rows[:, 0]))
    return TrainingData(chosen[:, 0].astype(np.int64), chosen[:, 1].copy(), chosen[:, 4:].copy(),
                        excluded=int(np.count_nonzero(left_out)), restored=restored_count)  # fmt: skip


def train_service(
    r: redis.Redis,
    service: str,
    *,
    windows: int | None = None,
    params: TrainParams | None = None,
    progress: Callable[[float], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    activate: bool = True,
    keys: Keys | None = None,
) -> TrainOutcome:
    """Train one service on its windows in Redis and store (and by default activate) the model."""
    began = time.perf_counter()
    data = training_data(r, service, windows, keys=keys)
    params = replace(params or TrainParams(), extra={"service": service})
    try:
        model = train(data.X, params, progress, cancel, data.timestamps)
    except InsufficientHistory as err:
        return TrainOutcome(service, windows=len(data), skipped=f"learning: {err}")
    version = store_model(r, service, model, data, activate=activate, keys=keys)
    return TrainOutcome(service, version, len(data), time.perf_counter() - began,
                        metadata=_summary(model, data))  # fmt: skip


def _summary(model: Model, data: TrainingData) -> dict[str, Any]:
    meta = dict(model.metadata)
    meta["excluded_windows"] = data.excluded
    meta["restored_windows"] = data.restored
    return meta


def store_model(
    r: redis.Redis, service: str, model: Model, data: TrainingData, *, activate: bool = True,
    keys: Keys | None = None,
) -> int:  # fmt: skip
    """Save a trained model with its registry metadata; returns the version."""
    meta = model.metadata
    metadata = {
        "windows": len(data),
        "schema": meta.get("schema", SCHEMA_VERSION),
        "params": meta.get("params", {}),
        "quantiles": meta.get("score_quantiles", {}),
        "metrics": {
            "training_flag_rate": meta.get("training_flag_rate"),
            "threshold_raw": meta.get("threshold_raw"),
            "daily_cycle": meta.get("daily_cycle"),
            "note": meta.get("note"),
            "excluded_windows": data.excluded,
            "restored_windows": data.restored,
        },
        "first_window": int(data.windows[0]) if len(data) else None,
        "last_window": int(data.windows[-1]) if len(data) else None,
    }
    return registry.save(r, service, model.to_json(), metadata, activate=activate, keys=keys)


def holdout_flag_rate(model: Model, X: np.ndarray, timestamps: np.ndarray, held: int) -> float:
    """Share of the last `held` rows of X that `model` scores at or above its threshold."""
    scores = score_batch(model, X, timestamps)[-held:]
    return float(np.mean(scores >= model.threshold)) if held else 0.0


def retrain_if_better(
    r: redis.Redis, service: str, *, params: TrainParams | None = None, keys: Keys | None = None
) -> TrainOutcome:
    """Train a candidate without the newest normal windows; activate it only if it does no worse."""
    began = time.perf_counter()
    data = training_data(r, service, keys=keys)
    n = len(data)
    held = int(n * config.RETRAIN_HOLDOUT_FRACTION)
    params = replace(params or TrainParams(), extra={"service": service})
    if n - held < params.min_windows or held < 1:
        return TrainOutcome(service, windows=n, skipped=f"learning: {n} windows are not enough to hold some back")
    X, ts = data.X, data.timestamps
    candidate = train(X[:-held], params, None, None, ts[:-held])
    try:
        _, current = load_model(r, service, keys=keys)
        current_rate = holdout_flag_rate(current, X, ts, held)
    except (registry.ModelNotFound, registry.ModelLoadError, ValueError):
        current_rate = float("inf")  # no usable model: any candidate is better
    candidate_rate = holdout_flag_rate(candidate, X, ts, held)
    outcome = TrainOutcome(service, windows=n - held, metadata=_summary(candidate, data))
    outcome.metadata["holdout_flag_rate"] = {"candidate": candidate_rate, "current": current_rate}
    if candidate_rate > current_rate:
        outcome.skipped = (f"kept the active model: candidate flags {candidate_rate:.1%} of held-back "
                           f"normal windows, the active one {current_rate:.1%}")
        outcome.metadata["replaced"] = False
    else:
        outcome.version = store_model(r, service, candidate, data.head(-held), keys=keys)
        outcome.metadata["replaced"] = True
    outcome.seconds = time.perf_counter() - began
    return outcome
