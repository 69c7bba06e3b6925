"""Training several services in one run, with one progress fraction over all of them and a cancel flag.

`train_services` is what `anomalydesk train` and the desktop app's Train button both run (the app
runs it in a child process, `anomalydesk train --worker`, so that training never holds the GUI
process's interpreter lock). A cancelled run stops between chunks of trees; services trained
before the cancel keep their new model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from anomalydesk.detect.train import TrainingCancelled, TrainParams
from anomalydesk.detect.training_run import train_service
from anomalydesk.store.keys import Keys


def train_services(r: redis.Redis, services: list[str], params: TrainParams, *, windows: int | None = None,
                   progress: Callable[[float, str], None] = lambda f, m: None,
                   cancel: Callable[[], bool] = lambda: False, keys: Keys | None = None) -> dict[str, Any]:  # fmt: skip
    """Train each service in turn: {"outcomes": [TrainOutcome dicts], "trained", "skipped", "cancelled", "summary"}."""
    outcomes: list[dict[str, Any]] = []
    short: dict[str, tuple[int, int]] = {}  # service → (have, need): too few windows to train
    cancelled = False
    n = max(1, len(services))
    for i, service in enumerate(services):
        if cancel():
            cancelled = True
            break
        progress(i / n, f"{service}: reading fingerprints")

        def report(fraction: float, i: int = i, service: str = service) -> None:
            progress((i + fraction) / n, f"{service}: growing the forest ({fraction:.0%})")

        try:
            outcome = train_service(r, service, windows=windows, params=params, progress=report, cancel=cancel,
                                    keys=keys)  # fmt: skip
        except TrainingCancelled:
            cancelled = True
            break
        outcomes.append(outcome.as_dict())
        if outcome.short_of_history:
            short[outcome.service] = outcome.short_of_history
    trained = [o["service"] for o in outcomes if not o.get("skipped")]
    skipped = {o["service"]: o["skipped"] for o in outcomes if o.get("skipped")}
    summary = f"trained {len(trained)} of {len(services)} service(s)"
    if cancelled:
        summary = "cancelled; " + summary
    if len(short) > 1:  # one sentence for them all, not the same reason once per service
        summary += "; " + short_of_history_text(short)
        skipped_text = {s: why for s, why in skipped.items() if s not in short}
    else:
        skipped_text = skipped
    if skipped_text:
        summary += "; " + "; ".join(f"{s} {why}" for s, why in sorted(skipped_text.items()))
    if not cancelled:
        progress(1.0, summary)
    return {"outcomes": outcomes, "trained": trained, "skipped": skipped, "cancelled": cancelled, "summary": summary}


def short_of_history_text(short: dict[str, tuple[int, int]]) -> str:
    """Services with too few windows, in one sentence: "5 services need more windows of history to train:
    at least 256 each; each has 6" (or "gateway has 6, users has 40")."""
    needs = sorted({need for _, need in short.values()})
    haves = {have for have, _ in short.values()}
    at_least = f"at least {needs[0]:,} each" if len(needs) == 1 else f"at least {needs[0]:,}–{needs[-1]:,}"
    has = (f"each has {haves.pop():,}" if len(haves) == 1
           else ", ".join(f"{s} has {have:,}" for s, (have, _) in sorted(short.items())))  # fmt: skip
    return f"{len(short)} services need more windows of history to train: {at_least}; {has}"
