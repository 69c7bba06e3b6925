"""Scoring: fingerprint(s) → a 0–100 score, a severity and the reasons, in an operator's words.

`score(model, rows, timestamps)` scores the **last** row, with the rows before it as context: the
live detector passes the service's last `model.context_rows` fingerprints, oldest first (a single
vector works too, with no context). `score_batch` scores every row of a series (backtest, catch-up).

Attribution (which features to name): the forest says *whether* a window is unusual; the reasons say
*where*. Each derived input (value, mean, std, jump of each feature) is already a robust z-score
(deviation from the training median in training IQRs); a feature's contribution is the largest of
its four inputs' |z|, each relative to that input's training extreme, so a new endpoint outranks an
entropy that often swings that far. The top features (at most `REASONS_MAX`, each with |z| ≥
`REASON_MIN_DEVIATION`, the first always named) become reasons: actual vs expected value when the
value itself is out of line; otherwise what is: the recent average, or that it is fluctuating (its
spread above the training range) or unusually steady (below it: "p50 latency fluctuating: 24.5 ms to
24.5 ms" was how a metric that stopped moving read before). A reason after the first is left out when
what it shows moves less than `REASON_MIN_CHANGE` (10 %) of normal — its value, its average, or the
range it fluctuates over: "p50 latency averaged 24.6 ms vs 25.2 ms normal" or "endpoint mix entropy
fluctuating: 2.5 bits to 2.6 bits" during an error burst are many IQRs of a steady metric, and no news.
Values are written by `fingerprint.format_value` (a value that is not 0 never reads as 0); a normal of 0
that the middle half of the training windows lies above reads as that range ("5xx ratio 12% vs 0–0.42%
normal": a sparse error ratio's median is 0, yet a plot of its normal windows is not), and one 0 in
three quarters of them says how often it was not ("vs usually 0% (non-zero in 12.5% of training windows)").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anomalydesk import config
from anomalydesk.detect.baseline import LevelShift
from anomalydesk.detect.features import KINDS, from_model_space, to_model_space
from anomalydesk.detect.incident_model import Severity, severity_of
from anomalydesk.detect.model import Model, with_stuck
from anomalydesk.fingerprint import FEATURES, format_number, format_ratio, format_value

_BY_NAME = {f.name: f for f in FEATURES}
# every feature but the KPI level (relative to its range's midpoint) is a count, share, time or entropy
_NON_NEGATIVE = frozenset(f.name for f in FEATURES if f.unit != "x")


@dataclass(frozen=True)
class ScoreResult:
    """The verdict on one window."""

    score: float  # 0–100
    severity: Severity
    anomalous: bool  # score ≥ the model's threshold
    reasons: list[dict[str, Any]] = field(default_factory=list)  # {feature, actual, expected, text}


def score_batch(model: Model, X: np.ndarray, timestamps: np.ndarray | None = None) -> np.ndarray:
    """0–100 score of every row of a series (each with the rows before it as context); a format-2 model's
    baseline walks on from the end of training over the rows (`Model.transform`)."""
    return model.scores(X, timestamps)


def score(model: Model, rows: np.ndarray, timestamps: np.ndarray | None = None,
          level: np.ndarray | None = None) -> ScoreResult:
    """Score the last row of `rows` (earlier rows are its context); reasons when it is anomalous.

    `level`: (f,) the service's baseline now (format 2, adjusted space; the live detector keeps it,
    detect/baseline.py); without, the baseline at the end of training."""
    X = model.check_rows(rows)
    X = X[-model.context_rows:]
    if timestamps is not None:
        timestamps = np.asarray(timestamps, dtype=np.float64).reshape(-1)[-X.shape[0]:]
    levels = None
    if model.baseline is not None:
        levels = model.baseline.level() if level is None else np.asarray(level, dtype=np.float64)
    Z = model.transform(X, timestamps, levels)
    stuck = model.stuck(X)[-1]
    value = float(with_stuck(model.scores_from(Z[-1:]), stuck[None, :])[0])
    anomalous = value >= model.threshold
    expected = model.expected_rows(X.shape[0], timestamps, levels)
    reasons = explain(model, X, Z, expected) if anomalous else []
    if stuck.any():
        named = [_stuck_reason(model, j, float(X[-1, j]), X.shape[0]) for j in np.flatnonzero(stuck)]
        reasons = [*named, *(r for r in reasons if r["feature"] not in {n["feature"] for n in named})]
        reasons = reasons[:max(config.REASONS_MAX, len(named))]
    return ScoreResult(score=value, severity=severity_of(value), anomalous=anomalous, reasons=reasons)


def explain(model: Model, X: np.ndarray, Z: np.ndarray, expected: np.ndarray,
            limit: int = config.REASONS_MAX) -> list[dict[str, Any]]:
    """Reasons for the last row: the features with the largest robust deviation, most deviant first."""
    f = model.n_features
    signed = Z[-1].reshape(len(KINDS), f)  # kind-major, as features.derived_names
    z = np.abs(signed)
    relative = model.relative_deviation(Z[-1:]).reshape(len(KINDS), f)
    contribution = relative.max(axis=0)  # how far beyond its own training extreme
    dominant = relative.argmax(axis=0)
    reasons = []
    for column in np.argsort(-contribution, kind="stable")[:limit]:
        if reasons and z[:, column].max() < config.REASON_MIN_DEVIATION:
            continue
        name = model.feature_names[column]
        actual, normal = float(X[-1, column]), float(expected[-1, column])
        level = z[KINDS.index("value"), column] >= config.REASON_MIN_DEVIATION
        kind = "value" if level or X.shape[0] == 1 else KINDS[int(dominant[column])]
        recent = X[:, column]
        extra: dict[str, Any] = {}
        if kind in ("std", "jump"):
            # a spread below its training range is a metric that stopped moving, not one that fluctuates
            rising = signed[KINDS.index(kind), column] > 0
            if rising and reasons and _small_change(float(recent.max()), float(recent.min()), scale=normal):
                continue  # (a steady one's range is small by definition: it is named)
            words = "fluctuating" if rising else "unusually steady"
            text = (f"{_label(name)} {words}: {format_value(name, float(recent.min()))} to "
                    f"{format_value(name, float(recent.max()))} over the last {X.shape[0]} windows, "
                    f"{_usual(model, column, normal)}")
            extra = {"low": float(recent.min()), "high": float(recent.max()), "windows": int(X.shape[0])}
        elif kind == "mean":
            shown = float(recent.mean())
            if reasons and _small_change(shown, normal):
                continue
            text = (f"{_label(name)} averaged {format_value(name, shown)} over the last "
                    f"{X.shape[0]} windows vs {_usual(model, column, normal)}")
            actual, extra = shown, {"windows": int(X.shape[0])}  # the number the text names, not the last window's
        else:
            if reasons and _small_change(actual, normal):
                continue
            text = f"{_label(name)} {format_value(name, actual)} vs {_usual(model, column, normal)}"
        reasons.append({"feature": name, "actual": actual, "expected": normal, "text": text, **extra})
    return reasons


def _usual(model: Model, column: int, normal: float) -> str:
    """The normal value of a reason in words, "… normal" ("0.4% normal"). A feature that cannot be negative,
    0 normal and at training median 0:

    * while the middle half of its training windows spans more than 0, reads as that range: a sparse 5xx
      ratio (no error in most windows, one in 200–500 requests in the others) is 0 at the median and
      "0 %" beside a plot at 0.2–0.5 % misled; it reads "0–0.53% normal". With a median of 0 and no
      negative values the lower quartile is 0 and the upper one the training IQR;
    * 0 in at least three quarters of its windows (an IQR of 0 too), reads "usually 0% (non-zero in 12%
      of training windows)": "0% normal" said a healthy service never had an error. A model trained
      before the share was kept (`feature_nonzero_share`) says "usually 0%"; one whose every training
      window was 0 says "0% normal".
    """
    name = model.feature_names[column]
    spread = float(model.spread[column])
    if normal == 0 and float(model.expected[column]) == 0 and name in _NON_NEGATIVE:
        if spread > 0:
            return f"{format_number(0)}–{format_value(name, spread)} normal"
        share = (model.metadata.get("feature_nonzero_share") or {}).get(name)
        if share is None:
            return f"usually {format_value(name, 0.0)}"
        if share > 0:
            return f"usually {format_value(name, 0.0)} (non-zero in {format_ratio(share)} of training windows)"
    return f"{format_value(name, normal)} normal"


def _small_change(shown: float, normal: float, scale: float | None = None) -> bool:
    """`shown` less than `REASON_MIN_CHANGE` away from `normal`, relative to `scale` (default: `normal`; with a
    scale of 0 nothing is a small change)."""
    return abs(shown - normal) < config.REASON_MIN_CHANGE * abs(normal if scale is None else scale)


def unshrunk_level(model: Model, j: int, level: float, weight: float) -> float:
    """A baseline level of feature `j` (model space) with its evidence shrinkage undone at `weight` (the
    baseline follows values shrunk towards the feature's overall level by their evidence)."""
    overall = float(to_model_space(model.expected[j:j + 1], model.log_scale[j:j + 1])[0])
    return overall + (level - overall) / max(weight, 1e-3)


def level_shift_reason(model: Model, shift: LevelShift, weight: float = 1.0) -> dict[str, Any]:
    """A level shift in an operator's words: "new normal? p95 latency 120 ms → 180 ms since 14:05 UTC"
    (levels in the feature's unit, at the overall hour of day when the model has a daily cycle).

    The baseline follows values shrunk by their evidence (features.shrink); `weight` (the current
    window's evidence weight of the feature) undoes that for the level shown."""
    j = shift.feature
    name = model.feature_names[j]
    log_scale = bool(model.log_scale[j])
    unshrunk = (unshrunk_level(model, j, v, weight) for v in (shift.reference, shift.recent))
    before, now = (float(from_model_space(np.array([v]), np.array([log_scale]))[0]) for v in unshrunk)
    since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(shift.since))
    return {"feature": name, "actual": now, "expected": before, "since": shift.since,
            "text": f"new normal? {_label(name)} {format_value(name, before)} → {format_value(name, now)} "
                    f"since {since}"}


def _stuck_reason(model: Model, column: int, value: float, windows: int) -> dict[str, Any]:
    name = model.feature_names[column]
    return {"feature": name, "actual": value, "expected": None,
            "text": f"{_label(name)} stuck at {format_value(name, value)} for the last {windows} windows "
                    "(it never stood still in training: a frozen exporter or gauge?)"}  # fmt: skip


def _label(name: str) -> str:
    feature = _BY_NAME.get(name)
    return feature.label if feature else name
