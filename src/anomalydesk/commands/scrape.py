"""`anomalydesk scrape`: read a Prometheus /metrics endpoint into AnomalyDesk (docs/integrations.md)."""

from __future__ import annotations

import argparse
import sys
import threading

from anomalydesk import config
from anomalydesk.cli import CommandError


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the `scrape` parser."""
    p = subparsers.add_parser(
        "scrape", parents=[parent], help="scrape a Prometheus /metrics endpoint",
        description="Scrape a Prometheus text endpoint every --interval seconds: request counters become "
                    "per-window rates (resets handled), duration histograms latency quantiles.",
    )
    p.add_argument("--target", required=True, metavar="URL", help="the /metrics URL, e.g. http://127.0.0.1:8000/metrics")
    p.add_argument("--interval", type=float, default=config.SCRAPE_DEFAULT_INTERVAL_SECONDS, metavar="S",
                   help=f"seconds between scrapes (default {config.SCRAPE_DEFAULT_INTERVAL_SECONDS:g})")
    p.add_argument("--map", metavar="FILE", help="metric mapping file (TOML or JSON; docs/integrations.md)")
    p.add_argument("--count", type=int, default=0, metavar="N",
                   help="stop after N scrapes (default 0: until interrupted; an extension for scripts)")


def run(args: argparse.Namespace) -> int:
    """Scrape until interrupted (or --count scrapes); one line (or JSON object) per scrape."""
    from anomalydesk.commands._common import client, emit
    from anomalydesk.ingest.metric_map import MapError, load_map
    from anomalydesk.ingest.scrape import ScrapeError, Scraper, ScrapeReport
    from anomalydesk.store.admin import read_settings, setup

    if args.interval <= 0:
        raise CommandError(f"--interval must be a positive number of seconds, got {args.interval:g}")
    if args.count < 0:
        raise CommandError("--count must be >= 0")
    if not args.target.startswith(("http://", "https://")):
        raise CommandError(f"--target must be an http(s) URL, got {args.target!r}")
    try:
        mapping = load_map(args.map)
    except MapError as err:
        raise CommandError(str(err)) from None
    r = client(args)
    if not read_settings(r).configured:
        setup(r, config.SketchSettings())
    scraper = Scraper(r, args.target, mapping)
    stop = threading.Event()
    done = {"n": 0, "failed": 0}

    def report(result: ScrapeReport | ScrapeError) -> None:
        done["n"] += 1
        if isinstance(result, ScrapeError):
            done["failed"] += 1
            emit(args, {"error": str(result)}, f"scrape failed: {result}")
        elif result.elapsed is None:
            emit(args, result.as_dict(), f"baseline taken from {args.target} (rates start with the next scrape)")
        else:
            rates = ", ".join(f"{s}: {n} requests/window" for s, n in result.requests.items()) or "no traffic"
            extra = f"; {sum(result.unknown.values())} samples of unmapped metrics" if result.unknown else ""
            emit(args, result.as_dict(), f"{rates} ({result.resets} resets{extra})")
        sys.stdout.flush()
        if args.count and done["n"] >= args.count:
            stop.set()

    try:
        scraper.run(args.interval, stop, report)
    finally:
        r.close()
    return 1 if args.count and done["failed"] == done["n"] else 0
