"""The incident model: severities, incidents, alerts and silences as frozen, typed values.

One shape for every layer: the incident flow and the detector build them, `detect.incidents` stores
them, the CLI prints them, webhooks route them and the desktop app shows them. No Redis and no Qt
here. `to_json` / `from_json` write and read exactly the formats of DESIGN.md and docs/alerts.md:
an alert is the JSON published on `ad:alerts` and held in the `alert` field of an `ad:alerts:log`
entry, an incident the JSON record of the incidents hash, a silence the JSON of the silences hash.

Reading is lenient, so records a user's Redis already holds keep loading: a key an older release did
not write takes its documented default, and keys a type does not know (a newer release's additions,
a situation's id) are kept in `extra` and written back after the known ones. Writing leaves out an
optional key that holds nothing (`candidate`, `named`, `snoozed_*`, `services`, `resolved_window`
of an incident; `silenced` of an alert).

Why this module is long: it is one job, the typed shapes of every incident record and their JSON.
Incident, Alert and Silence share the lenient reading (`extra`, documented defaults), the severity
and time helpers their formats use and the state names they check; docs/alerts.md is read against
this one file. Split by type, each format would be read apart from the rules it shares.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from typing import Any

from anomalydesk import config

ALERT_KINDS = ("new", "escalated", "resolved", "rule", "level_shift")  # level_shift: opened, and each re-notification
INCIDENT_KINDS = ("anomaly", "rule", "gap", "level_shift")
ALERT_FIELD = "alert"  # the one field of an alerts-log entry: the alert's JSON
_ID_LETTER = {"rule": "r", "gap": "g", "level_shift": "s"}  # anomaly incidents: "a"


class Severity(StrEnum):
    """info < warning < critical. A member equals its JSON string (`Severity.WARNING == "warning"`)."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0, 1, 2: the position in the one rank table (`SEVERITY_RANK`)."""
        return SEVERITY_RANK[self]

    # ordered by rank, not alphabetically as strings would be ("critical" < "info")
    def __lt__(self, other: str) -> bool:
        return self.rank < Severity(other).rank

    def __le__(self, other: str) -> bool:
        return self.rank <= Severity(other).rank

    def __gt__(self, other: str) -> bool:
        return self.rank > Severity(other).rank

    def __ge__(self, other: str) -> bool:
        return self.rank >= Severity(other).rank


SCORE_DECIMALS = 2  # alerts and stored window scores carry the 0–100 score rounded down to this
SEVERITY_RANK: dict[Severity, int] = {severity: rank for rank, severity in enumerate(Severity)}
SEVERITIES = tuple(s.value for s in Severity)


def severity_of(score: float, warning: float | None = None, critical: float | None = None) -> Severity:
    """info below `warning`, warning below `critical`, critical at and above it.

    The cut-offs default to `config.SEVERITY_WARNING` and `config.SEVERITY_CRITICAL`.
    """
    warning = config.SEVERITY_WARNING if warning is None else warning
    critical = config.SEVERITY_CRITICAL if critical is None else critical
    if score >= critical:
        return Severity.CRITICAL
    return Severity.WARNING if score >= warning else Severity.INFO


def stored_score(score: float) -> float:
    """The score as alerts and stored window scores carry it: rounded *down* to `SCORE_DECIMALS`, so a
    score that never reaches 100 (99.997) is not written as 100.0, nor a 69.997 as the threshold."""
    scale = 10**SCORE_DECIMALS
    # the 1e-9 keeps it idempotent: 72.07 * 100 is 7206.999999999999 in floating point
    return math.floor(float(score) * scale + 1e-9) / scale if math.isfinite(score) else float(score)


def score_text(score: float) -> str:
    """A 0–100 score as an operator reads it: whole points, rounded down, so a score that never reaches 100
    (the calibration's rising tail: 99.99) does not show as 100, and 69.6 (below the threshold, 70) does
    not show as 70."""
    return str(math.floor(score)) if math.isfinite(score) else "–"


def rfc3339(epoch: float) -> str:
    """Epoch seconds as RFC 3339 UTC with a Z suffix (millisecond precision)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def local_time(epoch: float, tz: tzinfo | None = None) -> str:
    """Epoch seconds as the operator reads them, in every view (app and CLI): `2026-01-31 22:00:05 UTC`.

    The local time zone (or `tz`) with its name, to the second; the app's tables and the CLI's text
    output both print times through this one function, so a time reads the same in both.
    """
    moment = datetime.fromtimestamp(epoch, UTC).astimezone(tz)
    return f"{moment:%Y-%m-%d %H:%M:%S} {moment.tzname() or moment.strftime('%z')}"


def parse_time(value: Any) -> float:
    """RFC 3339 / epoch seconds → epoch seconds (0.0 when missing or unreadable)."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 0.0


class IncidentState(StrEnum):
    """Where an incident stands for an operator at a given moment (`Incident.state_at`): the one
    vocabulary of the app's table, its details and the CLI's list. A member equals its key."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    SNOOZED = "snoozed"
    RESOLVED = "resolved"
    FALSE_POSITIVE = "false_positive"
    ACCEPTED = "accepted"  # a level shift accepted as the new normal

    @property
    def label(self) -> str:
        """The word shown for it ("false positive", not the key)."""
        return STATE_LABELS[self]

    @property
    def closed(self) -> bool:
        """Resolved, marked false positive or accepted: nothing left to do."""
        return self in CLOSED_STATES


STATE_LABELS: dict[IncidentState, str] = {
    IncidentState.OPEN: "open", IncidentState.ACKNOWLEDGED: "acknowledged", IncidentState.SNOOZED: "snoozed",
    IncidentState.RESOLVED: "resolved", IncidentState.FALSE_POSITIVE: "false positive",
    IncidentState.ACCEPTED: "accepted as new normal",
}  # fmt: skip
CLOSED_STATES = frozenset({IncidentState.RESOLVED, IncidentState.FALSE_POSITIVE, IncidentState.ACCEPTED})


def _object(raw: Mapping[str, Any] | str | bytes, what: str) -> Mapping[str, Any]:
    data = json.loads(raw) if isinstance(raw, str | bytes | bytearray) else raw
    if not isinstance(data, Mapping):
        raise ValueError(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


def _reasons(raw: Any) -> tuple[dict[str, Any], ...]:
    return tuple(dict(r) for r in raw or () if isinstance(r, Mapping))


def _settle(value: Any) -> None:
    """A frozen value's severity as a `Severity` and its reasons as a tuple of its own dicts (a tuple is
    taken as it is: `replace` hands the value's own one on)."""
    if type(value.severity) is not Severity:
        object.__setattr__(value, "severity", Severity(value.severity))
    if not isinstance(value.reasons, tuple):
        object.__setattr__(value, "reasons", _reasons(value.reasons))


def _optional_int(raw: Any) -> int | None:
    return None if raw is None else int(raw)


@dataclass(frozen=True)
class Mark:
    """Who did something to an incident and when (RFC 3339); `how` a resolution was made."""

    by: str
    at: str
    how: str | None = None  # resolved: auto | operator | false positive | traffic returned

    def to_json(self) -> dict[str, Any]:
        """`{by, at}`, and `how` when set."""
        out: dict[str, Any] = {"by": self.by, "at": self.at}
        if self.how is not None:
            out["how"] = self.how
        return out

    @classmethod
    def from_json(cls, raw: Any) -> Mark | None:
        """A mark from its JSON (None for null or a missing key)."""
        if not raw:
            return None
        return cls(str(raw.get("by", "")), str(raw.get("at", "")), raw.get("how"))


@dataclass(frozen=True)
class Candidate:
    """A top reason no alert of the incident named yet, and how many anomalous windows it led in a row."""

    feature: str  # its family: any latency feature is "latency"
    windows: int

    def to_json(self) -> dict[str, Any]:
        """`{feature, windows}`."""
        return {"feature": self.feature, "windows": self.windows}


@dataclass(frozen=True)
class Incident:
    """One incident record, as the incidents hash holds it (docs/alerts.md, "Incidents")."""

    id: str
    service: str
    kind: str = "anomaly"  # anomaly | rule | gap | level_shift
    status: str = "open"  # open | resolved
    opened: str = ""  # RFC 3339 start of the first window
    first_window: int = 0
    last_window: int = 0
    windows: int = 0
    score: float = 0.0
    severity: Severity = Severity.INFO
    reasons: tuple[dict[str, Any], ...] = ()  # of the peak: {feature, actual, expected, text}
    model_version: int | None = None
    acked: Mark | None = None
    snoozed_until: str | None = None  # RFC 3339
    resolved: Mark | None = None
    false_positive: Mark | None = None
    silenced: bool = False  # opened under a silence
    rev: int = 0  # grows with every change (compare-and-set in `detect.incidents.APPLY_LUA`)
    named: tuple[str, ...] | None = None  # the reason families alerts of it led with
    candidate: Candidate | None = None
    snoozed_until_epoch: float | None = None
    snoozed_by: Mark | None = None
    services: int | None = None  # gap: how many services were silent
    resolved_window: int | None = None  # gap: the window in which traffic returned
    accepted: Mark | None = None  # level_shift: accepted as the new normal (who, when)
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this release does not know

    def __post_init__(self) -> None:
        _settle(self)
        if self.named is not None and not isinstance(self.named, tuple):
            object.__setattr__(self, "named", tuple(self.named))

    @classmethod
    def open(cls, service: str, kind: str, first_window: int, window_start: float) -> Incident:
        """A fresh open incident (kind: anomaly, rule, gap or level_shift) starting at `first_window`."""
        if kind not in INCIDENT_KINDS:
            raise ValueError(f"incident kind {kind!r} is not one of {INCIDENT_KINDS}")
        return cls(id=f"{service}:{_ID_LETTER.get(kind, 'a')}{first_window}", service=service, kind=kind,
                   opened=rfc3339(window_start), first_window=first_window, last_window=first_window)  # fmt: skip

    @property
    def is_open(self) -> bool:
        """Still open (not resolved by the detector or an operator)."""
        return self.status == "open"

    def snoozed_at(self, now: float) -> bool:
        """True while a snooze mutes it at epoch time `now`."""
        return self.snoozed_until_epoch is not None and self.snoozed_until_epoch > now

    def state_at(self, now: float) -> IncidentState:
        """Its state at epoch time `now`: false positive, accepted (a level shift), resolved, snoozed
        (while the snooze lasts), acknowledged, else open."""
        if self.false_positive:
            return IncidentState.FALSE_POSITIVE
        if self.accepted:
            return IncidentState.ACCEPTED
        if not self.is_open:
            return IncidentState.RESOLVED
        if self.snoozed_at(now):
            return IncidentState.SNOOZED
        return IncidentState.ACKNOWLEDGED if self.acked else IncidentState.OPEN

    def state_text(self, now: float, tz: tzinfo | None = None) -> str:
        """The state in words, a snooze with its end: "snoozed until 2026-01-31 22:00:05 UTC"."""
        state = self.state_at(now)
        if state is IncidentState.SNOOZED and self.snoozed_until_epoch is not None:
            return f"{state.label} until {local_time(self.snoozed_until_epoch, tz)}"
        return state.label

    def marks(self, now: float) -> tuple[str, ...]:
        """What its state does not say, in the words the CLI and the app show in brackets: "acked"
        (acknowledged, then snoozed or closed) and "silenced" (opened under a silence)."""
        acked = bool(self.acked) and self.state_at(now) is not IncidentState.ACKNOWLEDGED
        return tuple(mark for mark, on in (("acked", acked), ("silenced", self.silenced)) if on)

    def marks_text(self, now: float) -> str:
        """`marks` as shown after its state: "[acked, silenced]", or "" when there is none."""
        marks = self.marks(now)
        return f"[{', '.join(marks)}]" if marks else ""

    @property
    def start_epoch(self) -> float:
        """The first window's start (epoch seconds)."""
        return parse_time(self.opened)

    def duration(self, window_seconds: float, now: float) -> float:
        """Seconds it has lasted: from its first window's start to the end of its last window, and for an
        open incident on to `now` (it is still going)."""
        start = self.start_epoch
        end = start + (self.last_window - self.first_window + 1) * window_seconds
        if self.is_open:
            end = max(end, now)
        return max(0.0, end - start)

    def revised(self, **changes: Any) -> Incident:
        """The next revision: `changes` applied and `rev` one higher."""
        return replace(self, rev=self.rev + 1, **changes)

    def to_json(self) -> dict[str, Any]:
        """The stored record (keys in the order the detector has always written them)."""
        out: dict[str, Any] = {
            "id": self.id, "service": self.service, "kind": self.kind, "status": self.status,
            "opened": self.opened, "first_window": self.first_window, "last_window": self.last_window,
            "windows": self.windows, "score": self.score, "severity": self.severity.value,
            "reasons": [dict(r) for r in self.reasons], "model_version": self.model_version,
            "acked": _mark(self.acked), "snoozed_until": self.snoozed_until, "resolved": _mark(self.resolved),
            "false_positive": _mark(self.false_positive), "silenced": self.silenced, "rev": self.rev,
        }  # fmt: skip
        optional = {"named": list(self.named) if self.named is not None else None,
                    "candidate": self.candidate.to_json() if self.candidate else None,
                    "snoozed_until_epoch": self.snoozed_until_epoch, "snoozed_by": _mark(self.snoozed_by),
                    "services": self.services, "resolved_window": self.resolved_window,
                    "accepted": _mark(self.accepted)}  # fmt: skip
        out.update((k, v) for k, v in optional.items() if v is not None)
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | str | bytes) -> Incident:
        """An incident from its record (a dict, or the JSON text); ValueError when it is not one."""
        data = _object(raw, "incident record")
        if not data.get("id") or "service" not in data:
            raise ValueError(f"incident record without id or service: {dict(data)!r:.200}")
        first = int(data.get("first_window") or 0)
        last = data.get("last_window")
        candidate = data.get("candidate")
        return cls(
            id=str(data["id"]), service=str(data["service"]), kind=str(data.get("kind") or "anomaly"),
            status=str(data.get("status") or "open"), opened=str(data.get("opened") or ""), first_window=first,
            last_window=first if last is None else int(last), windows=int(data.get("windows") or 0),
            score=float(data.get("score") or 0.0), severity=Severity(data.get("severity") or "info"),
            reasons=_reasons(data.get("reasons")), model_version=data.get("model_version"),
            acked=Mark.from_json(data.get("acked")), snoozed_until=data.get("snoozed_until"),
            resolved=Mark.from_json(data.get("resolved")), false_positive=Mark.from_json(data.get("false_positive")),
            silenced=bool(data.get("silenced", False)), rev=int(data.get("rev") or 0),
            named=tuple(data["named"]) if data.get("named") is not None else None,
            candidate=Candidate(str(candidate["feature"]), int(candidate["windows"])) if candidate else None,
            snoozed_until_epoch=float(data["snoozed_until_epoch"]) if data.get("snoozed_until_epoch") is not None
            else None,
            snoozed_by=Mark.from_json(data.get("snoozed_by")), services=_optional_int(data.get("services")),
            resolved_window=_optional_int(data.get("resolved_window")), accepted=Mark.from_json(data.get("accepted")),
            extra={k: v for k, v in data.items() if k not in _INCIDENT_KEYS},
        )  # fmt: skip


def _mark(mark: Mark | None) -> dict[str, Any] | None:
    return mark.to_json() if mark is not None else None


_INCIDENT_KEYS = frozenset(f.name for f in fields(Incident)) - {"extra"}


@dataclass(frozen=True)
class Alert:
    """One alert, exactly DESIGN.md's shape (docs/alerts.md, "Alerts")."""

    id: str  # <incident_id>:<window>:<kind>
    kind: str  # new | escalated | resolved | rule
    incident_id: str
    time: str  # RFC 3339 UTC start of the window (an operator's resolve: the moment of the action)
    window: int
    service: str
    score: float  # 0–100
    severity: Severity
    reasons: tuple[dict[str, Any], ...] = ()
    model_version: int | None = None
    message: str = ""
    silenced: bool = False  # a silence or a snooze muted it: logged, never published or notified
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this release does not know

    def __post_init__(self) -> None:
        _settle(self)

    @classmethod
    def about(
        cls, incident: Incident, *, kind: str, window: int, window_start: float, score: float,
        severity: str, reasons: Any, model_version: int | None, message: str, silenced: bool = False,
    ) -> Alert:  # fmt: skip
        """An alert about `incident`; its id depends only on incident, window and kind."""
        if kind not in ALERT_KINDS:
            raise ValueError(f"alert kind {kind!r} is not one of {ALERT_KINDS}")
        return cls(id=f"{incident.id}:{window}:{kind}", kind=kind, incident_id=incident.id,
                   time=rfc3339(window_start), window=window, service=incident.service,
                   score=stored_score(score), severity=Severity(severity), reasons=reasons,
                   model_version=model_version, message=message, silenced=silenced)  # fmt: skip

    @property
    def epoch(self) -> float:
        """`time` as epoch seconds."""
        return parse_time(self.time)

    def to_json(self) -> dict[str, Any]:
        """The alert's JSON object (`silenced` only when true)."""
        out: dict[str, Any] = {
            "id": self.id, "kind": self.kind, "incident_id": self.incident_id, "time": self.time,
            "window": self.window, "service": self.service, "score": self.score,
            "severity": self.severity.value, "reasons": [dict(r) for r in self.reasons],
            "model_version": self.model_version, "message": self.message,
        }  # fmt: skip
        if self.silenced:
            out["silenced"] = True
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | str | bytes) -> Alert:
        """An alert from its JSON (a dict or the text); a missing key reads as its default (empty, 0, info)."""
        data = _object(raw, "alert")
        when = data.get("time")
        return cls(
            id=str(data.get("id") or ""), kind=str(data.get("kind") or ""),
            incident_id=str(data.get("incident_id") or data.get("id") or ""),
            time=rfc3339(when) if isinstance(when, int | float) else str(when or ""),
            window=int(data.get("window") or 0), service=str(data.get("service") or ""),
            score=float(data.get("score") or 0.0), severity=Severity(data.get("severity") or "info"),
            reasons=_reasons(data.get("reasons")), model_version=data.get("model_version"),
            message=str(data.get("message") or ""), silenced=bool(data.get("silenced", False)),
            extra={k: v for k, v in data.items() if k not in _ALERT_KEYS},
        )  # fmt: skip

    @classmethod
    def from_entry(cls, entry: Mapping[Any, Any] | None) -> Alert | None:
        """The alert of an alerts-log entry's fields: the JSON in `alert`; None when it has no readable one."""
        if not entry:
            return None
        raw = entry.get(ALERT_FIELD.encode(), entry.get(ALERT_FIELD))
        if not raw:
            return None
        try:
            return cls.from_json(raw)
        except (ValueError, TypeError):
            return None


_ALERT_KEYS = frozenset(f.name for f in fields(Alert)) - {"extra"}


@dataclass(frozen=True)
class Silence:
    """Mutes every service matching `pattern` from `start` to `end` (epoch seconds)."""

    id: str
    pattern: str  # shell-style glob on the service name: "payments", "svc-*", "*"
    start: float
    end: float
    reason: str
    by: str

    def covers(self, service: str, at: float) -> bool:
        """True when this silence mutes `service` at epoch time `at`."""
        return self.start <= at < self.end and fnmatch.fnmatchcase(service, self.pattern)

    def to_json(self) -> dict[str, Any]:
        """The stored record (times as epoch seconds)."""
        return {"id": self.id, "pattern": self.pattern, "start": self.start, "end": self.end,
                "reason": self.reason, "by": self.by}  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """What the CLI prints and the app lists: times as RFC 3339 and as epoch seconds."""
        return {"id": self.id, "pattern": self.pattern, "start": rfc3339(self.start), "end": rfc3339(self.end),
                "start_epoch": self.start, "end_epoch": self.end, "reason": self.reason, "by": self.by}  # fmt: skip

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | str | bytes) -> Silence:
        """A silence from its stored record (or from `as_dict`'s shape)."""
        data = _object(raw, "silence")

        def epoch(name: str) -> float:
            value = data.get(name)
            return float(value) if isinstance(value, int | float) else float(data.get(f"{name}_epoch", 0.0))

        return cls(str(data["id"]), str(data["pattern"]), epoch("start"), epoch("end"),
                   str(data.get("reason", "")), str(data.get("by", "")))  # fmt: skip
