"""Helpers every subcommand uses: output in text or JSON, the Redis client from the global options."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import redis


def emit(args: argparse.Namespace, data: Any, text: str | None = None) -> None:
    """Print `data` as JSON with --json, else `text` (or a readable rendering of data)."""
    if getattr(args, "json", False):
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())
        sys.stdout.write("\n")
    else:
        print(text if text is not None else _render(data))


def _render(data: Any, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(data, dict):
        lines = []
        for key, value in data.items():
            if isinstance(value, dict | list) and value:
                lines.append(f"{pad}{key}:")
                lines.append(_render(value, indent + 1))
            else:
                lines.append(f"{pad}{key}: {value}")
        return "\n".join(lines)
    if isinstance(data, list):
        return "\n".join(f"{pad}- {item}" for item in data)
    return f"{pad}{data}"


def client(args: argparse.Namespace) -> redis.Redis:
    """The Redis client for the global --redis option (else $ANOMALYDESK_REDIS_URL, else embedded), pinged."""
    from anomalydesk.cli import CommandError
    from anomalydesk.store.connection import ConnectionFailed, connect
    from anomalydesk.store.embedded import EmbeddedServerError
    from anomalydesk.store.locate import resolve_url

    try:
        return connect(resolve_url(getattr(args, "redis", None)))
    except (ConnectionFailed, EmbeddedServerError) as err:
        raise CommandError(str(err)) from err


def require_known_service(name: str, known: Collection[str]) -> None:
    """Refuse a service named on the command line that the server does not know (exit 1), naming the
    known ones: one wording for `query`, `models` and `incidents list --service`."""
    from anomalydesk.cli import CommandError

    if name not in known:
        raise CommandError(f"unknown service {name!r} (known: {', '.join(sorted(known)) or 'none yet'})", code=1)


def lower_priority() -> None:
    """A `--worker` (the desktop app's training or detector child) yields the CPU to the app that started it."""
    from anomalydesk import config

    try:
        if hasattr(os, "nice"):
            os.nice(config.WORKER_NICENESS)
        else:  # Windows
            import psutil

            psutil.Process().nice(psutil.BELOW_NORMAL_PRIORITY_CLASS)
    except (OSError, ImportError):
        pass  # not allowed or not available: run at the normal priority
