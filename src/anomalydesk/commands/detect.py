"""`anomalydesk detect`: run a detector (consumer group member) until interrupted."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING

from anomalydesk.cli import CommandError
from anomalydesk.commands._common import client, lower_priority

if TYPE_CHECKING:
    from anomalydesk.detect.incident_model import Alert

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the `detect` parser."""
    p = subparsers.add_parser(
        "detect", parents=[parent], help="score fingerprints, open incidents, send alerts (runs until stopped)",
        description="Joins the detectors' consumer group on every service's fingerprint stream, seals "
        "windows periodically, scores each fingerprint with the service's active model and writes "
        "incidents and alerts. Several detectors share the services; stop with Ctrl-C or SIGTERM.",
    )  # fmt: skip
    p.add_argument("--retrain-every", type=float, metavar="S",
                   help="retrain each service every S seconds (kept only if no worse on held-back windows)")
    p.add_argument("--name", metavar="NAME", help="consumer name (default: host-pid-random; must be unique)")
    p.add_argument("--no-seal", action="store_true", help="do not drive the periodic seal (another process does)")
    p.add_argument("--service-lease-ms", type=int, metavar="MS", help="how long a service stays owned "
                   "by a silent detector before another takes it over")  # fmt: skip
    p.add_argument("--print-alerts", action="store_true", help="print each alert as a JSON line on stdout")
    p.add_argument("--worker", action="store_true",
                   help="run as the desktop app's detector (a child process it owns): work only while no other "
                   "detector holds the lease, and stop when stdin closes (the app stopped it, quit or died)")


def run(args: argparse.Namespace) -> int:
    """Run the detector loop until SIGINT/SIGTERM."""
    import orjson

    from anomalydesk.detect.detector import Detector

    if args.retrain_every is not None and args.retrain_every <= 0:
        raise CommandError(f"--retrain-every must be positive, got {args.retrain_every}")
    stop = threading.Event()

    def on_alert(alert: Alert) -> None:
        sys.stdout.write(orjson.dumps(alert.to_json()).decode() + "\n")
        sys.stdout.flush()

    extra = {"service_lease_ms": args.service_lease_ms} if args.service_lease_ms else {}
    r = client(args)
    detector = Detector(r, name=args.name, seal=not args.no_seal, retrain_every=args.retrain_every,
                        respect_lease=args.worker,
                        on_alert=on_alert if (args.print_alerts or args.json) else None, **extra)  # fmt: skip
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if args.worker:
        lower_priority()

        def until_stdin_closes() -> None:
            sys.stdin.buffer.read()  # returns at EOF: the parent closed the pipe, or exited
            stop.set()

        threading.Thread(target=until_stdin_closes, name="stdin-watch", daemon=True).start()
    print(f"detector {detector.name}: running (Ctrl-C to stop)", file=sys.stderr, flush=True)
    worker = " (the app's worker)" if args.worker else ""
    logging.getLogger(__name__).info("detector %s: running%s", detector.name, worker)
    try:
        detector.run(stop)
    finally:
        r.close()
    return 0
