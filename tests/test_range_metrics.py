"""VUS-PR / range-AUC-PR and affiliation F1 (detect/range_metrics.py), worked by hand on small series, and the
backtest's peers and random baseline on rows with a known answer."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from anomalydesk.detect import peers
from anomalydesk.detect.backtest import metrics
from anomalydesk.detect.range_metrics import affiliation, range_auc_pr, soft_labels, vus_pr

LABELS = np.array([0, 0, 1, 1, 0, 0], dtype=bool)
SCORES = np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.0])


def test_range_auc_pr_without_a_buffer_is_the_plain_curve() -> None:
    assert range_auc_pr(LABELS, SCORES, 0) == pytest.approx(1.0)  # the two event rows rank first
    assert range_auc_pr(LABELS, -SCORES, 0) < 0.5  # the event rows rank last
    assert range_auc_pr(np.zeros(6, dtype=bool), SCORES, 0) is None


def test_range_auc_pr_with_a_buffer_worked_by_hand() -> None:
    """Buffer 1: soft labels [0, √½, 1, 1, √½, 0] (Σ = 2 + √2). Thresholds 0.9, 0.8, 0.3, 0.2 give
    (recall, precision) = (1/Σ, 1), (2/Σ, 1), ((2+√½)/Σ, (2+√½)/3), (1, Σ/4); area Σ Δrecall · precision."""
    r = soft_labels(LABELS, 1)
    assert r == pytest.approx([0, math.sqrt(0.5), 1, 1, math.sqrt(0.5), 0])
    total = 2 + math.sqrt(2)
    points = [(0, 1), (1 / total, 1), (2 / total, 1), ((2 + math.sqrt(0.5)) / total, (2 + math.sqrt(0.5)) / 3),
              (1, total / 4)]
    area = sum((b[0] - a[0]) * b[1] for a, b in itertools.pairwise(points))
    assert range_auc_pr(LABELS, SCORES, 1) == pytest.approx(area)  # ≈ 0.9495
    assert vus_pr(LABELS, SCORES, 1) == pytest.approx((1.0 + area) / 2)


def test_affiliation_worked_by_hand() -> None:
    labels = np.zeros(10, dtype=bool)
    labels[4:6] = True  # one event, rows 4-5: its zone is all ten rows
    on_time = np.zeros(10, dtype=bool)
    on_time[4] = True
    # precision: a hit inside the event scores 1; recall: row 4 scores P(|Z-4| >= 0) = 1, row 5 P(|Z-5| >= 1) = 0.9
    assert affiliation(labels, on_time) == pytest.approx({"precision": 1.0, "recall": 0.95, "f1": 1.9 / 1.95})
    far = np.zeros(10, dtype=bool)
    far[0] = True
    # distance 4 from the event: 2 of 10 zone rows are that far (precision 0.2); recall (0.3 + 0.1) / 2
    assert affiliation(labels, far) == pytest.approx({"precision": 0.2, "recall": 0.2, "f1": 0.2})
    assert affiliation(labels, np.zeros(10, dtype=bool))["recall"] == 0.0


def test_affiliation_zones_split_at_the_midpoint() -> None:
    labels = np.zeros(12, dtype=bool)
    labels[2:4] = labels[8:10] = True
    flags = np.zeros(12, dtype=bool)
    flags[6] = True  # 3 rows after the first event, 2 before the second: it belongs to the second's zone
    result = affiliation(labels, flags)
    assert 0 < result["precision"] < 1 and result["recall"] < 0.5


def test_a_random_score_gains_from_point_adjustment_but_not_from_range_metrics() -> None:
    """Long events: a random 1 % of rows hits most of them, so point adjustment flatters it; VUS-PR and
    affiliation F1 stay low."""
    rng = np.random.default_rng(3)
    labels = np.zeros(20_000, dtype=bool)
    for start in range(500, 20_000, 2_000):
        labels[start:start + 400] = True
    result = peers.random_baseline(5_000, labels, metrics)
    assert result["point_adjusted"]["f1"] > 0.5
    assert result["pointwise"]["f1"] < 0.1 and result["vus_pr"] < 0.3
    assert result["affiliation"]["f1"] < result["point_adjusted"]["f1"]
    good = metrics(labels, labels, labels + rng.uniform(0, 0.1, labels.shape[0]))
    assert good["vus_pr"] > 0.9 and good["affiliation"]["f1"] == pytest.approx(1.0)


def test_the_peers_find_an_obvious_fault() -> None:
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(2_000, 4)), rng.normal(size=(1_000, 4))
    labels = np.zeros(1_000, dtype=bool)
    labels[500:520] = True
    test[500:520] += 6.0
    result = peers.family(train, test, labels, metrics)
    assert set(result) == {"isolation_forest", "knn_window", "pca_window", "random"}
    for name in ("isolation_forest", "knn_window", "pca_window"):
        assert result[name]["events"]["recall"] == 1.0, name
        assert result[name]["pointwise"]["f1"] > result["random"]["pointwise"]["f1"], name
