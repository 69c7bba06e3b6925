"""An Isolation Forest as plain arrays, scored by numpy, stored as JSON with an integrity digest.

A fitted scikit-learn `IsolationForest` is exported into flat per-node arrays (all trees
concatenated): children, split feature (in the caller's column numbering, so `max_features` < 1
needs no column subsetting), threshold, and the path length a sample accumulates when it ends in
that node (node depth + the average path length of the training samples left there − 1, exactly
the terms scikit-learn adds). `score_samples` walks every tree level by level for the whole batch at
once and reproduces `IsolationForest.score_samples` to floating-point round-off.

Nothing executable is ever stored or loaded: the blob is JSON (numbers and strings), every array is
checked for shape, finiteness and index range, and a SHA-256 digest over the canonical payload
refuses a tampered or truncated blob with a `ModelFormatError` that says what was wrong.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

FOREST_FORMAT = "anomalydesk.iforest"
FOREST_FORMAT_VERSION = 1
_LEAF = -1
_BATCH_ROWS = 4096  # rows walked at once: bounded memory, cache-friendly


class ModelFormatError(ValueError):
    """A model blob that is malformed, of an unknown format, or fails its integrity digest."""


def average_path_length(n: np.ndarray | float) -> np.ndarray:
    """Average path length of an unsuccessful BST search over n samples (c(n) of the paper)."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


@dataclass(frozen=True)
class ForestArrays:
    """All trees of one forest, concatenated; `roots[t]` is tree t's first node."""

    n_features: int
    max_samples: int
    roots: np.ndarray  # int64 (n_trees,)
    left: np.ndarray  # int64 (n_nodes,), global node index or -1 for a leaf
    right: np.ndarray  # int64 (n_nodes,)
    feature: np.ndarray  # int64 (n_nodes,), column of X, -1 for a leaf
    threshold: np.ndarray  # float64 (n_nodes,)
    n_node_samples: np.ndarray  # int64 (n_nodes,)
    leaf_path: np.ndarray  # float64 (n_nodes,): depth + c(n_node_samples) - 1 (used at leaves)
    max_depth: int
    # the walk's tables: a leaf loops onto itself (feature 0, threshold +inf), so every sample can
    # take exactly max_depth - 1 steps without asking whether it has arrived
    walk_left: np.ndarray
    walk_right: np.ndarray
    walk_feature: np.ndarray
    walk_threshold: np.ndarray

    @property
    def n_trees(self) -> int:
        """Number of trees."""
        return int(self.roots.shape[0])

    @classmethod
    def from_sklearn(cls, forest: Any) -> ForestArrays:
        """Export a fitted `sklearn.ensemble.IsolationForest` into arrays."""
        return cls.from_trees(forest.estimators_, forest.estimators_features_,
                              n_features=int(forest.n_features_in_), max_samples=int(forest.max_samples_))  # fmt: skip

    @classmethod
    def from_trees(cls, trees: Sequence[Any], columns: Sequence[np.ndarray] | None = None, *, n_features: int,
                   max_samples: int) -> ForestArrays:
        """Export fitted isolation trees (scikit-learn `ExtraTreeRegressor`s) into arrays.

        `columns[t]` maps tree t's feature numbers to columns of X (all columns, in order, if None).
        """
        roots, lefts, rights, feats, thresholds, counts = [], [], [], [], [], []
        offset = 0
        every = np.arange(n_features, dtype=np.int64)
        for i, tree in enumerate(trees):
            t = tree.tree_
            is_leaf = t.children_left == _LEAF
            cols = every if columns is None else np.asarray(columns[i], dtype=np.int64)
            roots.append(offset)
            lefts.append(np.where(is_leaf, _LEAF, t.children_left + offset))
            rights.append(np.where(is_leaf, _LEAF, t.children_right + offset))
            feats.append(np.where(is_leaf, _LEAF, cols[np.maximum(t.feature, 0)]))
            thresholds.append(np.where(is_leaf, 0.0, t.threshold))
            counts.append(t.n_node_samples.astype(np.int64))
            offset += t.node_count
        return cls.build(
            n_features=n_features,
            max_samples=max_samples,
            roots=np.asarray(roots, dtype=np.int64),
            left=np.concatenate(lefts).astype(np.int64),
            right=np.concatenate(rights).astype(np.int64),
            feature=np.concatenate(feats).astype(np.int64),
            threshold=np.concatenate(thresholds).astype(np.float64),
            n_node_samples=np.concatenate(counts),
        )

    @classmethod
    def build(cls, *, n_features: int, max_samples: int, roots: np.ndarray, left: np.ndarray,
              right: np.ndarray, feature: np.ndarray, threshold: np.ndarray,
              n_node_samples: np.ndarray) -> ForestArrays:
        """Validate the node arrays and derive depths and leaf path lengths."""
        _validate(n_features, max_samples, roots, left, right, feature, threshold, n_node_samples)
        depth = np.zeros(left.shape[0], dtype=np.int64)
        frontier = roots.copy()
        depth[frontier] = 1  # scikit-learn counts the root as depth 1
        level, max_depth = 1, 1
        while frontier.size:
            inner = frontier[left[frontier] != _LEAF]
            children = np.unique(np.concatenate([left[inner], right[inner]]))
            level += 1
            if children.size:
                depth[children] = level
                max_depth = level
            frontier = children
        leaf_path = depth + average_path_length(n_node_samples) - 1.0
        leaf = left == _LEAF
        own = np.arange(left.shape[0], dtype=np.int64)
        return cls(n_features, max_samples, roots, left, right, feature, threshold, n_node_samples,
                   leaf_path, max_depth, np.where(leaf, own, left), np.where(leaf, own, right),
                   np.where(leaf, 0, feature), np.where(leaf, np.inf, threshold))

    def leaf_paths(self, X: np.ndarray) -> np.ndarray:
        """(n_samples, n_trees) path length of each sample in each tree."""
        X = _as_input(X, self.n_features)
        out = np.empty((X.shape[0], self.n_trees))
        for start in range(0, X.shape[0], _BATCH_ROWS):
            out[start:start + _BATCH_ROWS] = self._walk(X[start:start + _BATCH_ROWS])
        return out

    def _walk(self, X: np.ndarray) -> np.ndarray:
        n, width = X.shape
        flat = X.ravel()
        offsets = (np.arange(n, dtype=np.int64) * width)[:, None]
        node = np.tile(self.roots, (n, 1))
        for _ in range(self.max_depth - 1):
            value = np.take(flat, offsets + np.take(self.walk_feature, node))
            node = np.where(value <= np.take(self.walk_threshold, node),
                            np.take(self.walk_left, node), np.take(self.walk_right, node))
        return np.take(self.leaf_path, node)

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Same as `IsolationForest.score_samples`: minus the anomaly score (lower = more abnormal)."""
        return -self.anomaly_score_from_paths(self.leaf_paths(X))

    def anomaly_score_from_paths(self, paths: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """2**(-mean path / c(max_samples)) over all trees, or only where `mask` is true (e.g. OOB)."""
        c = float(average_path_length(self.max_samples))
        if mask is None:
            depths = paths.sum(axis=1)
            denominator = np.full(paths.shape[0], self.n_trees * c)
        else:
            depths = np.where(mask, paths, 0.0).sum(axis=1)
            denominator = mask.sum(axis=1) * c
        ratio = np.divide(depths, denominator, out=np.ones_like(depths), where=denominator != 0)
        return 2.0 ** (-ratio)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready description of the forest (numbers only)."""
        return {
            "format": FOREST_FORMAT,
            "version": FOREST_FORMAT_VERSION,
            "n_features": self.n_features,
            "max_samples": self.max_samples,
            "roots": self.roots.tolist(),
            "left": self.left.tolist(),
            "right": self.right.tolist(),
            "feature": self.feature.tolist(),
            "threshold": self.threshold.tolist(),
            "n_node_samples": self.n_node_samples.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> ForestArrays:
        """Rebuild from `to_dict` output, refusing anything malformed with a ModelFormatError."""
        if not isinstance(data, dict):
            raise ModelFormatError("forest: expected a JSON object")
        if data.get("format") != FOREST_FORMAT:
            raise ModelFormatError(f"forest: unknown format {data.get('format')!r}")
        if data.get("version") != FOREST_FORMAT_VERSION:
            raise ModelFormatError(
                f"forest: format version {data.get('version')!r} is not {FOREST_FORMAT_VERSION}")
        return cls.build(
            n_features=require_int(data, "n_features", "forest"),
            max_samples=require_int(data, "max_samples", "forest"),
            roots=int_array(data, "roots", "forest"),
            left=int_array(data, "left", "forest"),
            right=int_array(data, "right", "forest"),
            feature=int_array(data, "feature", "forest"),
            threshold=float_array(data, "threshold", "forest"),
            n_node_samples=int_array(data, "n_node_samples", "forest"),
        )

    def to_json(self) -> bytes:
        """The forest alone as a sealed JSON blob (see `seal`)."""
        return seal(self.to_dict())

    @classmethod
    def from_json(cls, blob: bytes | str) -> ForestArrays:
        """Load a blob written by `to_json`; a tampered or malformed blob raises ModelFormatError."""
        return cls.from_dict(unseal(blob))


def _as_input(X: np.ndarray, n_features: int) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[None, :]
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(f"expected rows of {n_features} features, got shape {X.shape}")
    # scikit-learn's trees compare float32 inputs against float64 thresholds; so do we
    return X.astype(np.float32).astype(np.float64)


def _validate(n_features: int, max_samples: int, roots: np.ndarray, left: np.ndarray, right: np.ndarray,
              feature: np.ndarray, threshold: np.ndarray, n_node_samples: np.ndarray) -> None:
    if n_features < 1 or max_samples < 1:
        raise ModelFormatError("forest: n_features and max_samples must be positive")
    n_nodes = left.shape[0]
    for name, arr in (("left", left), ("right", right), ("feature", feature), ("threshold", threshold),
                      ("n_node_samples", n_node_samples)):
        if arr.ndim != 1 or arr.shape[0] != n_nodes:
            raise ModelFormatError(f"forest: {name} has shape {arr.shape}, expected ({n_nodes},)")
    if roots.ndim != 1 or roots.size == 0 or n_nodes == 0:
        raise ModelFormatError("forest: no trees")
    if roots.min() < 0 or roots.max() >= n_nodes:
        raise ModelFormatError("forest: a root index is out of range")
    leaf = left == _LEAF
    if not np.array_equal(leaf, right == _LEAF):
        raise ModelFormatError("forest: a node has exactly one child")
    for name, arr in (("left", left), ("right", right)):
        child = arr[~leaf]
        # children always come after their parent, so a walk ends within n_nodes steps
        if child.size and (child.min() < 0 or child.max() >= n_nodes
                           or np.any(child <= np.flatnonzero(~leaf))):
            raise ModelFormatError(f"forest: a {name} child index is out of range")
    inner_feature = feature[~leaf]
    if inner_feature.size and (inner_feature.min() < 0 or inner_feature.max() >= n_features):
        raise ModelFormatError(f"forest: a split feature is out of range 0..{n_features - 1}")
    if not np.all(np.isfinite(threshold)):
        raise ModelFormatError("forest: a threshold is not a finite number")
    if n_node_samples.min() < 1:
        raise ModelFormatError("forest: n_node_samples must be at least 1")


# --- the sealed JSON envelope shared by the forest and the model ---------------------------------

def canonical(payload: Any) -> bytes:
    """Canonical JSON bytes of a payload (sorted keys, no spaces, no NaN)."""
    try:
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as err:
        raise ModelFormatError(f"payload holds a non-finite number: {err}") from None


def seal(payload: dict[str, Any]) -> bytes:
    """`{"payload": ..., "sha256": ...}` with the digest taken over the canonical payload."""
    body = canonical(payload)
    digest = hashlib.sha256(body).hexdigest()
    return b'{"payload":' + body + b',"sha256":"' + digest.encode() + b'"}'


_AS_SEALED = re.compile(rb'\{"payload":(\{.*\}),"sha256":"([0-9a-f]{64})"\}', re.DOTALL)


def unseal(blob: bytes | str) -> dict[str, Any]:
    """Parse a sealed blob and check its digest; returns the payload. Never executes anything."""
    if isinstance(blob, str):
        blob = blob.encode()
    if not isinstance(blob, bytes | bytearray):
        raise ModelFormatError(f"model blob must be bytes, got {type(blob).__name__}")
    as_sealed = _AS_SEALED.fullmatch(blob)
    if as_sealed is not None:  # the bytes `seal` wrote: check the digest over them, parse once
        body, digest = as_sealed.groups()
        if hashlib.sha256(body).hexdigest() != digest.decode():
            raise ModelFormatError("model blob failed its integrity check (sha256 mismatch): tampered or corrupted")
        return _parse_payload(body)
    try:
        outer = json.loads(blob, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFormatError(f"model blob is not valid JSON (truncated or not a model): {err}") from None
    if not isinstance(outer, dict) or set(outer) != {"payload", "sha256"}:
        raise ModelFormatError("model blob must be a JSON object with exactly 'payload' and 'sha256'")
    payload, digest = outer["payload"], outer["sha256"]
    if not isinstance(payload, dict) or not isinstance(digest, str):
        raise ModelFormatError("model blob: 'payload' must be an object and 'sha256' a string")
    actual = hashlib.sha256(canonical(payload)).hexdigest()
    if actual != digest:
        raise ModelFormatError("model blob failed its integrity check (sha256 mismatch): tampered or corrupted")
    return payload


def _parse_payload(body: bytes) -> dict[str, Any]:
    try:  # orjson: a few ms for a 100-tree model
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:  # the standard parser names what is wrong (NaN, Infinity, …)
        payload = _parse_payload_slowly(body)
    if not isinstance(payload, dict):
        raise ModelFormatError("model blob: 'payload' must be an object")
    return payload


def _parse_payload_slowly(body: bytes) -> Any:
    try:
        payload = json.loads(body, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFormatError(f"model blob's payload is not valid JSON: {err}") from None
    return payload


def _refuse_constant(name: str) -> float:
    raise ModelFormatError(f"model blob holds {name}, which is not a finite number")


def require_int(data: dict[str, Any], key: str, where: str) -> int:
    """An integer field (not bool), or ModelFormatError naming it."""
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ModelFormatError(f"{where}: {key!r} must be an integer, got {value!r}"[:200])
    return value


def float_array(data: dict[str, Any], key: str, where: str, ndim: int = 1) -> np.ndarray:
    """A finite float array field of `ndim` dimensions, or ModelFormatError naming it."""
    try:
        arr = np.array(data[key], dtype=np.float64)
    except KeyError:
        raise ModelFormatError(f"{where}: {key!r} is missing") from None
    except (TypeError, ValueError):
        raise ModelFormatError(f"{where}: {key!r} must be a (rectangular) array of numbers") from None
    if arr.ndim != ndim:
        raise ModelFormatError(f"{where}: {key!r} has shape {arr.shape}, expected {ndim} dimension(s)")
    if not np.all(np.isfinite(arr)):
        raise ModelFormatError(f"{where}: {key!r} holds a non-finite number")
    return arr


def int_array(data: dict[str, Any], key: str, where: str) -> np.ndarray:
    """A 1-D integer array field, or ModelFormatError naming it."""
    values = data.get(key)
    if not isinstance(values, list) or set(map(type, values)) - {int}:  # bool is not int here
        raise ModelFormatError(f"{where}: {key!r} must be a list of integers")
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        raise ModelFormatError(f"{where}: {key!r} holds an integer beyond 64 bits") from None
