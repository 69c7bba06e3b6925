"""The thresholds and the 0–100 calibration of a model's verdicts, from their training values (`train`).

`upper_quantile` reads a threshold off the training values (an exponential tail beyond the data),
`training_contamination` says how much of the training data looks like incidents, and `calibration`
gives the anchors that map a raw verdict to 0–100.
"""

from __future__ import annotations

import numpy as np

from anomalydesk import config


def training_contamination(oob_raw: np.ndarray) -> float:
    """The share of training windows that look like anomalies, not like the bulk: out-of-bag forest scores
    beyond median + `CONTAMINATION_FENCE_IQRS` · IQR; 0 when fewer than `THRESHOLD_TAIL_WINDOWS` lie there.

    Training files are unlabelled and may hold incidents. Those windows take the top of the out-of-bag
    distribution, so a plain quantile threshold lets fewer *normal* windows through than the budget says
    (ASD omi-1 … 6: 0.13–0.68 % of normal test rows over the forest's threshold against its 1.5 % share).
    `train` leaves this share above the threshold in addition to the budget (at most
    `CONTAMINATION_MAX_FACTOR` × the forest's share). The fence (3.5 IQRs) passes at most 2 of 6,000
    windows of clean AR(1) training sets (Gaussian and Student-t innovations); a handful of windows is
    the bulk's own tail, hence the minimum count, so a clean service keeps its budget exactly.
    """
    values = np.asarray(oob_raw, dtype=np.float64)
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    beyond = int(np.count_nonzero(values > median + config.CONTAMINATION_FENCE_IQRS * (q75 - q25)))
    if beyond < config.THRESHOLD_TAIL_WINDOWS:
        return 0.0
    return beyond / values.shape[0]


def upper_quantile(values: np.ndarray, rate: float) -> float:
    """The value exceeded by a share `rate` of windows like these; beyond the data: an exponential tail.

    While at least `THRESHOLD_TAIL_WINDOWS` training values lie above it, it is the plain empirical
    quantile. A smaller share (5-second windows with a budget of a few windows a day: 0.003 % of a
    day's 17,280) would be the training maximum, which a new day of a heavy-tailed statistic passes
    about every other day; instead the tail above the top `THRESHOLD_TAIL_WINDOWS` values is taken
    as exponential (scale = their mean excess) and extrapolated: u + scale · ln(p0 / rate).
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    p0 = config.THRESHOLD_TAIL_WINDOWS / n
    if rate >= p0 or n <= config.THRESHOLD_TAIL_WINDOWS:
        return float(np.quantile(values, 1.0 - rate))
    u = float(np.quantile(values, 1.0 - p0))
    excess = values[values > u] - u
    scale = float(excess.mean()) if excess.size else 0.0
    return u + scale * float(np.log(p0 / rate))


def calibration(values: np.ndarray, threshold: float, ceiling: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Anchors (raw → 0–100): 0, typical, threshold, critical, ceiling.

    critical lies as far beyond the threshold as the threshold lies beyond the typical window; the
    ceiling (100) is the raw score's maximum when it has one, else 4 such steps beyond critical.
    """
    typical = float(np.median(values))
    top = ceiling if ceiling is not None else np.inf
    threshold = min(max(threshold, typical + 1e-6), top - 2e-6)
    typical = min(typical, threshold - 1e-6)
    step = threshold - typical
    critical = min(threshold + step, (threshold + top) / 2.0)
    top = top if ceiling is not None else critical + 4.0 * step
    anchors_raw = np.array([0.0, typical, threshold, critical, top])
    anchors_score = np.array([0.0, config.SCORE_AT_MEDIAN, config.SEVERITY_WARNING,
                              config.SEVERITY_CRITICAL, 100.0])
    if typical <= 0.0:
        anchors_raw, anchors_score = anchors_raw[1:], anchors_score[1:]
    return anchors_raw, anchors_score
