"""`anomalydesk backtest`: metrics as DESIGN.md defines them, clear errors, the CLI in a subprocess."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anomalydesk import cli, config
from anomalydesk.detect.backtest import metrics, read_csv, time_zone

ASD = Path("/work/shared/datasets/asd")
BLOCKS = ("pointwise", "point_adjusted", "events")


def test_metrics_by_hand() -> None:
    labels = np.array([0, 1, 1, 0, 0, 1, 1, 1, 0])
    flagged = np.array([0, 0, 1, 0, 1, 0, 0, 0, 0], dtype=bool)
    scores = np.array([0, 1, 2, 0, 3, 0, 0, 0, 0], dtype=float)
    m = metrics(labels, flagged, scores)
    assert m["pointwise"] == pytest.approx({"precision": 0.5, "recall": 0.2, "f1": 2 * 0.1 / 0.7})
    # point adjustment: event 1 (rows 1-2) is hit, so both its rows count; event 2 is missed
    assert m["point_adjusted"] == pytest.approx({"precision": 2 / 3, "recall": 0.4, "f1": 2 * (4 / 15) / (2 / 3 + 0.4)})
    # events: 1 of 2 detected, after 1 row; alarms: run [2] hits an event, run [4] does not
    assert m["events"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "mean_delay": 1.0})
    assert 0.0 < m["auprc"] < 1.0


def test_metrics_without_detections() -> None:
    m = metrics(np.array([0, 1, 1, 0]), np.zeros(4, dtype=bool), np.zeros(4))
    assert m["pointwise"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert m["events"]["mean_delay"] is None


def _synthetic(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.normal(100, 5, rows), rng.gamma(3, 2, rows), rng.uniform(0, 1, rows)])
    labels = np.zeros(rows, dtype=int)
    for start in (600, 750, 900):
        X[start:start + 8, 0] += 60  # a level shift of 12 sigma for 8 windows
        labels[start:start + 8] = 1
    return X, labels


def _write(path: Path, header: list[str], columns: list[np.ndarray], gz: bool = False) -> Path:
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in zip(*columns, strict=True)]
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anomalydesk.cli", "backtest", *args],
                          capture_output=True, text=True, timeout=240)


def test_cli_on_small_csv(tmp_path: Path) -> None:
    X, labels = _synthetic(1000)
    stamps = 1_700_000_000 + 5 * np.arange(1000)
    test = _write(tmp_path / "test.csv.gz", ["timestamp", "a", "b", "c", "label"],
                  [stamps, X[:, 0], X[:, 1], X[:, 2], labels], gz=True)
    done = _run(str(test), "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert {"pointwise", "point_adjusted", "events", "auprc", "threshold"} <= set(out)
    for block in BLOCKS:
        assert set(out[block]) >= {"precision", "recall", "f1"}
        assert all(0.0 <= out[block][k] <= 1.0 for k in ("precision", "recall", "f1"))
    assert out["threshold"] == config.SEVERITY_WARNING
    assert out["rows"]["train"] == 300 and out["rows"]["scored"] == 700  # first 30 % trains
    assert out["events"]["recall"] == 1.0 and out["events"]["mean_delay"] is not None
    assert out["pointwise"]["precision"] > 0.5
    assert "reference" not in out


def test_cli_labels_file_and_text_output(tmp_path: Path) -> None:
    X, labels = _synthetic(1000, seed=1)
    test = _write(tmp_path / "t.csv", ["a", "b", "c"], [X[:, 0], X[:, 1], X[:, 2]])
    (tmp_path / "labels.txt").write_text("\n".join(map(str, labels)) + "\n")
    done = _run(str(test), "--labels", str(tmp_path / "labels.txt"))
    assert done.returncode == 0, done.stderr
    assert "pointwise" in done.stdout and "point_adjusted" in done.stdout and "threshold 70/100" in done.stdout


@pytest.mark.skipif(not (ASD / "omi-1.test.csv.gz").exists(), reason="ASD data set not present")
def test_cli_on_asd_entity_with_reference() -> None:
    done = _run(str(ASD / "omi-1.test.csv.gz"), "--train", str(ASD / "omi-1.train.csv.gz"),
                "--reference", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    for result in (out, out["reference"]):
        assert set(result) >= {"pointwise", "point_adjusted", "events", "auprc"}
        assert "mean_delay" in result["events"]
    assert out["rows"] == {**out["rows"], "train": 8640, "scored": 4320}
    assert out["pointwise"]["f1"] > out["reference"]["pointwise"]["f1"]


def _error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert cli.main(["backtest", *args]) == 2
    return capsys.readouterr().err


def test_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "no such file" in _error(capsys, str(tmp_path / "missing.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,2,0\n3,oops,1\n")
    assert "column 'b' is not numeric (row 3: 'oops')" in _error(capsys, str(bad))
    labels = tmp_path / "labels.csv"
    labels.write_text("a,label\n1,0\n2,2\n")
    assert "labels must be 0 or 1, found '2'" in _error(capsys, str(labels))
    plain = _write(tmp_path / "plain.csv", ["a"], [np.arange(10.0)])
    (tmp_path / "short.txt").write_text("0\n1\n")
    assert "--labels has 2 values but" in _error(capsys, str(plain), "--labels", str(tmp_path / "short.txt"))
    assert "no labels" in _error(capsys, str(plain))
    other = _write(tmp_path / "other.csv", ["z"], [np.arange(10.0)])
    (tmp_path / "ten.txt").write_text("0\n" * 10)
    assert "different feature columns" in _error(capsys, str(plain), "--train", str(other),
                                                 "--labels", str(tmp_path / "ten.txt"))


def test_too_short_training_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    X, labels = _synthetic(1000)
    test = _write(tmp_path / "t.csv", ["a", "label"], [X[:300, 0], labels[:300]])
    assert f"at least {config.MIN_TRAINING_WINDOWS}" in _error(capsys, str(test))


def test_read_csv_timestamps_rfc3339(tmp_path: Path) -> None:
    path = tmp_path / "ts.csv"
    path.write_text("timestamp,a\n2024-01-01T00:00:00Z,1\n2024-01-01T00:05:00+00:00,2\n")
    series = read_csv(path)
    assert series.timestamps is not None and series.timestamps[1] - series.timestamps[0] == 300.0
    assert series.feature_names == ("a",) and series.labels is None


def test_doubtful_timestamps_and_headers_are_refused_or_read_as_meant(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A tester's CSVs passed silently: millisecond epochs, times without a zone (read in the local
    zone), shuffled rows; a `Timestamp` header became a feature column (46 rows flagged instead of
    50) and a `Label` header gave "no labels". Timestamps follow the collector's rules and must be in
    time order; `timestamp` and `label` are found whatever their case."""
    def csv(name: str, stamps: list[str], header: str = "timestamp,a,label") -> str:
        path = tmp_path / name
        path.write_text(header + "\n" + "".join(f"{s},{i % 3},0\n" for i, s in enumerate(stamps)))
        return str(path)

    start = 1_700_000_000
    assert "milliseconds?" in _error(capsys, csv("ms.csv", [str((start + 300 * i) * 1000) for i in range(4)]))
    assert "needs a time zone" in _error(capsys, csv("zone.csv", ["2024-01-01T00:00:00", "2024-01-01T00:05:00"]))
    shuffled = _error(capsys, csv("order.csv", [str(start + 300), str(start), str(start + 600)]))
    assert "row 3" in shuffled and "time order" in shuffled and "drop the column" in shuffled, shuffled
    same = read_csv(csv("same.csv", [str(start), str(start), str(start + 300)]))  # a repeated time is no disorder
    assert same.timestamps is not None and same.timestamps[0] == same.timestamps[1]
    assert "drop the column" in _error(capsys, csv("index.csv", ["1", "2", "3"]))  # an index, not epoch seconds
    cased = read_csv(csv("cased.csv", [str(start + 300 * i) for i in range(4)], "Timestamp,a,Label"))
    assert cased.feature_names == ("a",) and cased.timestamps is not None and cased.labels is not None
    assert "differ only in case" in _error(capsys, csv("twice.csv", [str(start)], "timestamp,Timestamp,label"))
    bad = tmp_path / "bad-label.csv"
    bad.write_text("a,label\n1,0\n2,0\n3,0\n4,0\n5,yes\n")
    assert "found 'yes' (row 6)" in _error(capsys, str(bad))  # the file's row, as every other error counts
    plain = _write(tmp_path / "plain.csv", ["a"], [np.arange(10.0)])
    assert "no labels in it" in _error(capsys, str(plain), "--labels", "/dev/null")


def test_timestamps_without_a_zone_are_read_in_the_zone_given(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """An exported log's "2024-01-01 00:05:00" was refused with only "drop the column" as a way out, which
    loses the daily profile: `--timezone` says which zone such times are in."""
    path = tmp_path / "local.csv"
    path.write_text("timestamp,a\n2024-03-31 00:30:00,1\n2024-03-31 03:30:00,2\n2024-03-31T05:00:00Z,3\n")
    refused = _error(capsys, str(path))
    assert "needs a time zone" in refused and "--timezone" in refused, refused
    utc = read_csv(path, time_zone("UTC")).timestamps
    assert utc is not None and list(utc) == [1711845000.0, 1711855800.0, 1711861200.0]
    berlin = read_csv(path, time_zone("Europe/Berlin")).timestamps  # CET, then CEST from 02:00 that night
    assert berlin is not None and list(berlin) == [1711845000.0 - 3600, 1711855800.0 - 7200, 1711861200.0]
    assert "unknown time zone 'Mars/Olympus'" in _error(capsys, str(path), "--timezone", "Mars/Olympus")
    assert "unknown time zone 'Europe'" in _error(capsys, str(path), "--timezone", "Europe")  # (a directory)
    # the night the clocks go back, 02:00–03:00 happens twice: an export in order crosses it twice
    autumn = tmp_path / "autumn.csv"
    autumn.write_text("timestamp,a\n" + "".join(f"2024-10-27 {t},1\n" for t in
                                                ("01:30", "02:00", "02:30", "02:00", "02:30", "03:00")))
    stamps = read_csv(autumn, time_zone("Europe/Berlin")).timestamps
    assert stamps is not None and list(np.diff(stamps)) == [1800.0] * 5  # 00:30, 01:00 … 02:00 UTC
    # the night they go forward, 02:00–03:00 does not exist: refused, not read as some other time
    spring = tmp_path / "spring.csv"
    spring.write_text("timestamp,a\n2024-03-31 01:30,1\n2024-03-31 02:30,2\n2024-03-31 03:30,3\n")
    refused = _error(capsys, str(spring), "--timezone", "Europe/Berlin")
    assert "row 3" in refused and "no such time in Europe/Berlin" in refused, refused
