"""The synthetic drift sets of issue 17, exactly as the issue states them (no outside data).

`make(kind)` → (train Series, test Series with labels) for kind in `KINDS`:
- `none` (control): 10 AR(1) columns, labelled 15-row faults in the test half;
- `shift`: the control plus c0 += 0.03 from test row 2500 on, labelled normal (a permanent new level);
- `fault_shift`: the control plus rows 2500–2699 labelled with c1 − 0.2, and c0 − 0.3 from row 2500 on,
  never returning (a fault that leaves a level change behind).
"""

from __future__ import annotations

import numpy as np

from anomalydesk.detect.backtest import Series

KINDS = ("none", "shift", "fault_shift")
ROWS = 12_000
COLUMNS = 10
SHIFT_ROW = 2500
WINDOW_SECONDS = 5.0
START = 1_800_000_000.0


def make(kind: str) -> tuple[Series, Series]:
    """The training half and the labelled test half of one set."""
    if kind not in KINDS:
        raise ValueError(f"unknown drift set {kind!r}; one of {', '.join(KINDS)}")
    rng = np.random.default_rng(0)
    mu = rng.uniform(0.2, 0.8, COLUMNS)
    sd = np.full(COLUMNS, 0.02)
    sd[0] = 0.002
    X = np.empty((ROWS, COLUMNS))
    for j in range(COLUMNS):
        e = rng.normal(0.0, sd[j] * np.sqrt(1 - 0.9**2), ROWS)
        X[0, j] = mu[j]
        for t in range(1, ROWS):
            X[t, j] = mu[j] + 0.9 * (X[t - 1, j] - mu[j]) + e[t]
    half = ROWS // 2
    train_x, test_x = X[:half].copy(), X[half:].copy()
    labels = np.zeros(half, dtype=np.int64)
    k = 0
    while (start := 400 + 700 * k) < half:
        for column in (2 + (k % 7), 2 + ((k + 3) % 7)):
            test_x[start:start + 15, column] += 0.15
        labels[start:start + 15] = 1
        k += 1
    if kind == "shift":
        test_x[SHIFT_ROW:, 0] += 0.03
    elif kind == "fault_shift":
        labels[SHIFT_ROW:SHIFT_ROW + 200] = 1
        test_x[SHIFT_ROW:SHIFT_ROW + 200, 1] -= 0.2
        test_x[SHIFT_ROW:, 0] -= 0.3
    stamps = START + WINDOW_SECONDS * np.arange(ROWS)
    names = tuple(f"c{j}" for j in range(COLUMNS))
    return (Series(f"synthetic:{kind}:train", names, train_x, stamps[:half], None),
            Series(f"synthetic:{kind}:test", names, test_x, stamps[half:], labels))
