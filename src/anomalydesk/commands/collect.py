"""`anomalydesk collect`: the HTTP collector applications send metrics to (docs/collector.md)."""

from __future__ import annotations

import argparse
import sys

from anomalydesk import config
from anomalydesk.cli import CommandError


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the `collect` parser."""
    p = subparsers.add_parser(
        "collect", parents=[parent], help="run the HTTP collector (POST /metrics, /business-metrics)",
        description="Receive metrics over HTTP(S) and write them to Redis. API keys are required when "
                    "listening beyond loopback.",
    )
    p.add_argument("--host", default=config.COLLECTOR_DEFAULT_HOST,
                   help=f"address to listen on (default {config.COLLECTOR_DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=config.COLLECTOR_DEFAULT_PORT,
                   help=f"port (default {config.COLLECTOR_DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help="accept this API key (repeatable; at least "
                        f"{config.COLLECTOR_API_KEY_MIN_LENGTH} characters)")
    p.add_argument("--api-keys-file", metavar="F",
                   help="file with one API key per line; re-read when it changes (delete a line to revoke)")
    p.add_argument("--tls-cert", metavar="F", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", metavar="F", help="private key for --tls-cert (PEM)")
    p.add_argument("--rate-limit", type=float, default=config.COLLECTOR_RATE_PER_KEY, metavar="RPS",
                   help=f"requests per second per key (default {config.COLLECTOR_RATE_PER_KEY:g}; 0: no limit)")
    p.add_argument("--rate-burst", type=float, default=config.COLLECTOR_RATE_BURST, metavar="N",
                   help=f"burst allowance per key (default {config.COLLECTOR_RATE_BURST:g})")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes serving the port (default: the number of cores); rate limits are shared "
                        "by all of them")


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; with --json, print `{"listening": URL}` once ready."""
    from anomalydesk.commands._common import emit
    from anomalydesk.ingest.collector import CollectorSettings, SettingsError
    from anomalydesk.ingest.collector_server import run as run_collector
    from anomalydesk.store.admin import SetupConflict
    from anomalydesk.store.connection import ConnectionFailed
    from anomalydesk.store.gears import GearsError

    if not 0 <= args.port <= 65535:
        raise CommandError(f"--port must be between 0 and 65535, got {args.port}")
    if args.rate_limit < 0 or args.rate_burst < 1:
        raise CommandError("--rate-limit must be ≥ 0 and --rate-burst ≥ 1")
    from anomalydesk.ingest.collector_workers import WorkersFailed, default_workers, run_workers, workers_supported

    workers = default_workers() if args.workers is None else args.workers
    if workers < 1:
        raise CommandError(f"--workers must be at least 1, got {workers}")
    if workers > 1 and not workers_supported():
        raise CommandError(f"--workers {workers} needs fork and descriptor passing, which {sys.platform} "
                           "does not have; use --workers 1")
    settings = CollectorSettings(
        host=args.host, port=args.port, api_keys=list(args.api_key), api_keys_file=args.api_keys_file,
        tls_cert=args.tls_cert, tls_key=args.tls_key, rate_limit=args.rate_limit, rate_burst=args.rate_burst,
    )

    def ready(url: str) -> None:
        if getattr(args, "json", False):
            emit(args, {"listening": url})
            sys.stdout.flush()
        else:
            print(f"collector listening on {url} (Ctrl+C to stop)", file=sys.stderr, flush=True)

    try:
        if workers == 1:
            run_collector(settings, getattr(args, "redis", None), on_ready=ready)
        else:
            run_workers(settings, getattr(args, "redis", None), workers, on_ready=ready)
    except SettingsError as err:
        raise CommandError(str(err)) from None
    except (ConnectionFailed, GearsError, SetupConflict, WorkersFailed) as err:
        raise CommandError(str(err)) from None
    except OSError as err:  # the port is taken, the address is not ours
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from None
    return 0
