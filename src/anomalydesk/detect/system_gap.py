"""A gap is one thing, not one incident per service: windows in which no service sent anything.

When every live service's window is silent (no event at all: sealing made it up because nothing
arrived — the producers, the network or the collector are down, or nothing runs yet), the window
says nothing about any one service. The detector then scores none of them, keeps them out of each
service's scoring context (the next fault is judged against normal windows), and raises one
incident of the pseudo-service `SYSTEM` ("(system)", not a valid service name, so it cannot clash),
which resolves with the first window in which any service has traffic again (docs/alerts.md).
Services whose traffic stopped on purpose (a demo's end, `store.traffic_stops`) take no part: their
own silent windows are no gap, and their silence does not make another service's one.

`is_system_silent` reads the other services' same window, `system_incident` the incident that concerns
a window; `gap_plan` is pure: given that incident (or None) and one service's window, the incident
writes and alerts.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace

import redis

from anomalydesk import config
from anomalydesk.detect.incident_model import Alert, Incident, Mark, Severity, rfc3339
from anomalydesk.fingerprint import Fingerprint
from anomalydesk.store.keys import Keys

SYSTEM = "(system)"
_ID_PREFIX = f"{SYSTEM}:g"


GAP_SCORE = float(config.SEVERITY_WARNING)


def is_system_silent(r: redis.Redis, keys: Keys, fp: Fingerprint, services: list[str], entry_id: str,
                     stopped: Collection[str] = ()) -> bool:  # fmt: skip
    """Whether every other service in `services` had no event in `fp`'s window either (fp is silent).

    Another service's window counts as silent when it was sealed silent, or is not sealed yet and
    holds no data (silent windows are sealed only by the ticker, maybe a moment later). The services
    in `stopped` (their traffic stopped on purpose: `store.traffic_stops`) are silent by choice: their
    silence is no evidence of a gap, so at least one other service must be silent too.
    """
    others = [s for s in services if s != fp.service]
    if not fp.silent:
        return False
    if not [s for s in others if s not in stopped]:
        return False  # one service alone: its silence is its own (an incident of that service)
    pipe = r.pipeline(transaction=False)
    for service in others:
        pipe.xrange(keys.fingerprints(service), min=entry_id, max=entry_id)
        pipe.zscore(keys.open_windows(service), fp.window)
    replies = pipe.execute()
    for entries, opened in zip(replies[0::2], replies[1::2], strict=True):
        if entries:
            fields = entries[0][1]
            if fields.get(b"silent", fields.get("silent")) not in (b"1", "1"):
                return False
        elif opened is not None:
            return False  # it holds data for that window, not sealed yet
    return True


def system_incident(r: redis.Redis, keys: Keys, window: int, gap: bool) -> Incident | None:
    """The open system incident; for a gap window without one, the closed one that covers it (another
    service's windows came first and saw traffic return), so it is not opened twice."""
    ids = [i for i in (x.decode() if isinstance(x, bytes) else x for x in r.smembers(keys.incidents_open))
           if i.startswith(_ID_PREFIX)]  # fmt: skip
    for raw in r.hmget(keys.incidents, ids) if ids else []:
        if raw:
            record = Incident.from_json(raw)
            if record.is_open:
                return record
    if gap:
        for _field, raw in r.hscan_iter(keys.incidents, match=f"{_ID_PREFIX}*", count=1000):
            record = Incident.from_json(raw)
            end = record.resolved_window if record.resolved_window is not None else record.last_window
            if record.first_window <= window <= end:
                return record
    return None


def gap_plan(incident: Incident | None, fp: Fingerprint, gap: bool, services: int,
             silenced: bool) -> tuple[list[tuple[Incident, int]], list[Alert]]:  # fmt: skip
    """(incident writes with the rev read, alerts) for one service's window `fp`.

    A gap window opens the system incident (or extends it once per window); a window with traffic after
    its last gap window resolves it (services are handled in any order: one may still be on windows
    before the gap while another is past it). New records are stored at rev 1, so two detectors
    opening it at once conflict and one of them extends instead of alerting twice.
    """
    if incident is not None and not incident.is_open:
        return [], []  # a closed one covers the window: handled when another service's window came first
    if gap:
        if incident is None:
            reasons = [{"feature": "requests", "actual": 0, "expected": None,
                        "text": f"no service sent anything ({services} services silent)"}]  # fmt: skip
            # not scored: its score is its severity's cut-off (it read 100, past critical, beside "warning")
            record = replace(Incident.open(SYSTEM, "gap", fp.window, fp.start), severity=Severity.WARNING,
                             score=GAP_SCORE, reasons=reasons, windows=1, rev=1, silenced=silenced,
                             services=services)  # fmt: skip
            alert = Alert.about(record, kind="new", window=fp.window, window_start=fp.start, score=GAP_SCORE,
                                severity=Severity.WARNING, reasons=reasons, model_version=None, silenced=silenced,
                                message=f"no traffic from any service since {rfc3339(fp.start)}: a gap in the "
                                        "data (producers, network or collector down?), not scored")  # fmt: skip
            return [(record, 0)], [alert]
        if fp.window > incident.last_window and _same_length(incident, fp):
            grown = incident.revised(last_window=fp.window, windows=incident.windows + 1)
            return [(grown, incident.rev)], []
        return [], []  # (a gap window of a new length is not counted: its number is not the gap's kind)
    if incident is None or fp.silent or fp.start <= _last_gap_start(incident):
        return [], []  # traffic in a window before the gap's end: a service still catching up, not a return
    closed = incident.revised(status="resolved", resolved_window=fp.window,
                              resolved=Mark("detector", rfc3339(fp.start), "traffic returned"))  # fmt: skip
    alert = Alert.about(closed, kind="resolved", window=fp.window, window_start=fp.start, score=0.0,
                        severity=Severity.INFO, reasons=[], model_version=None, silenced=silenced,
                        message=f"traffic is back ({fp.service} sent {_sent(fp)}): "
                                f"the gap of {closed.windows} window(s) is over")  # fmt: skip
    return [(closed, incident.rev)], [alert]


def _gap_length(incident: Incident) -> float | None:
    """The window length the gap counts: its first window's start over its number (a window starts at
    number × length); None for a gap at window 0."""
    return incident.start_epoch / incident.first_window if incident.first_window > 0 else None


def _same_length(incident: Incident, fp: Fingerprint) -> bool:
    """Whether `fp` counts windows of the gap's length."""
    length = _gap_length(incident)
    if length is None or fp.window <= 0:
        return True
    return abs(length - fp.start / fp.window) < 1e-6


def _last_gap_start(incident: Incident) -> float:
    """When the gap's last window began. By time, not by window number: after a window-length change
    (`setup --window … --force`) the new windows' numbers are not comparable with the gap's, and traffic
    in them did not end the gap (it stayed open for good at 5 s → 10 s)."""
    length = _gap_length(incident)
    return float(incident.last_window) if length is None else incident.last_window * length


def _sent(fp: Fingerprint) -> str:
    """What ended the gap, in words: requests, else business values ("business sent 0 requests" read as
    if nothing had come)."""
    requests = fp.get("requests")
    if requests > 0 or not fp.kpis:
        return f"{requests:.0f} requests"
    return f"values of {', '.join(sorted(fp.kpis))}"
