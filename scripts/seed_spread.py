"""How much one forest seed decides: the product's backtest metrics at several forest seeds.

    .venv/bin/python scripts/seed_spread.py omi-1 ... omi-6 [--seeds 6] [--trees 100] [--synthetic]

For each entity and seed: `train` on the training file, `replay` and `track_scores` as `run_backtest`
does (timestamps dropped, as ASD has none), then the point-wise, point-adjusted and event F1.
`--synthetic` adds issue 17's sets (`tests/drift_sets.py`: none, shift, fault_shift) and prints their
point-wise F1 per seed. Prints the means per seed and per entity (docs/detection.md, "How much one
forest seed decides").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from anomalydesk.detect.backtest import Series, fill_missing, metrics, read_csv, replay
from anomalydesk.detect.episodes import track_scores
from anomalydesk.detect.train import TrainParams, train

ROOT = Path(__file__).resolve().parents[1]


def scores(fit: Series, scored: Series, seed: int, trees: int) -> dict[str, float]:
    """One backtest of the product at forest seed `seed`: its F1 figures."""
    model = train(fit.X, TrainParams(feature_names=scored.feature_names, random_state=seed, trees=trees))
    context = model.context_rows - 1
    s, _ = replay(model, np.vstack([fit.X[fit.X.shape[0] - context:], scored.X]), None, context)
    flagged, _ = track_scores(s, model.threshold)
    assert scored.labels is not None
    m = metrics(scored.labels, flagged, s)
    return {"pw": m["pointwise"]["f1"], "pa": m["point_adjusted"]["f1"], "event": m["events"]["f1"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("entities", nargs="*")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "asd"))
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--synthetic", action="store_true")
    args = parser.parse_args()
    sets: list[tuple[str, Series, Series]] = []
    for name in args.entities:
        fit, scored, _ = fill_missing(read_csv(Path(args.data) / f"{name}.train.csv.gz"),
                                      read_csv(Path(args.data) / f"{name}.test.csv.gz"))
        sets.append((name, fit, scored))
    if args.synthetic:
        sys.path.insert(0, str(ROOT / "tests"))
        import drift_sets

        for kind in drift_sets.KINDS:
            fit, test = drift_sets.make(kind)
            plain = [Series(s.path, s.feature_names, s.X, None, s.labels) for s in (fit, test)]
            sets.append((kind, *fill_missing(*plain)[:2]))
    seeds = range(args.seeds)
    results = {(name, seed): scores(fit, scored, seed, args.trees) for name, fit, scored in sets for seed in seeds}
    for metric in ("pa", "pw", "event"):
        table = np.array([[results[(e, s)][metric] for e in args.entities] for s in seeds])
        if table.size:
            print(f"{metric}: mean {table.mean():.3f}; per seed {' '.join(f'{x:.3f}' for x in table.mean(axis=1))}")
            for j, name in enumerate(args.entities):
                print(f"  {name}: {table[:, j].min():.3f}–{table[:, j].max():.3f} (sd {table[:, j].std():.3f})")
    for name, _, _ in sets[len(args.entities):]:
        per_seed = " ".join(f"{results[(name, s)]['pw']:.3f}" for s in seeds)
        print(f"{name} pw per seed: {per_seed}")


if __name__ == "__main__":
    main()
