"""`anomalydesk backtest TEST.csv [--train TRAIN.csv] [--labels FILE] [--reference] [--timezone ZONE]`."""

from __future__ import annotations

import argparse
from typing import Any

from anomalydesk.cli import CommandError
from anomalydesk.commands._common import emit


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the `backtest` parser."""
    p = subparsers.add_parser(
        "backtest", parents=[parent],
        help="measure the detector on a labelled CSV (the product's training, scoring and incidents)",
        description="Train on TRAIN.csv (or the first 30%% of TEST.csv), score TEST.csv with the product's "
                    "detector and report point-wise, point-adjusted and event-wise precision/recall/F1.",
    )
    p.add_argument("test", metavar="TEST.csv",
                   help="CSV or CSV.gz with a header; a 'label' column (0/1) unless --labels gives them; an "
                        "optional 'timestamp' column (epoch seconds or RFC 3339 with a zone, in time order)")
    p.add_argument("--timezone", metavar="ZONE",
                   help="the IANA time zone (UTC, Europe/Berlin) of timestamps written without one, e.g. "
                        "'2024-01-01 00:05:00' (without this option they are refused)")
    p.add_argument("--train", metavar="TRAIN.csv", help="training rows (else the first 30%% of TEST trains)")
    p.add_argument("--labels", metavar="FILE", help="one 0/1 per line, one line per TEST row")
    p.add_argument("--reference", action="store_true",
                   help="also run the reference family on the same rows: plain IsolationForest (100 trees, seeds "
                        "0-4), kNN and PCA on each row with its 6-row mean and std (99th-percentile thresholds)")


def run(args: argparse.Namespace) -> int:
    """Run the backtest and print the metrics."""
    from anomalydesk.detect.backtest import BacktestError, read_csv, read_labels, run_backtest, time_zone

    try:
        zone = time_zone(args.timezone) if args.timezone else None
        test = read_csv(args.test, zone)
        train_series = read_csv(args.train, zone) if args.train else None
        labels = read_labels(args.labels) if args.labels else None
        result = run_backtest(test, train_series, labels, reference=args.reference)
    except (BacktestError, ValueError) as err:
        raise CommandError(str(err)) from None
    emit(args, result, _text(result))
    return 0


def _text(result: dict[str, Any]) -> str:
    rows = result["rows"]
    lines = [
        f"trained on {rows['train']} rows, scored {rows['scored']}: {rows['flagged']} rows flagged in "
        f"{rows['incidents']} incidents ({rows['labelled_anomalous']} labelled anomalous); "
        f"threshold {result['threshold']:.0f}/100",
        f"{'':30}{'precision':>10}{'recall':>10}{'f1':>10}",
    ]
    blocks = [("", result), ("random ", result["random"])]
    blocks += [(f"{name} ", block) for name, block in result.get("peers", {}).items()]
    for prefix, block in blocks:
        for name in ("pointwise", "point_adjusted", "events", "affiliation"):
            m = block[name]
            if m is not None:
                lines.append(f"{prefix + name:<30}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}")
        delay, auprc, vus = block["events"]["mean_delay"], block["auprc"], block["vus_pr"]
        lines.append(f"{prefix}auprc {'n/a' if auprc is None else f'{auprc:.3f}'}, vus_pr "
                     f"{'n/a' if vus is None else f'{vus:.3f}'}, mean event delay "
                     f"{'n/a' if delay is None else f'{delay:.1f} rows'}")
    return "\n".join(lines)
