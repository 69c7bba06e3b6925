"""`anomalydesk [app] [--demo] [--check SECONDS]`: the desktop app, or its self-check."""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the `app` subcommand."""
    p = subparsers.add_parser("app", parents=[parent], help="open the desktop app (the default command)",
                              description="Open the AnomalyDesk desktop app.")  # fmt: skip
    p.add_argument("--demo", action="store_true",
                   help="start demo traffic (and offer to backfill a day of history so training can start)")
    p.add_argument("--check", type=float, metavar="SECONDS",
                   help="run the real window for up to SECONDS against the configured server, exercise "
                        "every panel, print a JSON report, exit 0 (all ok) or 1; leaves no data behind")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Open the app (or run its check)."""
    from anomalydesk.cli import CommandError

    if args.check is not None:
        if args.check <= 0:
            raise CommandError(f"--check takes a positive number of seconds, got {args.check:g}")
        if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and sys.platform.startswith(
            "linux"
        ):
            os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        from anomalydesk.app.check import main as check_main

        _exit_now(check_main(args.check, getattr(args, "redis", None)))
    from anomalydesk.app.application import main

    _exit_now(main(demo=args.demo, url=getattr(args, "redis", None)))
    return 0


def _exit_now(code: int) -> None:
    """Exit without interpreter finalisation once the app has shut down and saved everything.

    PySide6 6.12 can abort while the garbage collector tears Qt objects down at interpreter exit
    ("bool_dealloc" fatal error), which would turn a clean run into exit status 134.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
