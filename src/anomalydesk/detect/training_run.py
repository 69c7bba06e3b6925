"""Training a service from Redis: select its windows, train (pure), store and activate the model.

Window selection (`training_data`): the service's most recent fingerprints, minus `no_data`
windows, minus windows inside confirmed incidents (an anomaly must not become "normal") and inside
the faults the demo injected (its ground truth, `demo_fault_spans`: a fault injected while the
service was still learning raised no incident, and was learned as normal), plus the windows of
incidents an operator marked false positive (put back even when they are older than the range
read). `retrain_if_better` is the detector's scheduled retraining: it holds back the newest normal
windows, trains a candidate on the rest and activates it only when its false-alarm rate on the
held-back windows is no worse than the active model's.
"""

from __future__ import annotations

import math
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
from anomalydesk.detect.stored_models import load_model
from anomalydesk.detect.stream_reader import text
from anomalydesk.detect.train import InsufficientHistory, TrainParams, train
from anomalydesk.fingerprint import FEATURE_NAMES, SCHEMA_VERSION, Fingerprint, format_ratio
from anomalydesk.store import admin, fingerprints
from anomalydesk.store import models as registry
from anomalydesk.store.keys import Keys


@dataclass
class TrainingData:
    """The windows one training uses, oldest first, and what was left out or put back."""

    windows: np.ndarray  # int64 window indices
    timestamps: np.ndarray  # float64 window starts (epoch seconds)
    X: np.ndarray  # (windows, features)
    excluded: int = 0  # windows inside confirmed incidents
    demo_faults: int = 0  # windows inside faults the demo injected (and inside no incident)
    restored: int = 0  # false-positive windows put back from outside the range read
    gaps: int = 0  # windows of a gap (no event at all for TRAINING_GAP_SECONDS or longer)
    stretched: int = 0  # windows holding events from outside their span (a window-length change)
    other_length: int = 0  # windows of another window length (before a change)
    history: int = 0  # windows read from the service's history (sent as a backfill)

    def __len__(self) -> int:
        return int(self.windows.shape[0])

    @property
    def gap_excess(self) -> int:
        """Windows of gaps beyond the windows with data: a history that is mostly gap is not trained on."""
        return max(0, self.gaps - len(self))

    def windows_needed(self, min_windows: int = config.MIN_TRAINING_WINDOWS) -> int:
        """How many more windows with data before `train_service` trains on this (0: it does now)."""
        return max(0, min_windows - len(self), self.gap_excess)

    def head(self, n: int) -> TrainingData:
        """The first `n` windows (negative: all but the last -n), with the same counts."""
        return replace(self, windows=self.windows[:n], timestamps=self.timestamps[:n], X=self.X[:n])

    def left_out(self) -> str:
        """What was left out, in words ("" when nothing was)."""
        parts = [f"{n:,} {what}" for n, what in (
            (self.gaps, "windows of gaps without any event"), (self.excluded, "windows inside incidents"),
            (self.demo_faults, "windows of faults the demo injected"),
            (self.stretched, "stretched windows after a window-length change"),
            (self.other_length, "windows of another window length"),
        ) if n]  # fmt: skip
        return "left out " + ", ".join(parts) if parts else ""


@dataclass
class TrainOutcome:
    """What `train_service` did for one service."""

    service: str
    version: int | None = None
    windows: int = 0
    seconds: float = 0.0
    skipped: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    short_of_history: tuple[int, int] | None = None  # (have, need) when skipped for too few windows

    def as_dict(self) -> dict[str, Any]:
        """JSON shape printed by `train --json`."""
        out: dict[str, Any] = {"service": self.service, "version": self.version, "windows": self.windows,
                               "seconds": round(self.seconds, 3)}  # fmt: skip
        if self.skipped:
            out["skipped"] = self.skipped
        for key in ("threshold", "daily_cycle", "note", "training_flag_rate", "excluded_windows",
                    "demo_fault_windows", "restored_windows", "gap_windows", "stretched_windows",
                    "other_length_windows", "history_windows", "window_seconds", "replaced"):  # fmt: skip
            if key in self.metadata:
                out[key] = self.metadata[key]
        return out


_META = ("window", "start", "schema", "no_data", "ws", "silent", "stretched")
_WINDOW, _START, _SCHEMA, _NO_DATA, _WS, _SILENT, _STRETCHED = range(len(_META))
_NAMES = (*_META, *FEATURE_NAMES)


def _defaults(window_s: int) -> tuple[str, ...]:
    """As from_stream_entry: entries written before `ws` was recorded count as the current length."""
    return ("nan", "nan", str(SCHEMA_VERSION), "0", str(window_s), "0", "0", *("0" for _ in FEATURE_NAMES))


def _window_seconds(r: redis.Redis, keys: Keys) -> int:
    return admin.window_seconds(r, keys)


def _recent_rows(r: redis.Redis, service: str, n: int, *, keys: Keys, window_s: int) -> tuple[np.ndarray, int, int]:
    """(rows, windows of another length, windows from history): the last `n` windows of `window_s`
    seconds, oldest first, from the live stream and, before it, the service's history of that length.
    A row is _META then the features."""
    defaults = _defaults(window_s)
    live = fingerprints.latest_columns(r, service, n, _NAMES, defaults, keys=keys)
    same = live[:, _WS] == window_s
    other_length = int(np.count_nonzero(~same))
    live = live[same]
    history = np.empty((0, len(_NAMES)))
    if live.shape[0] < n:
        history = fingerprints.latest_columns(r, service, n - live.shape[0], _NAMES, defaults, keys=keys,
                                              stream=keys.history(service, window_s))  # fmt: skip
    rows = np.concatenate([history, live]) if history.shape[0] else live
    if not np.all(np.isfinite(rows[:, :2])):
        raise ValueError(f"fingerprint stream of {service!r}: an entry without a window or start")
    return rows, other_length, int(history.shape[0])


def recent_windows(r: redis.Redis, service: str, n: int, *, keys: Keys) -> list[Fingerprint]:
    """The last `n` fingerprints of a service at today's window length (history included), oldest
    first, features only (no KPI values).

    Several times faster than `fingerprints.latest` over thousands of windows (see `latest_columns`).
    """
    window_s = _window_seconds(r, keys)
    rows, _, _ = _recent_rows(r, service, n, keys=keys, window_s=window_s)
    return [Fingerprint(service=service, window=int(v[_WINDOW]), start=float(v[_START]),
                        vector=v[len(_META):], schema=int(v[_SCHEMA]), no_data=bool(v[_NO_DATA] == 1.0),
                        window_seconds=int(v[_WS]), silent=bool(v[_SILENT] == 1.0),
                        stretched=bool(v[_STRETCHED] == 1.0)) for v in rows]  # fmt: skip


def gap_mask(windows: np.ndarray, silent: np.ndarray, window_s: int) -> np.ndarray:
    """Which rows lie in a gap: a run of consecutive silent windows (no event at all) lasting at least
    TRAINING_GAP_SECONDS and 2 windows. Sealing makes such windows up when nothing arrived; they say the
    producers were down, not what the service does."""
    mask = np.zeros(windows.shape, dtype=bool)
    if not windows.size:
        return mask
    least = max(2, math.ceil(config.TRAINING_GAP_SECONDS / window_s))
    # runs: consecutive rows that are silent and one window apart
    breaks = np.flatnonzero(~silent[1:] | ~silent[:-1] | (np.diff(windows) != 1)) + 1
    for run in np.split(np.arange(windows.size), breaks):
        if run.size and silent[run[0]] and run.size >= least:
            mask[run] = True
    return mask


def demo_fault_spans(r: redis.Redis, service: str, window_s: int, keys: Keys) -> list[tuple[int, int]]:
    """Inclusive window ranges (at `window_s`) of the faults the demo injected into `service`, from its
    ground truth (`Keys.demo_truth`): anomalies by design, never "normal". A `shift` stays in: it is a
    deploy's new level, which its level-shift incident puts to the operator (accepted, it is trained on)."""
    spans = []
    for _entry_id, raw in r.xrange(keys.demo_truth):
        truth = {text(k): text(v) for k, v in raw.items()}
        if truth.get("service") != service or truth.get("kind") == "shift":
            continue
        try:
            start, end = float(truth["start"]), float(truth["end"])
        except (KeyError, ValueError):  # no end: a fault that never ends is a shift's kind; skip it too
            continue
        if end > start:
            spans.append((int(start // window_s), math.ceil(end / window_s) - 1))
    return spans


def training_data(
    r: redis.Redis, service: str, windows: int | None = None, *, keys: Keys | None = None
) -> TrainingData:
    """The service's training windows (see the module docstring), oldest first, one row per window."""
    keys = keys or Keys(config.key_prefix())
    window_s = _window_seconds(r, keys)
    rows, other_length, from_history = _recent_rows(r, service, windows or config.DEFAULT_RETENTION_WINDOWS,
                                                    keys=keys, window_s=window_s)  # fmt: skip
    excluded_spans, included_spans = incidents.training_windows(r, service, keys=keys)
    numbers = rows[:, _WINDOW].astype(np.int64)
    usable = (rows[:, _NO_DATA] != 1.0) & (rows[:, _SCHEMA] == SCHEMA_VERSION)
    gaps = usable & gap_mask(numbers, rows[:, _SILENT] == 1.0, window_s)
    stretched = usable & ~gaps & (rows[:, _STRETCHED] == 1.0)
    usable &= ~gaps & ~stretched
    in_incidents = usable & incidents.left_out_windows(numbers, excluded_spans, included_spans)
    # the ground truth is not put back by an operator's mark (an accepted shift's span takes in the
    # anomaly incidents inside it: a demo fault among them is still a fault)
    faulty = demo_fault_spans(r, service, window_s, keys)
    demo_faults = usable & ~in_incidents & incidents.left_out_windows(numbers, faulty, [])
    kept = rows[usable & ~(in_incidents | demo_faults)]
    restored: list[np.ndarray] = []
    if rows.shape[0] and rows[0, _WINDOW] != 0:
        oldest = rows[0, _WINDOW]
        for lo, hi in included_spans:
            if lo >= oldest:
                continue
            restored += [np.concatenate([[fp.window, fp.start, fp.schema, 0.0, window_s, 0.0, 0.0], fp.vector])
                         for fp in fingerprints.read(r, service, lo * window_s, hi * window_s, keys=keys)
                         if not fp.no_data and fp.schema == SCHEMA_VERSION
                         and fp.window_seconds in (None, window_s)]  # fmt: skip
    restored_rows = np.array(restored).reshape(-1, rows.shape[1])
    restored_rows = restored_rows[~np.isin(restored_rows[:, _WINDOW], kept[:, _WINDOW])
                                  & ~incidents.left_out_windows(restored_rows[:, _WINDOW], faulty, [])]
    # one row per window, the newest entry of a window winning, sorted by window
    everything = np.concatenate([restored_rows, kept])[::-1]
    _, first = np.unique(everything[:, _WINDOW], return_index=True)
    chosen = everything[first]
    restored_count = len(np.unique(restored_rows[:, _WINDOW]))
    return TrainingData(chosen[:, _WINDOW].astype(np.int64), chosen[:, _START].copy(),
                        chosen[:, len(_META):].copy(), excluded=int(np.count_nonzero(in_incidents)),
                        demo_faults=int(np.count_nonzero(demo_faults)),
                        restored=restored_count, gaps=int(np.count_nonzero(gaps)),
                        stretched=int(np.count_nonzero(stretched)), other_length=other_length,
                        history=from_history)  # fmt: skip


def windows_needed(r: redis.Redis, service: str, *, keys: Keys | None = None,
                   min_windows: int = config.MIN_TRAINING_WINDOWS) -> int:
    """How many more windows `service` needs before training trains it (0: ready to train), counted
    on the windows training uses (`training_data`: gaps, no-data, stretched and incident windows left out)."""
    return training_data(r, service, keys=keys).windows_needed(min_windows)


def _learning_reason(data: TrainingData, err: Exception) -> str:
    """Why a service stays learning, with what training left out."""
    left = data.left_out()
    return f"learning: {err}" + (f" ({left})" if left else "")


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
    if data.gap_excess:
        return TrainOutcome(service, windows=len(data), metadata=_summary(None, data),
                            skipped=f"learning: most of its history is a gap: {data.gaps:,} windows without any "
                                    f"event against {len(data):,} with data (left out; send traffic or a backfill)")
    try:
        model = train(data.X, params, progress, cancel, data.timestamps)
    except InsufficientHistory as err:
        return TrainOutcome(service, windows=len(data), skipped=_learning_reason(data, err),
                            metadata=_summary(None, data), short_of_history=(err.have, err.need))
    version = store_model(r, service, model, data, activate=activate, keys=keys)
    return TrainOutcome(service, version, len(data), time.perf_counter() - began,
                        metadata=_summary(model, data))  # fmt: skip


def _summary(model: Model | None, data: TrainingData) -> dict[str, Any]:
    meta = dict(model.metadata) if model is not None else {}
    meta["excluded_windows"] = data.excluded
    meta["demo_fault_windows"] = data.demo_faults
    meta["restored_windows"] = data.restored
    meta["gap_windows"] = data.gaps
    meta["stretched_windows"] = data.stretched
    meta["other_length_windows"] = data.other_length
    meta["history_windows"] = data.history
    return meta


def store_model(
    r: redis.Redis, service: str, model: Model, data: TrainingData, *, activate: bool = True,
    keys: Keys | None = None,
) -> int:  # fmt: skip
    """Save a trained model with its registry metadata (its window length among it); returns the version."""
    meta = model.metadata
    window_s = _window_seconds(r, keys or Keys(config.key_prefix()))
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
            "demo_fault_windows": data.demo_faults,
            "restored_windows": data.restored,
            "gap_windows": data.gaps,
            "stretched_windows": data.stretched,
        },
        "window_seconds": window_s,
        "model_format": model.format_version,
        "baseline_windows": None if model.baseline is None else model.baseline.horizon,
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
        outcome.skipped = (f"kept the active model: candidate flags {format_ratio(candidate_rate)} of held-back "
                           f"normal windows, the active one {format_ratio(current_rate)}")
        outcome.metadata["replaced"] = False
    else:
        outcome.version = store_model(r, service, candidate, data.head(-held), keys=keys)
        outcome.metadata["replaced"] = True
    outcome.seconds = time.perf_counter() - began
    return outcome
