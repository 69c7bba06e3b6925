"""`anomalydesk train`: train a model per service from its fingerprints in Redis, store and activate it."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from anomalydesk import config
from anomalydesk.cli import CommandError
from anomalydesk.commands._common import client, emit, lower_priority


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the `train` parser."""
    p = subparsers.add_parser(
        "train", parents=[parent], help="train and activate a model per service",
        description="Reads each service's recent fingerprints (leaving out windows of confirmed "
        "incidents, putting back windows marked false positive), trains an Isolation Forest model, "
        "stores it as a new version and activates it. Progress goes to stderr.",
    )  # fmt: skip
    p.add_argument("--service", metavar="S", action="append",
                   help="train only this service; repeat for several (default: every live service)")
    p.add_argument("--windows", type=int, metavar="N", help="most recent windows to train on (default: all kept)")
    p.add_argument("--trees", type=int, metavar="T", default=config.DEFAULT_TREES,
                   help=f"trees in the forest (default {config.DEFAULT_TREES})")
    p.add_argument("--false-alarm-rate", type=float, metavar="R", default=config.DEFAULT_FALSE_ALARM_RATE,
                   help=f"share of normal windows allowed over the threshold (default "
                        f"{config.DEFAULT_FALSE_ALARM_RATE})")  # fmt: skip
    p.add_argument("--worker", action="store_true",
                   help="machine interface (the desktop app runs training this way): progress and the result "
                        "as JSON lines on stdout; a line 'cancel' on stdin, or stdin closing, stops the run "
                        "between chunks of trees")  # fmt: skip
    p.add_argument("--score-recent", type=int, metavar="N", default=0,
                   help="with --worker: the result also holds each trained service's last N windows scored "
                        "by its new model (`recent_scores`: service → {start, score}), so the app need not "
                        "rescore them itself")  # fmt: skip


def _progress(services: list[str]) -> Callable[[float, str], None]:
    """Each service's own progress on stderr (`training S: 40%`), at most five times a second."""
    last: list[Any] = [0.0, None]

    def report(fraction: float, message: str) -> None:
        service = message.split(":", 1)[0]
        if service not in services:  # the closing summary
            return
        local = min(1.0, fraction * len(services) - services.index(service))
        now = time.monotonic()
        if service == last[1] and local < 1.0 and now - last[0] < 0.2:
            return
        start = "\n" if last[1] not in (None, service) else "\r"
        last[0], last[1] = now, service
        print(f"{start}training {service}: {local:4.0%}", end="", file=sys.stderr, flush=True)

    return report


def _line(data: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
    sys.stdout.flush()


def _cancel_on_stdin() -> threading.Event:
    """An event set when stdin says `cancel` or closes (the app quit or died)."""
    cancel = threading.Event()

    def watch() -> None:
        for line in sys.stdin:
            if line.strip() == "cancel":
                break
        cancel.set()

    threading.Thread(target=watch, name="ad-train-stdin", daemon=True).start()
    return cancel


def _recent_scores(r: Any, service: str, n: int) -> dict[str, list[float]]:
    """The service's last `n` windows with data, scored by its active model: {"start": [...], "score": [...]}."""
    import numpy as np

    from anomalydesk.detect.score import score_batch
    from anomalydesk.detect.service_state import load_model
    from anomalydesk.detect.training_run import recent_windows
    from anomalydesk.store.keys import Keys

    keys = Keys(config.key_prefix())
    fps = [fp for fp in recent_windows(r, service, n, keys=keys) if not fp.no_data]
    if not fps:
        return {"start": [], "score": []}
    starts = np.array([fp.start for fp in fps], dtype=np.float64)
    scores = score_batch(load_model(r, service, keys=keys)[1], np.vstack([fp.vector for fp in fps]), starts)
    return {"start": starts.tolist(), "score": scores.tolist()}


def run(args: argparse.Namespace) -> int:
    """Train the named services or every live one."""
    from anomalydesk.detect.batch_training import train_services
    from anomalydesk.detect.detector import live_services
    from anomalydesk.detect.train import TrainParams

    if args.windows is not None and args.windows < 2:
        raise CommandError(f"--windows must be at least 2, got {args.windows}")
    try:
        params = TrainParams(trees=args.trees, false_alarm_rate=args.false_alarm_rate)
    except ValueError as err:
        raise CommandError(str(err)) from None
    r = client(args)
    try:
        live = live_services(r)
        unknown = [s for s in args.service or [] if s not in live]
        if unknown:
            raise CommandError(f"no live service named {unknown[0]!r} (known: {', '.join(live) or 'none'})")
        services = list(dict.fromkeys(args.service)) if args.service else live
        if not services:
            raise CommandError("no services yet: send some traffic (or run `anomalydesk demo --fast`) first")
        if args.worker:
            lower_priority()
            cancel = _cancel_on_stdin()
            result = train_services(r, services, params, windows=args.windows, cancel=cancel.is_set,
                                    progress=lambda f, m: _line({"progress": f, "message": m}))  # fmt: skip
            if args.score_recent > 0:
                result["recent_scores"] = {s: _recent_scores(r, s, args.score_recent) for s in result["trained"]}
            _line({"result": result})
            return 0
        result = train_services(r, services, params, windows=args.windows, progress=_progress(services))
    finally:
        r.close()
    print(file=sys.stderr)
    outcomes = result["outcomes"]
    emit(args, {"trained": [o for o in outcomes if not o.get("skipped")],
                "skipped": [o for o in outcomes if o.get("skipped")]}, _render(outcomes))  # fmt: skip
    return 0 if result["trained"] else 1


def _render(outcomes: list[dict[str, Any]]) -> str:
    lines = []
    for o in outcomes:
        if o.get("skipped"):
            lines.append(f"{o['service']}: not trained ({o['skipped']})")
        else:
            lines.append(f"{o['service']}: model v{o['version']} active, {o['windows']} windows, "
                         f"{o['seconds']:.2f} s — {o.get('note', '')}")  # fmt: skip
    return "\n".join(lines)
