"""Range-aware detection metrics for the backtest: VUS-PR (range-AUC-PR over buffer lengths) and
affiliation precision/recall/F1. Point adjustment rewards a whole event for one hit, so a detector
that flags at random scores well on long events; these two do not.

**Range-AUC-PR** (Paparrizos et al., "Volume Under the Surface", VLDB 2022), for a buffer of ℓ rows:
the labels become soft — 1 inside an event, sqrt(1 − d/(ℓ+1)) at distance d = 1…ℓ before or after
it, 0 elsewhere (ℓ = 0: the plain labels). At a threshold θ, with p = score ≥ θ:
  precision(θ) = Σ p·r / Σ p,
  recall(θ)    = (Σ p·r / Σ r) · (the share of events with a flagged row inside their buffered extent).
The area under recall→precision, summed step-wise as average precision is (Σ Δrecall · precision, so
tied scores gain nothing from the interpolation a trapezoid would give them), is range-AUC-PR.
**VUS-PR** is its mean over ℓ = 0, 1, …, `max_buffer`.

**Affiliation** (Huet et al., KDD 2022), in discrete time: the rows are split into one zone per event
(the rows closer to it than to any other event). In a zone, a flagged row at distance d from its
event scores the probability that a row drawn uniformly from the zone lies at least d away (a hit
inside the event scores 1); precision is the mean over the zones that hold flagged rows of their
rows' mean score. Recall: each row of an event scores the probability that a uniform row of the zone
lies at least as far from it as its nearest flagged row in the zone (0 with none); recall is the mean
over all events. F1 is their harmonic mean. A random detector scores about 0.5 on both.
"""

from __future__ import annotations

import numpy as np

RANGE_THRESHOLDS = 250  # thresholds (score quantiles) per range-AUC-PR curve
VUS_MAX_BUFFER = 10  # VUS-PR averages range-AUC-PR over buffers of 0…10 rows


def _events(labels: np.ndarray) -> list[tuple[int, int]]:
    edges = np.diff(np.concatenate([[0], labels.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def soft_labels(labels: np.ndarray, buffer: int) -> np.ndarray:
    """1 inside events, sqrt(1 − d/(ℓ+1)) at d = 1…ℓ = `buffer` rows around them, 0 elsewhere."""
    y = np.asarray(labels, dtype=bool)
    r = y.astype(np.float64)
    if buffer <= 0:
        return r
    n = y.shape[0]
    for start, end in _events(y):
        for d in range(1, buffer + 1):
            weight = np.sqrt(1.0 - d / (buffer + 1))
            for i in (start - d, end - 1 + d):
                if 0 <= i < n and not y[i]:
                    r[i] = max(r[i], weight)
    return r


def range_auc_pr(labels: np.ndarray, scores: np.ndarray, buffer: int) -> float | None:
    """Range-AUC-PR with a buffer of `buffer` rows (None when there is no event)."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    events = _events(y)
    if not events:
        return None
    r = soft_labels(y, buffer)
    n = y.shape[0]
    extents = [(max(0, a - buffer), min(n, b + buffer)) for a, b in events]
    thresholds = np.unique(np.quantile(s, np.linspace(0.0, 1.0, RANGE_THRESHOLDS)))[::-1]
    precision, recall = [], []
    total = r.sum()
    for theta in thresholds:
        p = s >= theta
        flagged = p.sum()
        hit = float((p * r).sum())
        existence = np.mean([p[a:b].any() for a, b in extents])
        precision.append(hit / flagged if flagged else 1.0)
        recall.append(hit / total * existence)
    rec, prec = np.asarray(recall), np.asarray(precision)
    order = np.argsort(rec, kind="stable")  # thresholds high to low: recall rises, ties keep the best first
    rec, prec = rec[order], prec[order]
    return float(np.sum(np.diff(rec, prepend=0.0) * prec))


def vus_pr(labels: np.ndarray, scores: np.ndarray, max_buffer: int) -> float | None:
    """The mean of range-AUC-PR over buffers 0…`max_buffer` rows."""
    values = [range_auc_pr(labels, scores, b) for b in range(max_buffer + 1)]
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _zones(events: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """[start, end) of each event's affiliation zone: up to the midpoints between neighbouring events."""
    zones = []
    for i, (start, end) in enumerate(events):
        lo = 0 if i == 0 else (events[i - 1][1] - 1 + start) // 2 + 1
        hi = n if i == len(events) - 1 else (end - 1 + events[i + 1][0]) // 2 + 1
        zones.append((lo, hi))
    return zones


def _distance_to(start: int, end: int, rows: np.ndarray) -> np.ndarray:
    """Distance in rows from each of `rows` to the event [start, end) (0 inside)."""
    return np.maximum(0, np.maximum(start - rows, rows - (end - 1)))


def affiliation(labels: np.ndarray, flagged: np.ndarray) -> dict[str, float] | None:
    """Affiliation precision, recall and F1 of `flagged` rows (None when there is no event)."""
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(flagged, dtype=bool)
    events = _events(y)
    if not events:
        return None
    precisions, recalls = [], []
    for (start, end), (lo, hi) in zip(events, _zones(events, y.shape[0]), strict=True):
        zone = np.arange(lo, hi)
        zone_d = np.sort(_distance_to(start, end, zone))
        hits = zone[p[lo:hi]]
        if hits.size:
            d = _distance_to(start, end, hits)
            # share of the zone at distance >= d from the event
            precisions.append(float(np.mean(1.0 - np.searchsorted(zone_d, d, side="left") / zone.size)))
        scores = []
        for x in range(start, end):
            if not hits.size:
                scores.append(0.0)
                continue
            nearest = np.min(np.abs(hits - x))
            scores.append(float(np.mean(np.abs(zone - x) >= nearest)))
        recalls.append(float(np.mean(scores)))
    precision = float(np.mean(precisions)) if precisions else 0.0
    recall = float(np.mean(recalls))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
