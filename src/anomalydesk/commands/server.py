"""`anomalydesk server`: run the embedded Redis server (foreground, --detach, --stop, --status)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from anomalydesk.cli import CommandError
from anomalydesk.commands._common import emit


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the `server` parser."""
    p = subparsers.add_parser(
        "server", parents=[parent], help="run the embedded Redis server",
        description="Run AnomalyDesk's private redis-server (loopback, random password, AOF) in the "
        "foreground until Ctrl+C, or manage the background one. Other commands use it whenever no "
        "--redis URL or $ANOMALYDESK_REDIS_URL is set.",
    )  # fmt: skip
    p.add_argument("--port", type=_port, metavar="P", help="TCP port on 127.0.0.1 (default: a free one)")
    p.add_argument("--dir", type=Path, metavar="D", help="data directory (default: <user data dir>/redis)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--detach", action="store_true", help="start it in the background and return")
    mode.add_argument("--stop", action="store_true", help="stop the running embedded server")
    mode.add_argument("--status", action="store_true",
                      help="say whether it runs (exit status 0) or not (exit status 1)")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, got {port}")
    return port


def _describe(server: Any) -> dict[str, Any]:
    from anomalydesk.store import embedded

    return {
        "url": server.public_url,
        "pid": server.pid,
        "port": server.port,
        "directory": server.directory,
        "log": str(server.log_file),
        "info_file": str(embedded.info_path()),
    }


def _text(info: dict[str, Any], headline: str) -> str:
    return (
        f"{headline} at {info['url']} (pid {info['pid']})\n"
        f"  URL with password: {info['info_file']} (readable by you only)\n"
        f"  data: {info['directory']}\n  log:  {info['log']}"
    )


def run(args: argparse.Namespace) -> int:
    """Start, stop or describe the embedded server."""
    from anomalydesk.store import embedded

    if (args.stop or args.status) and (args.port or args.dir):
        raise CommandError("--port and --dir only apply when starting the server")
    try:
        if args.status:
            server = embedded.running()
            info = {"running": server is not None, **(_describe(server) if server else {})}
            emit(args, info, _text(info, "the embedded server runs") if server else "no embedded server runs")
            return 0 if server else 1
        if args.stop:
            stopped = embedded.stop()
            emit(args, {"stopped": stopped},
                 "stopped the embedded server" if stopped else "no embedded server was running")  # fmt: skip
            return 0
        if args.detach:
            server, started = embedded.start(args.port, args.dir)
            info = {"started": started, **_describe(server)}
            if not started and args.port and server.port != args.port:
                raise CommandError(f"an embedded server already runs on port {server.port}; stop it first")
            emit(args, info, _text(info, "started the embedded server" if started else "already running"))
            return 0

        def ready(server: embedded.EmbeddedServer) -> None:
            info = _describe(server)
            emit(args, info, _text(info, "the embedded server runs") + "\nCtrl+C stops it")
            sys.stdout.flush()

        status = embedded.serve_foreground(args.port, args.dir, on_ready=ready)
        print("the embedded server has stopped", file=sys.stderr)
        return 0 if status == 0 else 1
    except embedded.EmbeddedServerError as err:
        raise CommandError(str(err)) from err
