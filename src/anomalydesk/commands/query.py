"""`anomalydesk query`: ask the per-service sketches (endpoint and status counts, interactions, Top-K)."""

from __future__ import annotations

import argparse
from typing import Any

from anomalydesk.cli import CommandError
from anomalydesk.commands._common import client, emit, require_known_service


def _status_code(text: str) -> int:
    try:
        code = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a status code: {text!r}") from None
    if not 100 <= code <= 599:
        raise argparse.ArgumentTypeError(f"status codes are 100-599, got {code}")
    return code


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the `query` parser and its four questions."""
    p = subparsers.add_parser(
        "query", parents=[parent], help="ask the sketches: endpoint/status counts, interactions, top endpoints",
        description="Counts come from Count-Min Sketches (never below the true count; the error bound is "
        "set by `setup`), interactions from the filter (no false negatives), heavy hitters from Top-K. "
        "Without --service, every known service is asked.",
    )  # fmt: skip
    what = p.add_subparsers(dest="what", metavar="QUESTION", required=True)
    q = what.add_parser("endpoint", parents=[parent], help="estimated request counts of endpoints")
    q.add_argument("names", nargs="+", metavar="NAME", help="METHOD:/path (normalised like events are)")
    q.add_argument("--service", metavar="S", help="only this service")
    q = what.add_parser("status", parents=[parent], help="estimated counts of HTTP status codes")
    q.add_argument("codes", nargs="+", type=_status_code, metavar="CODE")
    q.add_argument("--service", metavar="S", help="only this service")
    q = what.add_parser("interaction", parents=[parent], help="has SERVICE ever called ENDPOINT?")
    q.add_argument("pairs", nargs="+", metavar="SERVICE:ENDPOINT", help="e.g. payments:POST:/charge")
    q = what.add_parser("topk", parents=[parent], help="the heaviest endpoints with their counts")
    q.add_argument("--service", metavar="S", help="only this service")


def _valid(check: Any, *check_args: str) -> str:
    """`check(*check_args)` (an events.py validator) with its EventError turned into a CommandError."""
    from anomalydesk.events import EventError

    try:
        return check(*check_args)
    except EventError as err:
        raise CommandError(str(err)) from None


def _services(r: Any, wanted: str | None) -> list[str]:
    from anomalydesk.events import validate_service
    from anomalydesk.store import admin

    known = admin.service_names(r)
    if wanted is None:
        return known
    _valid(validate_service, wanted, "--service")
    require_known_service(wanted, known)
    return [wanted]


def _pair(text: str) -> tuple[str, str]:
    from anomalydesk.events import normalize_endpoint, validate_service

    service, sep, endpoint = text.partition(":")
    if not sep or not endpoint:
        raise CommandError(f"expected SERVICE:METHOD:/path, got {text!r}")
    return _valid(validate_service, service, "SERVICE"), _valid(normalize_endpoint, endpoint)


def ask(r: Any, args: argparse.Namespace) -> tuple[Any, str]:
    """(JSON-ready answer, text) for the question in `args`."""
    from anomalydesk.events import normalize_endpoint
    from anomalydesk.store import sketches

    if args.what == "interaction":
        pairs = [_pair(text) for text in args.pairs]
        rows = []
        for service, endpoint in pairs:
            try:
                seen = bool(sketches.has_interaction(r, service, endpoint))
            except sketches.NoSketches as err:
                raise CommandError(str(err), code=1) from None
            rows.append({"service": service, "endpoint": endpoint, "seen": seen})
        text = "\n".join(f"{row['service']} → {row['endpoint']}: {'seen' if row['seen'] else 'never seen'}"
                         for row in rows)  # fmt: skip
        return rows, text
    if args.what == "endpoint":
        names = list(dict.fromkeys(_valid(normalize_endpoint, n) for n in args.names))
    services = _services(r, args.service)
    answer: dict[str, Any] = {}
    lines: list[str] = []
    for service in services:
        lines.append(f"{service}:")
        try:
            answer[service] = _ask_one(r, args, service, names if args.what == "endpoint" else [])
        except sketches.NoSketches as err:
            if args.service:  # asked about this one service: say why there is no answer
                raise CommandError(str(err), code=1) from None
            answer[service] = None  # retired or reset and silent since: nothing to count
            lines.append("  (no sketches: nothing sent since setup or reset)")
            continue
        if args.what == "topk":
            lines += [f"  {row['count']:>10}  {row['endpoint']}" for row in answer[service]] or ["  (no traffic yet)"]
        else:
            lines += [f"  {count:>10}  {key}" for key, count in answer[service].items()]
    return answer, "\n".join(lines) or "no services yet"


def _ask_one(r: Any, args: argparse.Namespace, service: str, names: list[str]) -> Any:
    from anomalydesk.store import sketches

    if args.what == "endpoint":
        return {str(k): int(v) for k, v in sketches.endpoint_counts(r, service, names).items()}
    if args.what == "status":
        return {str(k): int(v) for k, v in sketches.status_counts(r, service, args.codes).items()}
    return [{"endpoint": str(name), "count": int(count)} for name, count in sketches.topk(r, service)]


def run(args: argparse.Namespace) -> int:
    """Answer one question about the sketches."""
    r = client(args)
    try:
        answer, text = ask(r, args)
    finally:
        r.close()
    emit(args, answer, text)
    return 0
