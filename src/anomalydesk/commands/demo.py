"""`anomalydesk demo`: simulated microservice traffic with injected faults and recorded ground truth."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from anomalydesk import config
from anomalydesk.cli import CommandError
from anomalydesk.commands._common import client, emit

PROGRESS_SECONDS = 5.0  # how often a running demo reports on stderr


def _seconds(text: str) -> float:
    from anomalydesk.ingest.demo_model import parse_seconds

    try:
        return parse_seconds(text, "--duration")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _inject(text: str) -> Any:
    from anomalydesk.ingest.demo_model import parse_inject

    try:
        return parse_inject(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the `demo` parser."""
    p = subparsers.add_parser(
        "demo", parents=[parent], help="send simulated microservice traffic, optionally with faults",
        description="A gateway in front of users, orders, payments and inventory (svc-6, … with "
        "--services), with a daily load cycle and business KPIs. Live by default (until --duration "
        "or Ctrl-C); --fast generates --duration simulated seconds ending now, as fast as it can.",
        epilog="Fault kinds: latency (x5 latency), errors (20% 5xx), drop (80% fewer requests), "
        "spike (5x requests), new-dependency (calls to endpoints never used), business (KPI x0.3), "
        f"shift (a deploy: latency x{config.DEMO_SHIFT_LATENCY_FACTOR:g} for good unless +LEN is given). "
        "Example: --inject errors@30+20:payments. Ground truth goes to the stream <prefix>demo:truth.",
    )  # fmt: skip
    p.add_argument("--rate", type=float, default=config.DEMO_DEFAULT_RATE, metavar="EPS",
                   help=f"mean events per second over all services (default {config.DEMO_DEFAULT_RATE:g})")
    p.add_argument("--duration", type=_seconds, metavar="S",
                   help="seconds to run (s/m/h suffixes allowed); live default: until Ctrl-C, "
                   f"--fast default: {config.DEMO_FAST_DEFAULT_SECONDS} (one day)")
    p.add_argument("--services", type=int, default=config.DEMO_DEFAULT_SERVICES, metavar="N",
                   help="number of services (default 5: gateway, users, orders, payments, inventory)")
    p.add_argument("--seed", type=int, metavar="N", help="random seed (same seed, same traffic)")
    p.add_argument("--fast", action="store_true", help="simulated clock: generate history as fast as possible")
    p.add_argument("--backfill", type=_seconds, metavar="S",
                   help="live mode: first write S of history ending now (as --fast, same seed), then go live "
                   "at once from where it ends: no partly filled window between history and live traffic")
    p.add_argument("--inject", type=_inject, action="append", default=[], metavar="KIND@START[+LEN][:SERVICE]",
                   help="inject a fault START seconds after the demo starts for LEN seconds "
                   f"(default {config.DEMO_INJECT_DEFAULT_SECONDS}) into SERVICE "
                   f"(default {config.DEMO_INJECT_DEFAULT_SERVICE}); repeatable")
    p.add_argument("--truth", metavar="FILE", help="also append the ground truth to FILE (JSON lines)")


def _fast(args: argparse.Namespace) -> dict[str, Any]:
    from anomalydesk.ingest.demo import run_fast

    r = client(args)
    shown = [0.0]

    def progress(done: float) -> None:
        now = time.monotonic()
        if now - shown[0] >= PROGRESS_SECONDS:
            shown[0] = now
            print(f"demo --fast: {done:.0%}", file=sys.stderr, flush=True)

    try:
        return run_fast(r, duration=args.duration or config.DEMO_FAST_DEFAULT_SECONDS, rate=args.rate,
                        services=args.services, seed=args.seed, injects=args.inject, truth_path=args.truth,
                        progress=progress)  # fmt: skip
    finally:
        r.close()


def _live(args: argparse.Namespace) -> dict[str, Any]:
    from anomalydesk.ingest.demo import DemoTraffic
    from anomalydesk.ingest.demo_services import load_factor

    r = client(args)
    history = _backfill(r, args) if args.backfill else None
    demo = DemoTraffic(r, rate=args.rate, services=args.services, duration=args.duration, injects=args.inject,
                       truth_path=args.truth, seed=history["seed"] if history else args.seed,
                       since=history["end"] if history else None)  # fmt: skip
    try:
        demo.start()
        now = args.rate * float(load_factor(time.time()))
        print(f"demo: {args.rate:g} events/s on average over the day ({now:,.0f}/s at this hour) over "
              f"{', '.join(demo.services)}" + ("" if args.duration else " (Ctrl-C stops)"),
              file=sys.stderr, flush=True)  # fmt: skip
        followed = 0  # window-length changes said so far
        while not demo.wait(PROGRESS_SECONDS):
            for change in demo.window_changes[followed:]:
                print(f"demo: the window length changed from {change['was']:g} s to {change['window_seconds']:g} s; "
                      "the traffic follows it", file=sys.stderr, flush=True)  # fmt: skip
                followed += 1
            active = ", ".join(str(f) for f in demo.faults)
            print(f"demo: {demo.events:,} events, {demo.events_per_second:,.0f}/s"
                  + (f"; faults: {active}" if active else ""), file=sys.stderr, flush=True)  # fmt: skip
    except KeyboardInterrupt:
        print("demo: stopping", file=sys.stderr, flush=True)
    finally:
        demo.stop()
        r.close()
    if demo.error is not None:
        raise CommandError(f"demo traffic stopped: {demo.error}")
    if demo.stop_pending:  # (the recording thread dies with this process)
        print("demo: Redis is unreachable: the stop is not recorded, so its silence may open a gap incident",
              file=sys.stderr, flush=True)  # fmt: skip
    return {**demo.summary(), "backfill": history} if history else demo.summary()


def _backfill(r: Any, args: argparse.Namespace) -> dict[str, Any]:
    from anomalydesk.ingest.demo import run_fast

    print(f"demo: backfilling {args.backfill:g} s of history", file=sys.stderr, flush=True)
    return run_fast(r, duration=args.backfill, rate=args.rate, services=args.services, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    """Run the demo (live or --fast) and print its summary."""
    from anomalydesk.ingest.demo import check_options
    from anomalydesk.ingest.demo_model import check_fault
    from anomalydesk.ingest.demo_services import service_names

    try:
        check_options(args.rate, args.services, args.duration)
        if args.backfill is not None and args.fast:
            raise ValueError("--backfill is for live mode; --fast alone writes history (its --duration)")
        if args.backfill is not None:
            check_options(args.rate, args.services, args.backfill)
        names = service_names(args.services)
        duration = args.duration or (config.DEMO_FAST_DEFAULT_SECONDS if args.fast else None)
        for spec in args.inject:
            check_fault(spec.kind, spec.service, names)
            if duration is not None and spec.offset >= duration:
                raise ValueError(f"--inject {spec.kind}@{spec.offset:g}: starts after the demo ends "
                                 f"(--duration {duration:g} s)")  # fmt: skip
    except ValueError as err:
        raise CommandError(str(err)) from None
    try:
        summary = _fast(args) if args.fast else _live(args)
    except ValueError as err:
        raise CommandError(str(err)) from None
    text = summary.get("summary") or (f"{summary['events']:,} events in {summary['duration_s']:g} s "
                                      f"({summary['events_per_s']} events/s)")  # fmt: skip
    if summary.get("backfill"):
        text = f"backfill: {summary['backfill']['summary']}\nlive: {text}"
    if summary.get("late"):
        text += "; late events were for windows already sealed (run on data older than the existing history?)"
    from anomalydesk.detect.incident_model import local_time

    for fault in summary["faults"]:  # in the operator's time, as every other text output (--json: epoch seconds)
        text += (f"\n  fault {fault['kind']} on {fault['service']}: {local_time(fault['start'])} – "
                 f"{local_time(fault['end'])}")
    emit(args, summary, text)
    return 0
