"""Backtest the product and its reference family on ASD entities; print one markdown table per metric.

    .venv/bin/python scripts/backtest_family.py omi-1 omi-2 ... [--data ../shared/datasets/asd] [--json OUT]

Each entity runs `run_backtest(..., reference=True)` (what `anomalydesk backtest --reference --json` prints).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from anomalydesk.detect.backtest import read_csv, run_backtest

COLUMNS = ("product", "isolation_forest", "knn_window", "pca_window", "random")
METRICS = {
    "point-wise F1": lambda b: b["pointwise"]["f1"],
    "point-adjusted F1": lambda b: b["point_adjusted"]["f1"],
    "event F1": lambda b: b["events"]["f1"],
    "VUS-PR": lambda b: b["vus_pr"],
    "affiliation F1": lambda b: b["affiliation"]["f1"],
    "AUPRC": lambda b: b["auprc"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("entities", nargs="+")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "asd"))
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--from-json", dest="json_in", help="print the tables of an earlier --json run")
    args = parser.parse_args()
    results = json.loads(Path(args.json_in).read_text()) if args.json_in else {}
    for name in [] if args.json_in else args.entities:
        test = read_csv(Path(args.data) / f"{name}.test.csv.gz")
        train = read_csv(Path(args.data) / f"{name}.train.csv.gz")
        out = run_backtest(test, train, reference=True)
        results[name] = {"product": out, **out["peers"]}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))
    for title, get in METRICS.items():
        print(f"\n{title}\n\n| entity | " + " | ".join(COLUMNS) + " |")
        print("|---" * (len(COLUMNS) + 1) + "|")
        table = {c: [] for c in COLUMNS}
        for name, blocks in results.items():
            cells = []
            for c in COLUMNS:
                value = get(blocks[c])
                table[c].append(value)
                cells.append("n/a" if value is None else f"{value:.3f}")
            print(f"| {name} | " + " | ".join(cells) + " |")
        means = [np.mean([v for v in table[c] if v is not None]) for c in COLUMNS]
        print("| **mean** | " + " | ".join(f"**{m:.3f}**" for m in means) + " |")
    delays = [results[n]["product"]["events"]["mean_delay"] for n in results]
    print("\nproduct mean delay (rows, from the alert):", [None if d is None else round(d, 1) for d in delays])


if __name__ == "__main__":
    main()
