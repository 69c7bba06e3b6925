"""`anomalydesk incidents [list | ack ID | snooze ID DURATION | resolve ID | false-positive ID]`.

Extensions (documented in docs/alerts.md): `incidents silence PATTERN --until WHEN --reason TEXT`,
`incidents silences`, `incidents unsilence SILENCE_ID`, `incidents accept ID` (a level shift as the
new normal).
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from anomalydesk.cli import CommandError
from anomalydesk.commands._common import client, emit, require_known_service

if TYPE_CHECKING:
    from anomalydesk.detect.incident_model import Incident

ACTIONS = ("list", "ack", "snooze", "resolve", "false-positive", "accept", "silence", "silences", "unsilence")


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the `incidents` parser."""
    p = subparsers.add_parser(
        "incidents", parents=[parent], help="list incidents; ack, snooze, resolve, mark false positive; silences",
        description="`list` (default; --all includes resolved ones), `ack ID`, `snooze ID DURATION` "
        "(15m, 1h, 2d; at most 30d; ack and snooze only an open incident), `resolve ID`, "
        "`false-positive ID` (its windows go back into the next training), "
        "`accept ID` (a level-shift incident: the new level is normal from now on and feeds the next training). "
        "Silences mute notifications for services matching a glob pattern: `silence PATTERN --until "
        "WHEN --reason TEXT` (WHEN: a duration from now or an RFC 3339 time), `silences`, "
        "`unsilence SILENCE_ID`.",
    )  # fmt: skip
    p.add_argument("action", nargs="?", choices=ACTIONS, default="list")
    p.add_argument("target", nargs="?", metavar="ID|PATTERN")
    p.add_argument("duration", nargs="?", metavar="DURATION")
    p.add_argument("--all", action="store_true", help="list: include resolved incidents")
    p.add_argument("--service", metavar="S", help="list: only this service")
    p.add_argument("--by", metavar="WHO", help="who acts (default: the login name)")
    p.add_argument("--until", metavar="WHEN", help="silence: end, as a duration (2h) or RFC 3339 time")
    p.add_argument("--start", metavar="WHEN", help="silence: start (default now), duration or RFC 3339 time")
    p.add_argument("--reason", metavar="TEXT", help="silence: why (required)")


def _when(text: str, flag: str) -> float:
    from anomalydesk.detect.incidents import parse_duration

    try:
        return time.time() + parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"{flag} {text!r}: expected a duration (90s, 15m, 2h, 1d) or an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise CommandError(f"{flag} {text!r}: give the time zone (e.g. 2026-01-31T22:00:00Z)")
    return moment.timestamp()


# `incidents list`'s columns: at least these widths (the usual output keeps its shape), wider when a
# cell is ("snoozed until 2026-01-31 23:00:00 CEST", "accepted as new normal", a long service name)
_MIN_WIDTHS = (28, 14, 8, 5, 0, 8)


def _cells(i: Incident, now: float) -> tuple[str, ...]:
    """One incident's cells: id, state, severity, score, start, windows, then its first reason and marks."""
    from anomalydesk.detect.incident_model import local_time, score_text

    marks = i.marks_text(now)  # "[acked, silenced]", as the app's state column and details header show them
    first = i.reasons[0].get("text", "") if i.reasons else ""
    return (i.id, i.state_text(now), str(i.severity), score_text(i.score), local_time(i.start_epoch),
            f"{i.windows} win", f"{first}{'  ' + marks if marks else ''}")  # fmt: skip


def _table(incidents: list[Incident], now: float) -> list[str]:
    """The lines of `incidents list`: the state in the app's words (one source: `Incident.state_text`),
    times in the local zone with its name (`local_time`, as the app shows them), each column as wide as
    its widest cell so every row lines up whatever its state (a snooze's end made the state wider than
    its column and pushed the rest of that row out of line)."""
    rows = [_cells(i, now) for i in incidents]
    widths = [max([len(row[c]) for row in rows] + [least]) for c, least in enumerate(_MIN_WIDTHS)]
    aligned = ("<", "<", "<", ">", "<", ">")  # the score and the window count right-aligned
    lines = []
    for row in rows:
        id_, state, severity, score, start, windows = (f"{cell:{a}{w}}" for cell, a, w
                                                       in zip(row[:6], aligned, widths, strict=True))  # fmt: skip
        lines.append(f"{id_} {state} {severity} {score}  {start}  {windows}  {row[6]}".rstrip())
    return lines


def run(args: argparse.Namespace) -> int:
    """Dispatch one incidents action."""
    from anomalydesk.detect import incidents as inc
    from anomalydesk.detect.incident_model import local_time

    needs_target = args.action in ("ack", "snooze", "resolve", "false-positive", "accept", "silence", "unsilence")
    if needs_target and not args.target:
        what = "PATTERN" if args.action == "silence" else "ID"
        raise CommandError(f"`incidents {args.action}` needs the {what}")
    r = client(args)
    try:
        if args.action == "list":
            if args.service is not None:
                require_known_service(args.service, _known_services(r, inc))
            found = inc.list_incidents(r, open_only=not args.all, service=args.service)
            none = "no open incidents" if not args.all else "no incidents"
            now = time.time()
            text = "\n".join(_table(found, now))
            emit(args, {"incidents": [i.to_json() for i in found]}, text or none)
            return 0
        if args.action == "silences":
            found = [s.as_dict() for s in inc.list_silences(r)]
            text = "\n".join(f"{s['id']}  {s['pattern']:<20} {local_time(s['start_epoch'])} → "
                             f"{local_time(s['end_epoch'])}  {s['reason']} ({s['by']})" for s in found)  # fmt: skip
            emit(args, {"silences": found}, text or "no silences")
            return 0
        if args.action == "silence":
            if not args.until or not args.reason:
                raise CommandError("`incidents silence PATTERN` needs --until WHEN and --reason TEXT")
            start = _when(args.start, "--start") if args.start else None
            try:
                silence = inc.add_silence(r, args.target, _when(args.until, "--until"), args.reason,
                                          start=start, who=args.by)  # fmt: skip
            except ValueError as err:
                raise CommandError(str(err)) from None
            data = silence.as_dict()
            emit(args, data, f"silence {data['id']}: {data['pattern']} muted until {local_time(silence.end)} "
                             f"({data['reason']})")  # fmt: skip
            return 0
        return _act(args, r, inc)
    except inc.IncidentError as err:
        raise CommandError(str(err), code=1) from None
    finally:
        r.close()


def _known_services(r: Any, inc: Any) -> set[str]:
    """What `list --service` may name: every known service (retired ones too), the gap incidents'
    pseudo-service, and any service that still has an incident on record."""
    from anomalydesk.detect.system_gap import SYSTEM
    from anomalydesk.store import admin

    return {*admin.service_names(r), SYSTEM, *(i.service for i in inc.list_incidents(r))}


def _act(args: argparse.Namespace, r: Any, inc: Any) -> int:
    from anomalydesk.detect.incident_model import IncidentState

    if args.action == "unsilence":
        inc.remove_silence(r, args.target)
        emit(args, {"removed": args.target}, f"silence {args.target} removed")
        return 0
    if args.action == "snooze":
        if not args.duration:
            raise CommandError("`incidents snooze ID DURATION` needs a DURATION (e.g. 15m, 1h, 2d)")
        try:
            seconds = inc.check_snooze(inc.parse_duration(args.duration))
        except ValueError as err:
            raise CommandError(str(err)) from None
        incident = inc.snooze(r, args.target, seconds, args.by)
        text = f"{incident.id} {incident.state_text(time.time())}"
    elif args.action == "ack":
        incident = inc.ack(r, args.target, args.by)
        who = incident.acked.by if incident.acked else args.by
        text = f"{incident.id} {IncidentState.ACKNOWLEDGED.label} by {who}"  # (a snooze may still mute it)
    elif args.action == "resolve":
        incident = inc.resolve(r, args.target, args.by)
        text = f"{incident.id} {incident.state_text(time.time())}"
    elif args.action == "accept":
        incident = inc.accept(r, args.target, args.by)
        who = incident.accepted.by if incident.accepted else args.by
        text = (f"{incident.id} accepted as the new normal by {who}: the detector re-baselines on the next "
                "window and the shift's windows go into the next training")
    else:
        incident = inc.false_positive(r, args.target, args.by)
        effect = ("a gap is not scored: nothing goes back into training" if incident.kind == "gap"
                  else "its windows go back into the next training")  # fmt: skip
        text = f"{incident.id} {incident.state_text(time.time())} ({effect})"
    emit(args, incident.to_json(), text)
    return 0
