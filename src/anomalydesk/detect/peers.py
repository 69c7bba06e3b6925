"""The backtest's reference family: simple detectors run on the same rows in the same process, so every
report shows the product against the strongest simple peers, and a random score shows how much point
adjustment inflates.

Each peer scales with the training rows only and flags a test row when its score exceeds the 99th
percentile of its own training scores (config.REFERENCE_PERCENTILE):
- `isolation_forest`: plain scikit-learn IsolationForest on the raw row (100 trees), mean over seeds;
- `knn_window`: mean distance to the 5 nearest training rows, on the row plus its mean and standard
  deviation over the last 6 rows;
- `pca_window`: squared reconstruction error of a PCA keeping 95 % of the training variance, same inputs;
- `random`: a uniform random score (seeded), the baseline any detector must beat.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from anomalydesk import config

WINDOW_ROWS = 6
KNN_K = 5
PCA_VARIANCE = 0.95
RANDOM_SEED = 0
Metrics = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, Any]]


def windowed(X: np.ndarray, history: np.ndarray | None = None) -> np.ndarray:
    """Each row beside its mean and standard deviation over the last WINDOW_ROWS rows (itself included);
    `history` (rows before X) fills the first windows."""
    X = np.asarray(X, dtype=np.float64)
    head = np.zeros((0, X.shape[1])) if history is None else history[-(WINDOW_ROWS - 1):]
    full = np.vstack([head, X])
    out = np.empty((X.shape[0], 3 * X.shape[1]))
    offset = head.shape[0]
    for i in range(X.shape[0]):
        block = full[max(0, offset + i - WINDOW_ROWS + 1):offset + i + 1]
        out[i] = np.concatenate([full[offset + i], block.mean(axis=0), block.std(axis=0)])
    return out


def _scaled(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0)
    std[std == 0] = 1.0
    return (train - mean) / std, (test - mean) / std


def _flags(train_scores: np.ndarray, test_scores: np.ndarray) -> np.ndarray:
    return test_scores > np.percentile(train_scores, config.REFERENCE_PERCENTILE)


def knn_scores(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.neighbors import NearestNeighbors

    neighbours = NearestNeighbors(n_neighbors=KNN_K + 1).fit(train)
    train_d, _ = neighbours.kneighbors(train)
    test_d, _ = neighbours.kneighbors(test, n_neighbors=KNN_K)
    return train_d[:, 1:].mean(axis=1), test_d.mean(axis=1)  # a training row is its own nearest


def pca_scores(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.decomposition import PCA

    pca = PCA(n_components=PCA_VARIANCE, svd_solver="full").fit(train)

    def error(rows: np.ndarray) -> np.ndarray:
        return np.sum((rows - pca.inverse_transform(pca.transform(rows))) ** 2, axis=1)

    return error(train), error(test)


def isolation_forest(train_X: np.ndarray, test_X: np.ndarray, labels: np.ndarray, metrics: Metrics) -> dict[str, Any]:
    """Plain IsolationForest (100 trees, threshold = 99th percentile of training scores), mean over seeds."""
    from sklearn.ensemble import IsolationForest

    per_seed = []
    for seed in config.REFERENCE_SEEDS:
        forest = IsolationForest(n_estimators=config.REFERENCE_TREES, random_state=seed).fit(train_X)
        threshold = np.percentile(-forest.score_samples(train_X), config.REFERENCE_PERCENTILE)
        scores = -forest.score_samples(test_X)
        per_seed.append(metrics(labels, scores > threshold, scores))
    return mean_blocks(per_seed)


def random_baseline(train_rows: int, labels: np.ndarray, metrics: Metrics) -> dict[str, Any]:
    """A uniform random score through the same threshold rule."""
    rng = np.random.default_rng(RANDOM_SEED)
    train_s, test_s = rng.uniform(size=train_rows), rng.uniform(size=labels.shape[0])
    return metrics(labels, _flags(train_s, test_s), test_s)


def family(train_X: np.ndarray, test_X: np.ndarray, labels: np.ndarray, metrics: Metrics) -> dict[str, Any]:
    """Every peer's metrics on the test rows (the same `metrics` function as the product's)."""
    out: dict[str, Any] = {"isolation_forest": isolation_forest(train_X, test_X, labels, metrics)}
    train_w, test_w = _scaled(windowed(train_X), windowed(test_X, history=train_X))
    for name, scorer in (("knn_window", knn_scores), ("pca_window", pca_scores)):
        train_s, test_s = scorer(train_w, test_w)
        out[name] = metrics(labels, _flags(train_s, test_s), test_s)
    out["random"] = random_baseline(train_X.shape[0], labels, metrics)
    return out


def mean_blocks(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Key by key mean of metric blocks (None values left out)."""
    out: dict[str, Any] = {}
    for key, value in results[0].items():
        if isinstance(value, dict):
            out[key] = mean_blocks([r[key] for r in results])
        else:
            values = [r[key] for r in results if r[key] is not None]
            out[key] = float(np.mean(values)) if values else None
    return out
