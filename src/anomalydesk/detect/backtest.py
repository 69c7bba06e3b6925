"""Backtesting the product's detector on labelled series (`anomalydesk backtest`).

The product path is used unchanged: `train()` on the training rows, `score_batch()` on the test rows
(the last training rows serve as context for the first test rows, as the live detector would have
them), flags = score ≥ the model's threshold, then `episodes.track_scores()` (with the opening margin
`config.INCIDENT_OPEN_SCORE`, as the live detector); a row counts as flagged when it lies inside an
incident. Labels are only read to compute the metrics.
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from anomalydesk import config
from anomalydesk.detect.episodes import track_scores
from anomalydesk.detect.model import Model
from anomalydesk.detect.peers import family, random_baseline
from anomalydesk.detect.range_metrics import VUS_MAX_BUFFER, affiliation, vus_pr
from anomalydesk.detect.score import score_batch
from anomalydesk.detect.train import TrainParams, train
from anomalydesk.events import EventError, parse_timestamp

TIMESTAMP_COLUMN = "timestamp"
LABEL_COLUMN = "label"


class BacktestError(ValueError):
    """Unusable input: the message says which file, column or row."""


@dataclass(frozen=True)
class Series:
    """A CSV read into arrays: features (n, f), optional timestamps and labels."""

    path: str
    feature_names: tuple[str, ...]
    X: np.ndarray
    timestamps: np.ndarray | None
    labels: np.ndarray | None


def time_zone(name: str) -> tzinfo:
    """The IANA zone `name` ("UTC", "Europe/Berlin") timestamps without a zone of their own are in."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # ("Europe" is a directory of zones: IsADirectoryError)
        raise BacktestError(f"unknown time zone {name!r}: give an IANA name such as UTC or Europe/Berlin") from None


def read_csv(path: str | Path, zone: tzinfo | None = None) -> Series:
    """Read a CSV or CSV.gz with a header row; every column but timestamp/label must be numeric.
    `zone`: the time zone of RFC 3339 timestamps written without one (without it they are refused)."""
    path = Path(path)
    if not path.is_file():
        raise BacktestError(f"{path}: no such file")
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8-sig")
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as err:
        raise BacktestError(f"{path}: cannot read ({err})") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise BacktestError(f"{path}: empty file (a header row is required)")
    header = [cell.strip() for cell in rows[0]]
    body = [row for row in rows[1:] if any(cell.strip() for cell in row)]
    if not body:
        raise BacktestError(f"{path}: no data rows after the header")
    if len(set(header)) != len(header):
        raise BacktestError(f"{path}: duplicate column names in the header")
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise BacktestError(f"{path}: row {line} has {len(row)} values, the header has {len(header)}")
    columns = {name: [row[i].strip() for row in body] for i, name in enumerate(header)}
    # "Timestamp" or "LABEL" is the same column: read as a feature it changed the results silently
    special = {name.lower(): name for name in header if name.lower() in (TIMESTAMP_COLUMN, LABEL_COLUMN)}
    if len(special) != sum(1 for name in header if name.lower() in (TIMESTAMP_COLUMN, LABEL_COLUMN)):
        raise BacktestError(f"{path}: more than one timestamp or label column (names differ only in case)")
    names = tuple(n for n in header if n not in special.values())
    if not names:
        raise BacktestError(f"{path}: no feature columns (only timestamp/label)")
    X = np.column_stack([_numeric(path, name, columns[name]) for name in names])
    stamp, label = special.get(TIMESTAMP_COLUMN), special.get(LABEL_COLUMN)
    timestamps = _timestamps(path, stamp, columns[stamp], zone) if stamp else None
    labels = _labels(f"{path}: column {label!r}", columns[label], first=2) if label else None
    return Series(str(path), names, X, timestamps, labels)


def read_labels(path: str | Path) -> np.ndarray:
    """A labels file: one 0 or 1 per line."""
    path = Path(path)
    if not path.exists() or path.is_dir():
        raise BacktestError(f"{path}: no such file")
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise BacktestError(f"{path}: cannot read ({err})") from None
    if not lines:
        raise BacktestError(f"{path}: no labels in it (one 0 or 1 per line, one line per row)")
    return _labels(f"{path}", lines, first=1)


MISSING = frozenset({"", "nan", "null", "na", "none"})  # a missing value (case-insensitive): filled, counted


def _numeric(path: Path, name: str, values: list[str]) -> np.ndarray:
    out = np.empty(len(values))
    for i, value in enumerate(values):
        if value.lower() in MISSING:
            out[i] = np.nan
            continue
        try:
            out[i] = float(value)
        except ValueError:
            raise BacktestError(f"{path}: column {name!r} is not numeric (row {i + 2}: {value!r})") from None
        if not np.isfinite(out[i]):
            raise BacktestError(f"{path}: column {name!r} has a non-finite value (row {i + 2}: {value!r})")
    return out


_NO_STAMPS = " (or drop the column: without timestamps the rows are read in file order, no daily profile)"


def _timestamps(path: Path, name: str, values: list[str], zone: tzinfo | None = None) -> np.ndarray:
    """Epoch seconds or RFC 3339 with a zone, as the collector takes them (`events.parse_timestamp`:
    2000–2100, so milliseconds are refused with a hint), in increasing order; one without a zone is in
    `zone` (an exported log's "2024-01-01 00:05:00"), refused when none is given."""
    out = np.empty(len(values))
    for i, value in enumerate(values):
        where = f"{path}: column {name!r} row {i + 2}: {value!r}"
        try:
            number: float | str = float(value)
        except ValueError:
            number = _in_zone(value, zone, out[i - 1] if i else None, where)
        try:
            out[i] = parse_timestamp(number, name)
        except EventError as err:
            hint = " (or give --timezone, e.g. UTC)" if zone is None and _zoneless(value) else ""
            raise BacktestError(f"{where}: {err.reason}{hint}{_NO_STAMPS}") from None
        if i and out[i] < out[i - 1]:
            raise BacktestError(f"{where} is before the row before ({values[i - 1]!r}); the rows must be in time "
                                f"order{_NO_STAMPS}")  # fmt: skip
    return out


def _zoneless(value: str) -> datetime | None:
    """`value` as a date and time when it is one without a zone of its own, else None."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is None else None


def _in_zone(value: str, zone: tzinfo | None, previous: float | None, where: str) -> float | str:
    """Epoch seconds of a date and time without a zone, read in `zone`; `value` as it is else (with a
    zone of its own, or none given: parse_timestamp reads or refuses it). A time repeated the night the
    clocks go back is its first occurrence unless that lies before the row before (`previous`): then the
    second — a local export crosses that hour in order. A time that does not exist (skipped when they
    go forward) is refused: no reading of it is right."""
    local = _zoneless(value) if zone is not None else None
    if local is None:
        return value
    first, second = local.replace(tzinfo=zone, fold=0), local.replace(tzinfo=zone, fold=1)
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != local:
        raise BacktestError(f"{where}: no such time in {zone} (the clocks went forward over it)")
    if previous is not None and first.timestamp() < previous <= second.timestamp():
        return second.timestamp()
    return first.timestamp()


def _labels(where: str, values: list[str], first: int) -> np.ndarray:
    """0/1 labels; `first`: the number of the first value's row (2 in a CSV after its header, 1 in a file)."""
    for i, value in enumerate(values):
        if value not in ("0", "1", "0.0", "1.0"):
            raise BacktestError(f"{where}: labels must be 0 or 1, found {value!r} (row {i + first})")
    return np.array([float(v) for v in values], dtype=np.int64)


# --- metrics -------------------------------------------------------------------------------------

def _prf(tp: float, flagged: float, positives: float) -> dict[str, float]:
    precision = tp / flagged if flagged else 0.0
    recall = tp / positives if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of true values as [start, end) pairs."""
    edges = np.diff(np.concatenate([[0], np.asarray(mask, dtype=np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def metrics(labels: np.ndarray, flagged: np.ndarray, scores: np.ndarray,
            alerts: np.ndarray | None = None) -> dict[str, Any]:
    """pointwise, point_adjusted, events (+ mean_delay in rows) and auprc, as DESIGN.md names them, and the
    range-aware `vus_pr` and `affiliation` (detect/range_metrics.py).

    `alerts`: the rows at which an alert went out (the product: each incident's confirmation row); an
    event's delay counts from its start to the first alert at or after it while flagged, else to its
    first flagged row.
    """
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(flagged, dtype=bool)
    events = runs(y)
    adjusted = p.copy()
    detected, delays = 0, []
    alert_rows = None if alerts is None else np.sort(np.asarray(alerts, dtype=np.int64))
    for start, end in events:
        hits = np.flatnonzero(p[start:end])
        if hits.size:
            adjusted[start:end] = True
            detected += 1
            delays.append(_delay(start, int(hits[0]), p, alert_rows))
    alarms = runs(p)
    true_alarms = sum(1 for start, end in alarms if y[start:end].any())
    event_block = _prf_events(true_alarms, len(alarms), detected, len(events))
    event_block["mean_delay"] = float(np.mean(delays)) if delays else None
    return {
        "pointwise": _prf(float((y & p).sum()), float(p.sum()), float(y.sum())),
        "point_adjusted": _prf(float((y & adjusted).sum()), float(adjusted.sum()), float(y.sum())),
        "events": event_block,
        "auprc": average_precision(y, scores),
        "vus_pr": vus_pr(y, scores, VUS_MAX_BUFFER),
        "affiliation": affiliation(y, p),
    }


def _delay(start: int, first_hit: int, flagged: np.ndarray, alerts: np.ndarray | None) -> int:
    """Rows from an event's start to its alert: the first alert row at or after the start that falls
    while the event is flagged (an incident open since before the event: 0)."""
    if alerts is None:
        return first_hit
    hit = start + first_hit
    before = alerts[alerts <= hit]
    if before.size and flagged[before[-1]:hit + 1].all():  # an incident opened earlier is still open
        return max(0, int(before[-1]) - start)
    after = alerts[alerts >= hit]
    return int(after[0]) - start if after.size else first_hit


def _prf_events(true_alarms: int, alarms: int, detected: int, events: int) -> dict[str, Any]:
    precision = true_alarms / alarms if alarms else 0.0
    recall = detected / events if events else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def average_precision(y: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the precision-recall curve (step-wise, as scikit-learn's average_precision_score)."""
    if not y.any():
        return None
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, scores))


# --- the run -------------------------------------------------------------------------------------

def split(test: Series, train_series: Series | None) -> tuple[Series, Series]:
    """(training part, scored part): the TRAIN file, or the first 30 % of TEST."""
    if train_series is not None:
        if train_series.feature_names != test.feature_names:
            raise BacktestError(f"{train_series.path} and {test.path} have different feature columns: "
                                f"{', '.join(train_series.feature_names)} vs {', '.join(test.feature_names)}")
        return train_series, test
    cut = round(test.X.shape[0] * config.BACKTEST_TRAIN_FRACTION)
    head = Series(test.path, test.feature_names, test.X[:cut],
                  None if test.timestamps is None else test.timestamps[:cut], None)
    tail = Series(test.path, test.feature_names, test.X[cut:],
                  None if test.timestamps is None else test.timestamps[cut:],
                  None if test.labels is None else test.labels[cut:])
    return head, tail


def run_backtest(test: Series, train_series: Series | None = None, labels: np.ndarray | None = None,
                 reference: bool = False, params: TrainParams | None = None) -> dict[str, Any]:
    """Train on the training part, score the rest with the product's pipeline, compute the metrics."""
    if labels is not None:
        if labels.shape[0] != test.X.shape[0]:
            raise BacktestError(f"--labels has {labels.shape[0]} values but {test.path} has "
                                f"{test.X.shape[0]} rows")
        test = Series(test.path, test.feature_names, test.X, test.timestamps, labels)
    if test.labels is None:
        raise BacktestError(f"{test.path}: no labels (add a 'label' column or pass --labels FILE)")
    fit_part, scored = split(test, train_series)
    fit_part, scored, missing = fill_missing(fit_part, scored)
    params = params or TrainParams(feature_names=test.feature_names)
    if fit_part.X.shape[0] < params.min_windows:
        raise BacktestError(f"only {fit_part.X.shape[0]} training rows; the product needs at least "
                            f"{params.min_windows} (config.MIN_TRAINING_WINDOWS) to train")
    model = train(fit_part.X, params, timestamps=fit_part.timestamps)
    context = model.context_rows - 1
    X = np.vstack([fit_part.X[fit_part.X.shape[0] - context:], scored.X]) if context else scored.X
    stamps = None
    if scored.timestamps is not None and fit_part.timestamps is not None:
        stamps = np.concatenate([fit_part.timestamps[fit_part.timestamps.shape[0] - context:],
                                 scored.timestamps]) if context else scored.timestamps
    scores, shifts = replay(model, X, stamps, context)
    flagged, episodes = track_scores(scores, model.threshold)
    assert scored.labels is not None
    result = metrics(scored.labels, flagged, scores, alerts=_alert_rows(episodes))
    result["threshold"] = model.threshold
    result["rows"] = {"train": int(fit_part.X.shape[0]), "scored": int(scored.X.shape[0]),
                      "flagged": int(flagged.sum()), "incidents": len(episodes),
                      "labelled_anomalous": int(scored.labels.sum()), "missing_values": missing}
    result["daily_cycle"] = bool(model.metadata["daily_cycle"])
    result["model_format"] = model.format_version
    result["level_shifts"] = shifts
    result["random"] = random_baseline(fit_part.X.shape[0], scored.labels, metrics)
    if reference:
        result["peers"] = family(fit_part.X, scored.X, scored.labels, metrics)
        result["reference"] = result["peers"]["isolation_forest"]
    return result


def fill_missing(fit: Series, scored: Series) -> tuple[Series, Series, int]:
    """Missing values (NaN: an empty cell, `nan`, `null`, `NA`) filled as a live system would see them:
    in training the column's training median, in the scored rows the last value seen before (from the
    last training row on); (training, scored, how many were filled). A column with no value at
    all in training is a BacktestError."""
    holes = int(np.isnan(fit.X).sum() + np.isnan(scored.X).sum())
    if not holes:
        return fit, scored, 0
    empty = np.all(np.isnan(fit.X), axis=0)
    if empty.any():
        raise BacktestError(f"{fit.path}: column {fit.feature_names[int(np.argmax(empty))]!r} has no value in "
                            "the training rows")
    median = np.nanmedian(fit.X, axis=0)
    train_x = np.where(np.isnan(fit.X), median, fit.X)
    test_x = scored.X.copy()
    last = train_x[-1].copy()
    for t in range(test_x.shape[0]):
        row = test_x[t]
        gone = np.isnan(row)
        row[gone] = last[gone]
        last = row.copy()
    return (Series(fit.path, fit.feature_names, train_x, fit.timestamps, fit.labels),
            Series(scored.path, scored.feature_names, test_x, scored.timestamps, scored.labels), holes)


def replay(model: Model, X: np.ndarray, stamps: np.ndarray | None, context: int
           ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Scores of the rows after the first `context` (the last training rows) with live adaptation: the
    baseline walks on from the end of training as the rows arrive, and each level shift is accepted as
    it appears (no operator here), so the rows after it are judged on the new level. The shifts:
    [{row (scored rows from 0, the row after which it was accepted), feature, reference, level, since}],
    levels in the model's adjusted space."""
    if model.baseline is None:
        return score_batch(model, X, stamps)[context:], []
    adjusted = model.adjusted(X, stamps)
    levels, _, found = model.walk(adjusted[context:], None if stamps is None else stamps[context:], accept=True)
    levels = np.vstack([np.tile(model.baseline.level(), (context, 1)), levels])
    shifts = [{"row": row, "feature": model.feature_names[s.feature], "reference": s.reference, "level": s.level,
               "since": s.since} for row, s in found]  # fmt: skip
    return model.scores(X, stamps, levels)[context:], shifts


def _alert_rows(episodes: list) -> np.ndarray:
    """The row each incident was confirmed at (k-of-n with its opening margin), when its alert went out."""
    return np.asarray([ep.confirmed for ep in episodes], dtype=np.int64)
