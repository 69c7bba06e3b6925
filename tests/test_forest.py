"""The array forest: same scores as scikit-learn, safe JSON round trip, malformed blobs refused."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest

from anomalydesk.detect.forest import ForestArrays, ModelFormatError, seal, unseal


def _data(seed: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        X = rng.normal(size=(1500, 6))
    elif kind == "discrete":  # many ties: thresholds fall between repeated values
        X = rng.integers(0, 5, size=(1500, 4)).astype(float)
    else:  # skewed, wide range, float32 rounding matters
        X = np.column_stack([rng.lognormal(3, 1.5, 1500), rng.exponential(1e-3, 1500), rng.normal(1e4, 1, 1500)])
    test = np.vstack([X[:200] * 1.5, rng.normal(size=(300, X.shape[1])) * X.std(axis=0) * 3 + X.mean(axis=0)])
    return X, test


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["gaussian", "discrete", "skewed"])
@pytest.mark.parametrize("options", [{}, {"max_samples": 64, "max_features": 0.5},
                                     {"max_samples": 1.0, "n_estimators": 10}, {"max_features": 2}])
def test_scores_match_sklearn(seed: int, kind: str, options: dict) -> None:
    X, test = _data(seed, kind)
    forest = IsolationForest(random_state=seed, **{"n_estimators": 25, **options}).fit(X)
    arrays = ForestArrays.from_json(ForestArrays.from_sklearn(forest).to_json())
    expected = forest.score_samples(test)
    np.testing.assert_allclose(arrays.score_samples(test), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(arrays.score_samples(X), forest.score_samples(X), rtol=0, atol=1e-12)


def test_warm_start_forest_matches_sklearn() -> None:
    X, test = _data(5, "gaussian")
    forest = IsolationForest(n_estimators=10, warm_start=True, random_state=3).fit(X)
    forest.set_params(n_estimators=30)
    forest.fit(X)
    arrays = ForestArrays.from_sklearn(forest)
    assert arrays.n_trees == 30
    np.testing.assert_allclose(arrays.score_samples(test), forest.score_samples(test), rtol=0, atol=1e-12)


def test_single_row_and_wrong_width() -> None:
    X, _ = _data(0, "gaussian")
    forest = IsolationForest(n_estimators=10, random_state=0).fit(X)
    arrays = ForestArrays.from_sklearn(forest)
    assert arrays.score_samples(X[0]).shape == (1,)
    with pytest.raises(ValueError, match="6 features"):
        arrays.score_samples(X[:, :4])


@pytest.fixture(scope="module")
def blob() -> bytes:
    X, _ = _data(0, "gaussian")
    return ForestArrays.from_sklearn(IsolationForest(n_estimators=5, random_state=0).fit(X)).to_json()


def _reseal(blob: bytes, change) -> bytes:
    """Apply `change` to the payload and compute a fresh digest (a well-formed but malicious blob)."""
    payload = json.loads(blob)["payload"]
    change(payload)
    return seal(payload)


def test_truncated_blob_refused(blob: bytes) -> None:
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        ForestArrays.from_json(blob[: len(blob) // 2])


def test_digest_mismatch_refused(blob: bytes) -> None:
    outer = json.loads(blob)
    outer["payload"]["threshold"][0] += 0.5
    with pytest.raises(ModelFormatError, match="integrity"):
        ForestArrays.from_json(json.dumps(outer).encode())


def test_wrong_shape_refused(blob: bytes) -> None:
    bad = _reseal(blob, lambda p: p["threshold"].pop())
    with pytest.raises(ModelFormatError, match="threshold has shape"):
        ForestArrays.from_json(bad)


def test_out_of_range_child_refused(blob: bytes) -> None:
    def change(p: dict) -> None:
        inner = next(i for i, v in enumerate(p["left"]) if v != -1)
        p["left"][inner] = len(p["left"]) + 7

    with pytest.raises(ModelFormatError, match="left child index is out of range"):
        ForestArrays.from_json(_reseal(blob, change))


def test_backward_child_refused(blob: bytes) -> None:
    """A child pointing back at its parent would make a walk loop forever."""
    def change(p: dict) -> None:
        inner = next(i for i, v in enumerate(p["right"]) if v != -1)
        p["right"][inner] = inner

    with pytest.raises(ModelFormatError, match="right child index is out of range"):
        ForestArrays.from_json(_reseal(blob, change))


def test_out_of_range_feature_refused(blob: bytes) -> None:
    def change(p: dict) -> None:
        inner = next(i for i, v in enumerate(p["feature"]) if v != -1)
        p["feature"][inner] = 99

    with pytest.raises(ModelFormatError, match="split feature is out of range"):
        ForestArrays.from_json(_reseal(blob, change))


def test_nan_refused(blob: bytes) -> None:
    text = blob.decode()
    payload_start = text.index('"threshold":[') + len('"threshold":[')
    nan_blob = (text[:payload_start] + "NaN," + text[payload_start:]).encode()
    with pytest.raises(ModelFormatError, match="integrity check"):  # the digest no longer matches
        ForestArrays.from_json(nan_blob)
    body = nan_blob[len(b'{"payload":'):nan_blob.rindex(b',"sha256":')]
    resealed = b'{"payload":' + body + b',"sha256":"' + hashlib.sha256(body).hexdigest().encode() + b'"}'
    with pytest.raises(ModelFormatError, match="NaN"):  # with a matching digest: refused by the parser
        ForestArrays.from_json(resealed)
    with pytest.raises(ModelFormatError, match="non-finite"):
        seal({"x": float("nan")})


def test_unknown_format_and_version_refused(blob: bytes) -> None:
    with pytest.raises(ModelFormatError, match="format version 2"):
        ForestArrays.from_json(_reseal(blob, lambda p: p.update(version=2)))
    with pytest.raises(ModelFormatError, match="unknown format"):
        ForestArrays.from_json(_reseal(blob, lambda p: p.update(format="sklearn")))


class _Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickle_payload_never_executed(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    evil = pickle.dumps(_Boom())
    with pytest.raises(ModelFormatError):
        ForestArrays.from_json(evil)
    wrapped = seal({"format": "anomalydesk.iforest", "version": 1, "pickle": evil.hex()})
    with pytest.raises(ModelFormatError):
        ForestArrays.from_json(wrapped)
    assert not (tmp_path / "PWNED").exists()


def test_unseal_requires_exact_envelope() -> None:
    with pytest.raises(ModelFormatError, match="exactly 'payload' and 'sha256'"):
        unseal(b'{"payload": {}, "sha256": "", "code": "x"}')
    with pytest.raises(ModelFormatError, match="must be bytes"):
        unseal(12)  # type: ignore[arg-type]
