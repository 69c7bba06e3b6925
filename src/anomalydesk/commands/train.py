"""`anomalydesk train`: train a model per service from its fingerprints in Redis, store and activate it."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from anomalydesk import config
from anomalydesk.cli import CommandError
from anomalydesk.commands._common import client, emit


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the `train` parser."""
    p = subparsers.add_parser(
        "train", parents=[parent], help="train and activate a model per service",
        description="Reads each service's recent fingerprints (leaving out windows of confirmed "
        "incidents, putting back windows marked false positive), trains an Isolation Forest model, "
        "stores it as a new version and activates it. Progress goes to stderr.",
    )  # fmt: skip
    p.add_argument("--service", metavar="S", help="train only this service (default: every live service)")
    p.add_argument("--windows", type=int, metavar="N", help="most recent windows to train on (default: all kept)")
    p.add_argument("--trees", type=int, metavar="T", default=config.DEFAULT_TREES,
                   help=f"trees in the forest (default {config.DEFAULT_TREES})")
    p.add_argument("--false-alarm-rate", type=float, metavar="R", default=config.DEFAULT_FALSE_ALARM_RATE,
                   help=f"share of normal windows allowed over the threshold (default "
                        f"{config.DEFAULT_FALSE_ALARM_RATE})")  # fmt: skip


def _progress(service: str, quiet: bool) -> Any:
    last = [0.0]

    def report(fraction: float) -> None:
        now = time.monotonic()
        if fraction < 1.0 and now - last[0] < 0.2:
            return
        last[0] = now
        end = "\n" if fraction >= 1.0 else ""
        print(f"\rtraining {service}: {fraction:4.0%}", end=end, file=sys.stderr, flush=True)

    return None if quiet else report


def run(args: argparse.Namespace) -> int:
    """Train the named service or every live one."""
    from anomalydesk.detect.detector import live_services
    from anomalydesk.detect.train import TrainParams
    from anomalydesk.detect.training_run import train_service

    if args.windows is not None and args.windows < 2:
        raise CommandError(f"--windows must be at least 2, got {args.windows}")
    try:
        params = TrainParams(trees=args.trees, false_alarm_rate=args.false_alarm_rate)
    except ValueError as err:
        raise CommandError(str(err)) from None
    r = client(args)
    try:
        live = live_services(r)
        if args.service:
            if args.service not in live:
                raise CommandError(f"no live service named {args.service!r} (known: {', '.join(live) or 'none'})")
            live = [args.service]
        if not live:
            raise CommandError("no services yet: send some traffic (or run `anomalydesk demo --fast`) first")
        outcomes = [train_service(r, s, windows=args.windows, params=params,
                                  progress=_progress(s, quiet=False)).as_dict() for s in live]  # fmt: skip
    finally:
        r.close()
    emit(args, {"trained": [o for o in outcomes if not o.get("skipped")],
                "skipped": [o for o in outcomes if o.get("skipped")]}, _render(outcomes))  # fmt: skip
    return 0 if any(not o.get("skipped") for o in outcomes) else 1


def _render(outcomes: list[dict[str, Any]]) -> str:
    lines = []
    for o in outcomes:
        if o.get("skipped"):
            lines.append(f"{o['service']}: not trained ({o['skipped']})")
        else:
            lines.append(f"{o['service']}: model v{o['version']} active, {o['windows']} windows, "
                         f"{o['seconds']:.2f} s — {o.get('note', '')}")  # fmt: skip
    return "\n".join(lines)
