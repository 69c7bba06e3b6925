"""A slowly moving per-feature baseline: what a service's level is *now*, kept online in bounded state.

A model measures a window's level inputs (value and context mean, see `features.window_features`)
against the baseline instead of the training median, so a metric that moves to a new level and stays
there is news for about half the horizon, not forever (a column with an IQR of 0.0011 that creeps by
0.037 was 33 IQRs out in every later window). Spread and jump are measured as before.

The baseline of a feature is the robust level of its last `horizon` (L) values: the medians of K
blocks of B values each (K·B ≈ L, K ≈ B ≈ √L), and of those the mean of the middle half (an
interquartile mean: `central`). The state is K block medians plus the values of the block being
filled, at most (K + B)·f numbers — 128 per feature at L = 4,096. A block median is taken when its
block is full, so the level moves in steps of B windows. The state starts with K copies of the
training median (`Baseline.seeded`); after a permanent shift the level starts to follow once a
quarter of the blocks hold the new level (L/4 windows) and has followed fully at 3L/4, while a fault
shorter than L/4 leaves it where it was. (A plain median of the block medians jumps at L/2 instead;
on the synthetic drift sets and ASD omi-1…6 the interquartile mean did as well or better.)

L is an eighth of the training windows, between `config.BASELINE_MIN_WINDOWS` and
`config.BASELINE_MAX_WINDOWS`, and at most `config.BASELINE_MAX_SECONDS` of windows (6 hours): at
W = 5 s a day of training gives L = 2,160 windows (3 hours), a week would give 15,120 and is capped
at 4,096 windows (5.7 hours); at W = 60 s a week gives 1,260 windows, capped at 360 (6 hours).

Level shifts (`LevelShift`): the baseline moving far from its reference level (the training median,
or the level an operator accepted) is reported, never absorbed silently: when a feature's baseline
lies beyond its threshold — the larger of the value input's training extreme |z| and twice the
baseline's own largest wander in training, in training IQRs — or its newest K/4 + 1 block medians all
lie beyond its step threshold on one side (the level starts to follow a step then), `Baseline.shift`
names it. `accept` re-baselines the features that moved: every block becomes the newest block's median
and that level the new reference.

Everything here is pure numpy on the model's adjusted values (`Model.adjusted`); the live detector
keeps the state in the service's detector state in Redis (`to_dict` / `from_dict`: plain JSON
numbers), the backtest and training walk it over their rows.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from anomalydesk import config


def horizon_for(windows: int, window_seconds: float | None) -> int:
    """The baseline's horizon L in windows for a model trained on `windows` rows (see the module doc)."""
    horizon = max(config.BASELINE_MIN_WINDOWS, windows // config.BASELINE_TRAINING_FRACTION)
    horizon = min(horizon, config.BASELINE_MAX_WINDOWS)
    if window_seconds and window_seconds > 0:
        horizon = min(horizon, max(config.BASELINE_MIN_WINDOWS, int(config.BASELINE_MAX_SECONDS // window_seconds)))
    return int(horizon)


def blocks_for(horizon: int) -> tuple[int, int]:
    """(K blocks, B values per block), K·B ≈ horizon, both ≈ √horizon."""
    block = max(1, round(math.sqrt(horizon)))
    return max(1, round(horizon / block)), block


def step_distance(signed: np.ndarray) -> np.ndarray:
    """(f,) of (q, f) consecutive block medians' signed distances from the reference: the nearest one's
    |distance| when all lie on the same side, else 0 (how far a step has gone, for all q blocks)."""
    low, high = signed.min(axis=0), signed.max(axis=0)
    return np.where(low > 0, low, np.where(high < 0, -high, 0.0))


def central(medians: np.ndarray) -> np.ndarray:
    """(f,) the level of (k, f) block medians: the mean of their middle half (an interquartile mean)."""
    k = medians.shape[0]
    ordered = np.sort(medians, axis=0)
    low, high = k // 4, k - k // 4
    return ordered[low:high].mean(axis=0)


@dataclass(frozen=True)
class LevelShift:
    """A feature whose baseline moved beyond its threshold from the reference level."""

    feature: int  # column index
    reference: float  # the level it was measured against (model space)
    level: float  # the new level: the baseline's, or the newest blocks' median for a step (model space)
    recent: float  # the newest block's median: where the feature is now (model space)
    since: float  # start (timestamp or row) of the first block beyond the midpoint of the two
    distance: float  # how far beyond, in units of the feature's threshold (≥ 1; see `Baseline.shift`)


@dataclass(frozen=True)
class Baseline:
    """The baseline's state: block medians (oldest first), their start stamps and the block being filled."""

    horizon: int
    block: int
    n_blocks: int
    medians: np.ndarray  # (k ≤ n_blocks, f)
    starts: np.ndarray  # (k,) first stamp of each block (timestamp, or row number without timestamps)
    partial: np.ndarray  # (m < block, f) values of the block being filled
    partial_start: float
    reference: np.ndarray  # (f,) the level shifts are measured from

    @classmethod
    def seeded(cls, horizon: int, level: np.ndarray, start: float = 0.0) -> Baseline:
        """A baseline at `level`: K copies of it, nothing in the current block."""
        n_blocks, block = blocks_for(horizon)
        level = np.asarray(level, dtype=np.float64).reshape(-1)
        return cls(horizon=horizon, block=block, n_blocks=n_blocks, medians=np.tile(level, (n_blocks, 1)),
                   starts=np.full(n_blocks, float(start)), partial=np.empty((0, level.size)),
                   partial_start=float(start), reference=level.copy())

    @property
    def n_features(self) -> int:
        """Number of features tracked."""
        return int(self.reference.size)

    def level(self) -> np.ndarray:
        """(f,) the baseline now: the median of the block medians."""
        return central(self.medians) if self.medians.shape[0] else self.reference.copy()

    def walk(self, values: np.ndarray, stamps: np.ndarray | None = None,
             accept: tuple[np.ndarray, np.ndarray] | None = None
             ) -> tuple[np.ndarray, Baseline, list[tuple[int, LevelShift]]]:
        """(levels (n, f), the state after, level shifts) for rows added in order; row t is measured
        against the baseline before it is added (only earlier rows).

        With `accept` = (unit, threshold, step), every level shift is accepted as it appears (the backtest's
        stand-in for an operator): (the row it appeared after, the shift), and the walk goes on from the
        re-baselined state (`accept`)."""
        values = np.asarray(values, dtype=np.float64)
        n, f = values.shape
        if f != self.n_features:
            raise ValueError(f"baseline of {self.n_features} features given rows of {f}")
        if stamps is None:
            stamps = np.arange(n, dtype=np.float64)
        levels = np.empty((n, f))
        state = self
        shifts: list[tuple[int, LevelShift]] = []
        medians, starts = list(state.medians), list(state.starts)
        partial, partial_start = state.partial, state.partial_start
        level = state.level()
        t = 0
        while t < n:
            take = min(self.block - partial.shape[0], n - t)
            levels[t:t + take] = level
            if partial.shape[0] == 0:
                partial_start = float(stamps[t])
            partial = np.vstack([partial, values[t:t + take]])
            t += take
            if partial.shape[0] == self.block:
                medians.append(np.median(partial, axis=0))
                starts.append(partial_start)
                medians, starts = medians[-self.n_blocks:], starts[-self.n_blocks:]
                partial = np.empty((0, f))
                state = replace(state, medians=np.vstack(medians), starts=np.asarray(starts, dtype=np.float64),
                                partial=partial, partial_start=partial_start)
                if accept is not None and (found := state.shift(*accept)) is not None:
                    shifts.append((t - 1, found))
                    state = state.accept(*accept)
                    medians, starts = list(state.medians), list(state.starts)
                level = state.level()
        state = replace(state, medians=np.vstack(medians) if medians else np.empty((0, f)),
                        starts=np.asarray(starts, dtype=np.float64), partial=partial, partial_start=partial_start)
        return levels, state, shifts

    def shift(self, unit: np.ndarray, threshold: np.ndarray, step: np.ndarray | None = None,
              among: np.ndarray | None = None) -> LevelShift | None:
        """The feature farthest beyond its threshold (in `unit`s) from the reference, or None (with `among`,
        a (f,) bool mask: of those features only).

        Beyond means either the baseline itself beyond `threshold` (a slow creep), or every one of the
        newest K/4 + 1 block medians beyond `step` (default `threshold`) on the same side (a step): the
        interquartile mean starts to follow a step with its (K/4 + 1)-th block, so a step is named then.
        (Judged on the baseline alone against the single-window extreme, a step of a few IQRs stopped
        alarming once the baseline moved a little and was named hours later, or never.)"""
        distance, levels = self.distances(unit, threshold, step)
        if among is not None:
            distance = np.where(among, distance, 0.0)
        j = int(np.argmax(distance))
        if not distance[j] >= 1.0:
            return None
        new_level = float(levels[j])
        midpoint = (new_level + self.reference[j]) / 2.0
        beyond = (self.medians[:, j] - midpoint) * np.sign(new_level - self.reference[j]) > 0
        if beyond.size and beyond[-1]:  # the newest run of blocks beyond it: an older fault is not the start
            within = np.flatnonzero(~beyond)
            first = int(within[-1]) + 1 if within.size else 0
        else:
            first = int(np.argmax(beyond)) if beyond.any() else self.medians.shape[0] - 1
        since = float(self.starts[first]) if self.starts.size else self.partial_start
        return LevelShift(feature=j, reference=float(self.reference[j]), level=new_level,
                          recent=float(self.medians[-1, j]), since=since, distance=float(distance[j]))

    def distances(self, unit: np.ndarray, threshold: np.ndarray, step: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """((f,) how far each feature is from the reference in thresholds, (f,) its new level): the larger
        of the baseline's distance and the step's (the nearest of the newest K/4 + 1 block medians, when
        all lie on one side), with the level that distance was measured at."""
        f = self.n_features
        if self.medians.shape[0] == 0:
            return np.zeros(f), self.reference.copy()
        level = self.level()
        settled = np.abs(level - self.reference) / (unit * threshold)
        recent = self.medians[-self.step_blocks:]
        stepped = step_distance((recent - self.reference) / (unit * (threshold if step is None else step)))
        levels = np.where(settled >= stepped, level, np.median(recent, axis=0))
        return np.maximum(settled, stepped), levels

    @property
    def step_blocks(self) -> int:
        """How many of the newest block medians make a step: the interquartile mean (`central`) starts to
        move with the (K/4 + 1)-th."""
        return self.n_blocks // 4 + 1

    def accept(self, unit: np.ndarray | None = None, threshold: np.ndarray | None = None,
               step: np.ndarray | None = None, only: np.ndarray | None = None) -> Baseline:
        """Re-baselined at the newest level: every block the newest block's median, the reference too.

        With `unit`, `threshold` and `step` (the model's), only the features beyond them are re-baselined:
        a feature in the middle of a fault when another's new level is accepted keeps its level
        (re-baselined there, its return to normal would be a step of its own); with `only` (a (f,) bool
        mask), only those of them."""
        newest = self.medians[-1] if self.medians.shape[0] else self.reference
        if self.partial.shape[0] >= max(1, self.block // 2):
            newest = np.median(self.partial, axis=0)
        k = self.n_blocks
        if unit is None or threshold is None:
            return replace(self, medians=np.tile(newest, (k, 1)), starts=np.full(k, self.partial_start),
                           reference=np.array(newest, dtype=np.float64))
        moved = self.distances(unit, threshold, step)[0] >= 1.0
        if only is not None:
            moved &= only
        medians = np.array(self.medians, dtype=np.float64)
        medians[:, moved] = newest[moved]
        reference = np.array(self.reference, dtype=np.float64)
        reference[moved] = newest[moved]
        return replace(self, medians=medians, reference=reference)

    # --- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON: the sizes as numbers, each array as base64 of little-endian float64 (exact, a third the
        size of decimal text: the live detector writes it with every window)."""
        return {"horizon": self.horizon, "block": self.block, "n_blocks": self.n_blocks,
                "medians": _pack(self.medians), "starts": _pack(self.starts), "partial": _pack(self.partial),
                "partial_start": self.partial_start, "reference": _pack(self.reference)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any, n_features: int) -> Baseline:
        """Rebuild a state; anything malformed is a ValueError saying what."""
        if not isinstance(data, dict):
            raise ValueError("baseline: not an object")
        ints = {}
        for key in ("horizon", "block", "n_blocks"):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"baseline: {key!r} must be a positive integer, got {value!r}")
            ints[key] = value
        arrays = {}
        for key, ndim in (("medians", 2), ("starts", 1), ("partial", 2), ("reference", 1)):
            array = _unpack(data.get(key), key)
            if ndim == 2:
                if array.size % n_features:
                    raise ValueError(f"baseline: {key!r} holds {array.size} values, not rows of {n_features}")
                array = array.reshape(-1, n_features)
            if array.ndim != ndim or (ndim == 2 and array.shape[1] != n_features) or not np.all(np.isfinite(array)):
                raise ValueError(f"baseline: {key!r} has shape {array.shape} or non-finite values")
            arrays[key] = array
        if arrays["reference"].shape != (n_features,):
            raise ValueError(f"baseline: 'reference' must hold {n_features} values")
        if arrays["medians"].shape[0] != arrays["starts"].shape[0] or arrays["medians"].shape[0] > ints["n_blocks"]:
            raise ValueError("baseline: 'medians' and 'starts' disagree or exceed 'n_blocks'")
        if arrays["partial"].shape[0] >= ints["block"]:
            raise ValueError("baseline: the block being filled is already full")
        start = data.get("partial_start")
        if isinstance(start, bool) or not isinstance(start, int | float) or not math.isfinite(start):
            raise ValueError(f"baseline: 'partial_start' must be a number, got {start!r}")
        return cls(partial_start=float(start), **ints, **arrays)


def _pack(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f8").tobytes()).decode("ascii")


def _unpack(text: Any, key: str) -> np.ndarray:
    if not isinstance(text, str):
        raise ValueError(f"baseline: {key!r} must be base64 text")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ValueError(f"baseline: {key!r} is not base64") from None
    if len(raw) % 8:
        raise ValueError(f"baseline: {key!r} is not a whole number of float64 values")
    return np.frombuffer(raw, dtype="<f8").astype(np.float64)
