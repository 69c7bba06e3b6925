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
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
import redis

from anomalydesk import config
from anomalydesk.detect import incidents
from anomalydesk.detect.model import Model
from anomalydesk.detect.score import score_batch
from anomalydesk.detect.service_state import load_model
from anomalydesk.detect.train import InsufficientHistory, TrainParams, train
from anomalydesk.fingerprint import FEATURE_NAMES, SCHEMA_VERSION, Fingerprint, matrix
from anomalydesk.store import fingerprints
from anomalydesk.store import models as registry
from anomalydesk.store.keys import Keys


@dataclass
class TrainingData:
    """The windows one training uses, oldest first, and what was left out or put back."""

    fingerprints: list[Fingerprint]
    excluded: int = 0  # windows inside confirmed incidents
    restored: int = 0  # false-positive windows put back from outside the range read

    @property
    def X(self) -> np.ndarray:
        return matrix(self.fingerprints)

    @property
    def timestamps(self) -> np.ndarray:
        return np.array([fp.start for fp in self.fingerprints], dtype=np.float64)


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


_PAGE = fingerprints.PAGE
_NAMES = ("window", "start", "schema", "no_data", *FEATURE_NAMES)
_FIELDS = {bytes: tuple(name.encode() for name in _NAMES), str: _NAMES}
_DEFAULTS = ("nan", "nan", str(SCHEMA_VERSION), "0", *("0" for _ in FEATURE_NAMES))  # as from_stream_entry


def recent_windows(r: redis.Redis, service: str, n: int, *, keys: Keys) -> list[Fingerprint]:
    """The last `n` fingerprints of a service, oldest first, features only (no KPI values).

    Training reads up to a day of windows: parsing only the fields it uses (no key decoding, no
    KPI JSON) makes reading 10,000 fingerprints several times faster than `fingerprints.latest`.
    """
    stream, high = keys.fingerprints(service), "+"
    rows: list[tuple[str | bytes, ...]] = []  # newest first: window, start, schema, no_data, features…
    while len(rows) < n:
        page = min(_PAGE, n - len(rows))
        entries = r.xrevrange(stream, high, "-", count=page)
        if entries:
            names = _FIELDS[type(next(iter(entries[0][1])))]
            pick = itemgetter(*names)
            for _id, fields in entries:
                try:
                    rows.append(pick(fields))
                except KeyError:  # an older entry without some field: the defaults of from_stream_entry
                    pairs = zip(names, _DEFAULTS, strict=True)
                    rows.append(tuple(fields.get(name, default) for name, default in pairs))
        if len(entries) < page:
            break
        last = entries[-1][0]
        high = "(" + (last.decode() if isinstance(last, bytes) else last)
    if not rows:
        return []
    values = np.fromiter(map(float, chain.from_iterable(reversed(rows))), dtype=np.float64,
                         count=len(rows) * len(_NAMES)).reshape(len(rows), len(_NAMES))
    if not np.all(np.isfinite(values[:, :2])):
        raise ValueError(f"fingerprint stream of {service!r}: an entry without a window or start")
    return [Fingerprint(service=service, window=int(v[0]), start=float(v[1]), vector=v[4:], schema=int(v[2]),
                        no_data=bool(v[3] == 1.0)) for v in values]  # fmt: skip


def _inside(window: int, spans: list[tuple[int, int]]) -> bool:
    return any(lo <= window <= hi for lo, hi in spans)


def training_data(
    r: redis.Redis, service: str, windows: int | None = None, *, keys: Keys | None = None
) -> TrainingData:
    """The service's training windows (see the module docstring), oldest first."""
    keys = keys or Keys(config.key_prefix())
    count = windows or config.DEFAULT_RETENTION_WINDOWS
    recent = recent_windows(r, service, count, keys=keys)
    excluded_spans, included_spans = incidents.training_windows(r, service, keys=keys)
    kept: dict[int, Fingerprint] = {}
    excluded = 0
    for fp in recent:
        if fp.no_data or fp.schema != SCHEMA_VERSION:
            continue
        if _inside(fp.window, excluded_spans) and not _inside(fp.window, included_spans):
            excluded += 1
            continue
        kept[fp.window] = fp
    restored = 0
    oldest = recent[0].window if recent else None
    window_s = (recent[0].start / recent[0].window) if recent and recent[0].window else None
    for lo, hi in included_spans:
        if oldest is None or window_s is None or lo >= oldest:
            continue
        for fp in fingerprints.read(r, service, lo * window_s, hi * window_s, keys=keys):
            if fp.window not in kept and not fp.no_data and fp.schema == SCHEMA_VERSION:
                kept[fp.window] = fp
                restored += 1
    return TrainingData([kept[w] for w in sorted(kept)], excluded=excluded, restored=restored)


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
        return TrainOutcome(service, windows=len(data.fingerprints), skipped=f"learning: {err}")
    version = store_model(r, service, model, data, activate=activate, keys=keys)
    return TrainOutcome(service, version, len(data.fingerprints), time.perf_counter() - began,
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
        "windows": len(data.fingerprints),
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
        "first_window": data.fingerprints[0].window if data.fingerprints else None,
        "last_window": data.fingerprints[-1].window if data.fingerprints else None,
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
    n = len(data.fingerprints)
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
        outcome.version = store_model(r, service, candidate, TrainingData(data.fingerprints[:-held]), keys=keys)
        outcome.metadata["replaced"] = True
    outcome.seconds = time.perf_counter() - began
    return outcome
