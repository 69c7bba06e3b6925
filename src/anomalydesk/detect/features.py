"""What the forest sees: each fingerprint plus a short look back over the service's recent windows.

For every row (window) and every base feature the model uses four numbers, computed from that row
and the `context_rows - 1` rows before it (fewer at the very start of a series):

- `value`: the feature itself;
- `mean`: its mean over the context;
- `std`: its standard deviation over the context (a metric that starts to jitter is anomalous even
  when every single value is in range — on the ASD data this is what made the biggest difference);
- `jump`: |value − previous value|.

All of them are computable online: the live detector passes the last `model.context_rows`
fingerprints of a service (oldest first) and scores the last one.

Counts (features whose training values are non-negative integers, e.g. requests per window) are
used as log(1 + x), so a change is judged relative to the level.

Evidence: a per-request statistic (an error ratio, a latency quantile, the endpoint mix) of a window
with few requests is noisy — one error in 18 requests is a 5.6 % error ratio. When the model knows
which column counts the requests behind each row, such a statistic's deviation from its normal level
is shrunk by n / (n + a) (n requests, a = the feature's pseudo-count): a quiet window has to deviate
much further than a busy one to look as unusual, and a fault with hundreds of requests behind it is
barely changed.

Daily cycle: with a profile (24 per-hour-of-day medians per feature, UTC), each value is first
replaced by `value − profile[hour] + overall median`, i.e. its deviation from what is usual at that
hour, so a normal night-time low looks like any other normal window.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

KINDS = ("value", "mean", "std", "jump")
HOURS_PER_DAY = 24
SECONDS_PER_HOUR = 3600
CONSTANT_SCALE = 1e-3  # scale of a constant column, relative to 1 + |median|


def derived_names(feature_names: tuple[str, ...] | list[str]) -> list[str]:
    """Names of the derived columns, kind-major: value:<f>…, mean:<f>…, std:<f>…, jump:<f>…."""
    return [f"{kind}:{name}" for kind in KINDS for name in feature_names]


def window_features(X: np.ndarray, context_rows: int, robust: np.ndarray | None = None) -> np.ndarray:
    """(n, 4·f) value/mean/std/jump of each row over its `context_rows` most recent rows.

    For `robust` columns the std leaves out the context's most outlying value (farthest from the
    context's median): a per-request statistic over a few hundred requests has single-window
    outliers (one slow request is the p99 of 270), which its value and jump already report once;
    without this the std would report it again in each of the next `context_rows` windows, and
    two such windows in a row open an incident. A fluctuation over several windows still counts.
    Likewise their jump is measured from the median of the previous context rows, not from the
    previous row, so the return from a one-window outlier is not a second change.
    """
    X = np.asarray(X, dtype=np.float64)
    n, f = X.shape
    if n == 0:
        return np.empty((0, len(KINDS) * f))
    w = max(1, int(context_rows))
    padded = np.vstack([np.full((w - 1, f), np.nan), X])
    windows = sliding_window_view(padded, w, axis=0)  # (n, f, w)
    count = np.sum(~np.isnan(windows), axis=2)
    mean = np.nansum(windows, axis=2) / count
    std = np.sqrt(np.nansum((windows - mean[:, :, None]) ** 2, axis=2) / count)
    jump = np.abs(np.diff(X, axis=0, prepend=X[:1]))
    if robust is not None and np.any(robust) and w > 2:
        # the first row stands in for the rows before the series (no NaN: plain numpy reductions)
        edge = np.concatenate([np.repeat(X[:1, robust], w - 1, axis=0), X[:, robust]])
        std[:, robust], jump[:, robust] = _robust_spread_and_step(sliding_window_view(edge, w, axis=0))
    return np.hstack([X, mean, std, jump])


def _robust_spread_and_step(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(std without the most outlying value, |last − median of the earlier values|) of (n, k, w) windows.

    The most outlying value (farthest from the median) is the smallest or the largest one; sums
    over the sorted window (centred on its median) give the std of the rest without a copy.
    """
    w = windows.shape[2]
    ordered = np.sort(windows, axis=2)
    center = (ordered[:, :, (w - 1) // 2] + ordered[:, :, w // 2]) / 2.0
    low, high = ordered[:, :, 0] - center, ordered[:, :, -1] - center
    dropped = np.where(-low >= high, low, high)
    centred = windows - center[:, :, None]
    total, squares = centred.sum(axis=2) - dropped, (centred**2).sum(axis=2) - dropped**2
    mean = total / (w - 1)
    spread = np.sqrt(np.maximum(squares / (w - 1) - mean**2, 0.0))
    earlier = np.sort(windows[:, :, :-1], axis=2)
    level = (earlier[:, :, (w - 2) // 2] + earlier[:, :, (w - 1) // 2]) / 2.0
    return spread, np.abs(windows[:, :, -1] - level)


def hours_of_day(timestamps: np.ndarray) -> np.ndarray:
    """UTC hour of day (0–23) of epoch-second timestamps."""
    return (np.floor(np.asarray(timestamps, dtype=np.float64) / SECONDS_PER_HOUR) % HOURS_PER_DAY).astype(
        np.int64)


def daily_profile(X: np.ndarray, timestamps: np.ndarray, overall: np.ndarray) -> np.ndarray:
    """(24, f) per-hour-of-day medians; an hour never seen in training falls back to `overall`."""
    hours = hours_of_day(timestamps)
    profile = np.tile(overall, (HOURS_PER_DAY, 1)).astype(np.float64)
    for h in range(HOURS_PER_DAY):
        rows = X[hours == h]
        if rows.shape[0]:
            profile[h] = np.median(rows, axis=0)
    return profile


def deseasonalise(X: np.ndarray, timestamps: np.ndarray | None, profile: np.ndarray | None,
                  overall: np.ndarray) -> np.ndarray:
    """Each value minus what is usual at its hour of day, plus the overall median (no-op without one)."""
    if profile is None or timestamps is None:
        return np.asarray(X, dtype=np.float64)
    return X - profile[hours_of_day(timestamps)] + overall


def evidence_weights(X: np.ndarray, column: int | None, prior: np.ndarray) -> np.ndarray | None:
    """(n, f) weight n / (n + a) of each value (1 where the feature's pseudo-count a is 0); None without one."""
    if column is None or column < 0 or not np.any(prior > 0):
        return None
    n = np.maximum(np.asarray(X, dtype=np.float64)[:, column], 0.0)[:, None]
    a = np.asarray(prior, dtype=np.float64)[None, :]
    return np.where(a > 0, n / np.maximum(n + a, 1e-12), 1.0)


def shrink(adjusted: np.ndarray, overall: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Each (deseasonalised) value's deviation from the normal level, scaled by its evidence weight."""
    if weights is None:
        return adjusted
    return overall + (adjusted - overall) * weights


def count_features(X: np.ndarray) -> np.ndarray:
    """Which features are counts: non-negative integers with at least two distinct values."""
    out = np.zeros(X.shape[1], dtype=bool)
    for j in range(X.shape[1]):
        values = np.unique(X[:, j])
        out[j] = values.size >= 2 and values[0] >= 0 and bool(np.all(values == np.round(values)))
    return out


def to_model_space(X: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Counts as log(1 + x): a drop from 20 to 4 requests at night is as clear as 200 to 40 by day."""
    return np.where(counts, np.log1p(np.maximum(X, 0.0)), X)


def from_model_space(V: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Inverse of `to_model_space`."""
    return np.where(counts, np.expm1(V), V)


def count_resolution(median: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Smallest scale of a count's inputs: one unit at its median, in model space (0 for others).

    A count that is 12 in most windows has an IQR of 0; without a floor, 11 would be as alarming as
    a tenfold latency. One unit is the smallest change a count can make.
    """
    m = np.maximum(median, 0.0)
    return np.where(counts, np.log1p(m + 1.0) - np.log1p(m), 0.0)


def robust_center_scale(D: np.ndarray, floor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Median and IQR per column (at least `floor`); with no spread: std, else 0.1 % of (1 + |median|).

    The last fallback is deliberately small: a feature that never moved in training and now moves
    is news (a z-score in the hundreds), while float round-off stays far below one.
    """
    center = np.median(D, axis=0)
    q75, q25 = np.percentile(D, [75, 25], axis=0)
    scale = q75 - q25
    tiny = 1e-9 * (1.0 + np.abs(center))
    std = D.std(axis=0)
    scale = np.where(scale > tiny, scale, np.where(std > tiny, std, CONSTANT_SCALE * (1.0 + np.abs(center))))
    if floor is not None:
        scale = np.where(floor > 0, np.maximum(scale, floor), scale)
    return center, scale
