"""score(): 0–100 score, severity from the config cut-offs, and reasons in an operator's words."""

from __future__ import annotations

import numpy as np
import pytest

from anomalydesk import config
from anomalydesk.detect.incident_model import severity_of
from anomalydesk.detect.model import Model
from anomalydesk.detect.score import ScoreResult, score, score_batch
from anomalydesk.detect.train import TrainParams, train
from anomalydesk.fingerprint import (
    FEATURE_INDEX,
    FEATURE_NAMES,
    N_FEATURES,
    format_number,
    format_ratio,
    format_value,
)


def _fingerprints(n: int, seed: int) -> np.ndarray:
    """Service-like windows; 5xx ratio and p99 latency have exact medians (0.4 %, 210 ms)."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, N_FEATURES))
    col = FEATURE_INDEX
    X[:, col["requests"]] = rng.normal(500, 25, n).round()
    X[:, col["rate_4xx"]] = rng.uniform(0.01, 0.03, n)
    X[:, col["rate_5xx"]] = rng.choice([0.003, 0.004, 0.005], n)
    X[:, col["latency_p50_ms"]] = rng.normal(40, 3, n)
    X[:, col["latency_p95_ms"]] = rng.normal(150, 10, n)
    X[:, col["latency_p99_ms"]] = rng.choice([200.0, 210.0, 220.0], n)
    X[:, col["latency_mean_ms"]] = rng.normal(55, 4, n)
    X[:, col["endpoints_distinct"]] = rng.integers(11, 14, n)
    X[:, col["top_endpoint_share"]] = rng.uniform(0.2, 0.3, n)
    X[:, col["endpoint_entropy"]] = rng.normal(3.0, 0.1, n)
    X[:, col["kpi_level"]] = rng.normal(1.0, 0.05, n)
    return X


@pytest.fixture(scope="module")
def model() -> Model:
    return train(_fingerprints(1200, seed=0), TrainParams(trees=60))


def test_normal_window_is_info_without_reasons(model: Model) -> None:
    rows = _fingerprints(12, seed=1)
    result = score(model, rows)
    assert isinstance(result, ScoreResult)
    assert 0.0 <= result.score < config.SEVERITY_WARNING
    assert result.severity == "info" and not result.anomalous and result.reasons == []


def test_5xx_spike_is_named_in_operator_words(model: Model) -> None:
    rows = _fingerprints(model.context_rows, seed=2)
    rows[-1, FEATURE_INDEX["rate_5xx"]] = 0.18
    result = score(model, rows)
    assert result.anomalous and result.severity == "critical"
    top = result.reasons[0]
    assert set(top) == {"feature", "actual", "expected", "text"}
    assert top["feature"] == "rate_5xx" and top["actual"] == 0.18 and top["expected"] == 0.004
    assert top["text"] == "5xx ratio 18% vs 0.4% normal"


def test_latency_reason_uses_the_unit(model: Model) -> None:
    rows = _fingerprints(model.context_rows, seed=3)
    rows[-1, FEATURE_INDEX["latency_p99_ms"]] = 1240.0
    result = score(model, rows)
    assert result.anomalous
    assert result.reasons[0]["text"] == "p99 latency 1,240 ms vs 210 ms normal"


def test_sustained_fluctuation_is_described_as_such(model: Model) -> None:
    rows = _fingerprints(model.context_rows, seed=4)
    rows[:, FEATURE_INDEX["latency_p99_ms"]] = [210.0, 900.0, 215.0, 880.0, 205.0, 920.0][: model.context_rows]
    rows[-1, FEATURE_INDEX["latency_p99_ms"]] = 212.0  # the last value alone is normal
    result = score(model, rows)
    assert result.anomalous
    assert result.reasons[0]["feature"] == "latency_p99_ms"
    assert result.reasons[0]["text"] == (
        f"p99 latency fluctuating: 205 ms to 900 ms over the last {model.context_rows} windows, 210 ms normal")


def test_a_spread_below_training_is_called_steady_not_fluctuating(model: Model) -> None:
    """An anomalous window whose reason is a spread *below* its training range (the metric stopped
    moving) read "fluctuating: 24.5 ms to 24.5 ms" in the app; it is named for what it is."""
    from anomalydesk.detect.score import explain

    rows = _fingerprints(model.context_rows, seed=7)
    column = FEATURE_INDEX["latency_p99_ms"]
    rows[:, column] = 210.0  # flat over the whole context: std and jump at 0, far below training's
    levels = model.baseline.level() if model.baseline is not None else None
    Z = model.transform(rows, None, levels)
    std_z = Z[-1].reshape(4, -1)[2, column]
    assert std_z < 0  # the spread's deviation is negative: below training
    expected = model.expected_rows(rows.shape[0], None, levels)
    texts = [r["text"] for r in explain(model, rows, Z, expected, limit=model.n_features)
             if r["feature"] == "latency_p99_ms"]
    assert texts and texts[0].startswith("p99 latency unusually steady: 210 ms to 210 ms over the last")
    assert not any("fluctuating" in t for t in texts)


def test_score_of_last_row_equals_batch_score(model: Model) -> None:
    rows = _fingerprints(40, seed=5)
    rows[30, FEATURE_INDEX["requests"]] = 40
    batch = score_batch(model, rows)
    assert model.baseline is not None
    levels, _, _ = model.walk(model.adjusted(rows))  # the batch's baseline walks on from training's end
    assert model.baseline.block < 40 and not np.allclose(levels[0], levels[-1])  # it moved within the rows
    for i in (0, 3, 29, 30, 39):
        assert score(model, rows[: i + 1], level=levels[i]).score == pytest.approx(batch[i], abs=1e-12)
    assert score(model, rows[0]).score == pytest.approx(batch[0], abs=1e-12)  # a single vector


def test_reasons_are_few_and_ordered(model: Model) -> None:
    rows = _fingerprints(model.context_rows, seed=6)
    rows[-1, FEATURE_INDEX["rate_5xx"]] = 0.5
    rows[-1, FEATURE_INDEX["latency_p99_ms"]] = 5000.0
    rows[-1, FEATURE_INDEX["requests"]] = 100  # a fifth of normal: still enough requests behind the p99
    reasons = score(model, rows).reasons
    assert 1 <= len(reasons) <= config.REASONS_MAX
    assert {r["feature"] for r in reasons} == {"rate_5xx", "latency_p99_ms", "requests"}


def test_severity_cut_offs() -> None:
    assert severity_of(config.SEVERITY_WARNING - 0.01) == "info"
    assert severity_of(config.SEVERITY_WARNING) == "warning"
    assert severity_of(config.SEVERITY_CRITICAL - 0.01) == "warning"
    assert severity_of(config.SEVERITY_CRITICAL) == "critical"


def test_wrong_input_is_a_clear_error(model: Model) -> None:
    with pytest.raises(ValueError, match=f"expected rows of {N_FEATURES} features"):
        score(model, np.zeros((3, N_FEATURES - 1)))
    rows = _fingerprints(3, seed=7)
    rows[-1, 2] = np.inf
    with pytest.raises(ValueError, match=f"feature '{FEATURE_NAMES[2]}' has a non-finite value"):
        score(model, rows)


def test_request_drop_names_requests_not_the_endpoint_count(model: Model) -> None:
    rows = _fingerprints(model.context_rows, seed=8)
    rows[-2:, FEATURE_INDEX["requests"]] = 100.0
    rows[-1, FEATURE_INDEX["endpoints_distinct"]] = 10.0  # fewer requests reach fewer endpoints
    result = score(model, rows)
    assert result.anomalous and result.reasons[0]["feature"] == "requests"
    assert model.baseline is not None  # "normal" is the service's baseline now, near the training median
    normal = model.expected_rows(1, None, model.baseline.level())[0, FEATURE_INDEX["requests"]]
    assert normal == pytest.approx(model.expected[FEATURE_INDEX["requests"]], rel=0.02)
    assert result.reasons[0]["text"] == f"requests 100/window vs {normal:,.0f}/window normal"


def test_a_further_reason_within_ten_percent_of_normal_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """During an error burst the README journey also listed "p50 latency averaged 24.6 ms … vs 25.2 ms
    normal": many IQRs of a steady latency, a 2 % move. A reason after the first is named by its value
    or average only when that is more than REASON_MIN_CHANGE away from normal; the top one always is."""
    X = _fingerprints(800, seed=10)
    p50 = FEATURE_INDEX["latency_p50_ms"]
    X[:, p50] = np.random.default_rng(11).normal(25.2, 0.1, X.shape[0])  # a very steady p50
    steady = train(X, TrainParams(trees=40))
    rows = _fingerprints(steady.context_rows, seed=12)
    jitter = np.random.default_rng(13).normal(0.0, 0.1, steady.context_rows)  # not stuck: it moves as in training
    rows[:, p50] = 24.6 + jitter  # 4–6 IQRs below, 2.4 % of its level
    rows[-1, FEATURE_INDEX["rate_5xx"]] = 0.18

    def named(factor: float) -> list[str]:
        monkeypatch.setattr(config, "REASON_MIN_CHANGE", factor)
        result = score(steady, rows)
        assert result.anomalous and result.reasons[0]["feature"] == "rate_5xx"
        return [r["feature"] for r in result.reasons]

    assert "latency_p50_ms" in named(0.0)  # without the rule it is named
    assert "latency_p50_ms" not in named(0.10)
    rows[:, p50] = 30.0 + jitter  # 19 % above normal: named
    assert "latency_p50_ms" in named(0.10)
    rows[:, FEATURE_INDEX["rate_5xx"]] = 0.004
    rows[:, p50] = 24.6 + jitter
    alone = score(steady, rows)  # the top reason is named however small its move
    assert alone.anomalous and alone.reasons[0]["feature"] == "latency_p50_ms"


def test_a_further_reason_fluctuating_within_ten_percent_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rule for a spread: "endpoint mix entropy fluctuating: 2.5 bits to 2.6 bits" beside an
    error burst is many IQRs of a steady entropy but a range of 4 % of its level."""
    X = _fingerprints(800, seed=20)
    entropy = FEATURE_INDEX["endpoint_entropy"]
    X[:, entropy] = np.random.default_rng(21).normal(2.6, 0.005, X.shape[0])
    steady = train(X, TrainParams(trees=40))
    rows = _fingerprints(steady.context_rows, seed=22)
    rows[:, entropy] = np.resize([2.5, 2.6], steady.context_rows)
    rows[-1, entropy] = 2.6  # its value normal: it is named, if at all, by its spread
    rows[-1, FEATURE_INDEX["rate_5xx"]] = 0.18

    def texts(factor: float) -> list[str]:
        monkeypatch.setattr(config, "REASON_MIN_CHANGE", factor)
        result = score(steady, rows)
        assert result.anomalous and result.reasons[0]["feature"] == "rate_5xx"
        return [r["text"] for r in result.reasons if r["feature"] == "endpoint_entropy"]

    assert texts(0.0) and "fluctuating" in texts(0.0)[0]  # without the rule it is named
    assert texts(0.10) == []
    rows[:, entropy] = np.resize([2.0, 2.6], steady.context_rows)  # a range of 23 %: named
    rows[-1, entropy] = 2.6
    assert texts(0.10) and "fluctuating" in texts(0.10)[0]


def test_a_reason_over_several_windows_carries_the_numbers_its_text_names(model: Model) -> None:
    """An incident's reason read "5xx ratio averaged 12.4% over the last 6 windows" while its `actual`
    was 0.0064, the last window's value: a webhook or `--json` reader got a number the text did not
    say. An average's `actual` is that average; a spread's reason carries the range it names
    (`low`, `high`) beside the last value; both say over how many `windows`."""
    n = model.context_rows
    rows = _fingerprints(n, seed=14)
    rows[:-1, FEATURE_INDEX["rate_5xx"]] = 0.02
    rows[-1, FEATURE_INDEX["rate_5xx"]] = 0.006  # the last window alone is near normal (0.4 %)
    result = score(model, rows)
    averaged = next(r for r in result.reasons if r["feature"] == "rate_5xx")
    assert "averaged" in averaged["text"], averaged
    assert averaged["actual"] == pytest.approx(float(rows[:, FEATURE_INDEX["rate_5xx"]].mean()))
    assert averaged["windows"] == n
    rows = _fingerprints(n, seed=4)
    rows[:, FEATURE_INDEX["latency_p99_ms"]] = [210.0, 900.0, 215.0, 880.0, 205.0, 920.0][:n]
    rows[-1, FEATURE_INDEX["latency_p99_ms"]] = 212.0
    spread = next(r for r in score(model, rows).reasons if r["feature"] == "latency_p99_ms")
    assert "fluctuating" in spread["text"] and (spread["low"], spread["high"]) == (205.0, 900.0)
    assert spread["actual"] == 212.0 and spread["windows"] == n


def test_values_read_with_two_significant_digits_and_only_zero_reads_zero() -> None:
    """The one formatter of feature values (reasons, and so the CLI, webhooks, notifications and the app,
    which all show a reason's text): small values keep two significant digits, none reads as 0."""
    assert [format_ratio(v) for v in (0.18, 0.124, 0.004, 0.0031, 0.000042, 0.0)] == [
        "18%", "12.4%", "0.4%", "0.31%", "0.0042%", "0%"]
    assert format_value("latency_p99_ms", 1240.0) == "1,240 ms"
    assert format_value("requests", 3.25) == "3.2/window" and format_value("kpi_level", 0.8) == "0.8×"
    assert format_number(9.96) == "10" and format_number(-0.0042) == "-0.0042" and format_number(4e-9) == "4e-09"
    assert (format_number(float("nan")), format_ratio(float("inf"))) == ("nan", "inf%")
    for value in np.geomspace(1e-9, 9.9, 400):
        shown = format_number(value)
        assert shown != "0" and float(shown) == pytest.approx(value, rel=0.05), (value, shown)


def _sparse_errors(n: int, seed: int) -> np.ndarray:
    """A service at ~180 requests a window and 0.2 % 5xx per request: no error in most windows (the
    median ratio is 0), one or two in the others (0.5–1.1 %), as the demo's payments service."""
    X = _fingerprints(n, seed)
    requests = X[:, FEATURE_INDEX["requests"]] = np.random.default_rng(seed).normal(180, 10, n).round()
    X[:, FEATURE_INDEX["rate_5xx"]] = np.random.default_rng(seed + 1).binomial(requests.astype(int), 0.002) / requests
    return X


def test_a_normal_of_zero_reads_as_the_usual_range_when_most_windows_are_not_zero() -> None:
    """A tester read "5xx ratio 12% vs 0% normal" beside the app's plot of that ratio at 0.2–0.5 % in
    normal windows: the training median of a sparse error ratio is 0. Its normal reads as the middle half
    of its training windows (0 to the upper quartile), which the plot shows."""
    X = _sparse_errors(1500, seed=30)
    c = FEATURE_INDEX["rate_5xx"]
    upper = float(np.percentile(X[:, c], 75))
    assert float(np.median(X[:, c])) == 0.0 and upper > 0.004
    sparse = train(X, TrainParams(trees=60))
    rows = _sparse_errors(sparse.context_rows, seed=31)
    rows[-1, c] = 0.12
    result = score(sparse, rows)
    assert result.anomalous
    top = result.reasons[0]
    assert top["feature"] == "rate_5xx" and top["expected"] == 0.0
    assert top["text"] == f"5xx ratio 12% vs 0–{format_ratio(upper)} normal"


def test_a_mostly_zero_normal_says_how_often_it_is_not_zero() -> None:
    """A ratio 0 in at least three quarters of its training windows has a median and an IQR of 0: it read
    "0% normal", as if a healthy service never had an error. It reads "usually 0%" with how many of the
    training windows were not 0; one 0 in every training window reads "0% normal"; a model trained
    before that share was kept (no `feature_nonzero_share`) says "usually 0%"."""
    from dataclasses import replace

    X = _fingerprints(1200, seed=40)
    X[:, FEATURE_INDEX["rate_5xx"]] = 0.0
    X[::50, FEATURE_INDEX["rate_5xx"]] = 0.005  # a rare error: the upper quartile is still 0
    clean = train(X, TrainParams(trees=60))
    assert clean.metadata["feature_nonzero_share"]["rate_5xx"] == 0.02
    rows = _fingerprints(clean.context_rows, seed=41)
    rows[:, FEATURE_INDEX["rate_5xx"]] = 0.0
    rows[-1, FEATURE_INDEX["rate_5xx"]] = 0.12
    result = score(clean, rows)
    assert result.anomalous
    assert result.reasons[0]["text"] == "5xx ratio 12% vs usually 0% (non-zero in 2% of training windows)"
    assert result.reasons[0]["expected"] == 0.0
    older = replace(clean, metadata={k: v for k, v in clean.metadata.items() if k != "feature_nonzero_share"})
    assert score(older, rows).reasons[0]["text"] == "5xx ratio 12% vs usually 0%"

    X[:, FEATURE_INDEX["rate_5xx"]] = 0.0  # never an error in training
    never = train(X, TrainParams(trees=60))
    result = score(never, rows)
    assert result.anomalous and result.reasons[0]["text"] == "5xx ratio 12% vs 0% normal"
