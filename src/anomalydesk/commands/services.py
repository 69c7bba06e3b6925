"""`anomalydesk services [list | retire NAME]`: the services the server knows, and retiring one."""

from __future__ import annotations

import argparse
from typing import Any

from anomalydesk.cli import CommandError
from anomalydesk.commands._common import client, emit


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the `services` parser."""
    p = subparsers.add_parser(
        "services", parents=[parent], help="list services, or retire one that no longer exists",
        description="`list` (the default) shows every known service with its counters; `retire NAME` "
        "stops sealing and alerting for a service that is gone (it comes back if it sends again).",
    )  # fmt: skip
    p.add_argument("action", nargs="?", choices=("list", "retire"), default="list", help="default: list")
    p.add_argument("name", nargs="?", metavar="NAME", help="the service to retire")


def render(services: list[dict[str, Any]]) -> str:
    """A table of services and their counters."""
    if not services:
        return "no services yet"
    width = max(len("service"), *(len(s["name"]) for s in services))
    lines = [f"{'service':<{width}}  {'events':>10}  {'windows':>8}  {'fingerprints':>12}  state"]
    for s in services:
        state = "retired" if s.get("retired") else "active"
        lines.append(f"{s['name']:<{width}}  {s.get('events', 0):>10}  {s.get('windows_sealed', 0):>8}  "
                     f"{s.get('fingerprints', 0):>12}  {state}")  # fmt: skip
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """List services or retire one."""
    from anomalydesk.events import EventError, validate_service
    from anomalydesk.store import admin

    if args.action == "list" and args.name:
        raise CommandError(f"`services list` takes no name (did you mean `services retire {args.name}`?)")
    if args.action == "retire":
        if not args.name:
            raise CommandError("`services retire` needs the NAME of the service")
        try:
            validate_service(args.name, "NAME")
        except EventError as err:
            raise CommandError(str(err)) from None
    r = client(args)
    try:
        if args.action == "list":
            services = admin.list_services(r)
            emit(args, services, render(services))
            return 0
        if admin.retire_service(r, args.name) is False:
            raise CommandError(f"no service named {args.name!r} is known", code=1)
    finally:
        r.close()
    emit(args, {"retired": args.name}, f"retired {args.name}: no more sealing or alerts until it sends again")
    return 0
