"""`anomalydesk notify` (an extension of DESIGN.md's command set): deliver alerts to webhooks."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from anomalydesk.cli import CommandError


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the `notify` parser."""
    p = subparsers.add_parser(
        "notify", parents=[parent], help="send alerts to webhooks (generic JSON, Slack)",
        description="Read the alert stream with one consumer group per route and POST each alert to the "
                    "routes it matches, with retries and a dead-letter stream (docs/integrations.md).",
    )
    p.add_argument("--routes", required=True, metavar="FILE", help="routes file (TOML or JSON)")
    p.add_argument("--from-start", action="store_true",
                   help="a route seen for the first time also gets the alerts already logged (default: new only)")
    p.add_argument("--check", action="store_true",
                   help="validate the routes file, print the routes and their delivery status, and exit")


def run(args: argparse.Namespace) -> int:
    """Deliver until interrupted (or, with --check, print the routes and exit)."""
    from anomalydesk.commands._common import client, emit
    from anomalydesk.detect.webhooks import Notifier, RoutesError, load_routes, route_status
    from anomalydesk.store.connection import connect_async

    try:
        routes = load_routes(args.routes)
    except RoutesError as err:
        raise CommandError(str(err)) from None
    r = client(args)
    try:
        status = route_status(r, routes)
    finally:
        r.close()
    if args.check:
        lines = [f"{s['name']}: {s['format']} → {s['url']} (severities {','.join(s['severities'])}; services "
                 f"{','.join(s['services'])}; delivered {s['delivered']}, pending {s['pending']}, dead {s['dead']})"
                 for s in status]
        emit(args, {"routes": status}, "\n".join(lines))
        return 0

    async def main() -> None:
        from anomalydesk.store.locate import resolve_url

        ar = connect_async(resolve_url(getattr(args, "redis", None)))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"delivering alerts to {len(routes)} route(s) (Ctrl+C to stop)", file=sys.stderr, flush=True)
        try:
            await Notifier(ar, routes, start_id="0" if args.from_start else "$").run(stop)
        finally:
            await ar.aclose()

    asyncio.run(main())
    return 0
