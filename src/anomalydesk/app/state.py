"""Plain-Python state the panels subscribe to (Qt-free: no PySide6 import here).

The session (`session.py`) writes these from the asyncio side; panels read them and connect to their
`changed` signals. Nothing here talks to Redis.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anomalydesk.app.observable import Signal
from anomalydesk.app.ringbuffer import RingBuffer
from anomalydesk.app.settings import INCIDENT_ROWS_MAX, LIVE_CAPACITY
from anomalydesk.fingerprint import N_FEATURES

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
HEALTH_LEVELS = ("none", "warning", "critical")
CLOSED_STATES = ("resolved", "false_positive")


@dataclass
class ConnectionState:
    """What the connection panel shows: state, reason, server facts, self-monitoring warnings."""

    url: str = ""
    status: str = "disconnected"  # connecting | connected | reconnecting | failed | disconnected
    reason: str = ""
    server_version: str = ""
    sketch_backend: str = ""
    used_memory: int = 0
    attempts: int = 0
    next_retry_s: float = 0.0
    secret_store: str = ""
    detector: str = ""  # "in-process" | "external" | "none"
    last_fingerprint_at: float = 0.0
    status_json: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    changed: Signal = field(default_factory=Signal, repr=False, compare=False)

    def update(self, **values: Any) -> None:
        """Set fields and notify subscribers once."""
        for key, value in values.items():
            setattr(self, key, value)
        self.changed.emit()


@dataclass
class DemoState:
    """The demo panel's model: is demo traffic running, at what rate, which faults are active."""

    running: bool = False
    rate: int = 0
    services: list[str] = field(default_factory=list)
    events_per_second: float = 0.0
    faults: list[str] = field(default_factory=list)
    backfill: str = ""  # "", "running", "done: …", "failed: …"
    error: str = ""
    changed: Signal = field(default_factory=Signal, repr=False, compare=False)

    def update(self, **values: Any) -> None:
        """Set fields and notify subscribers once."""
        for key, value in values.items():
            setattr(self, key, value)
        self.changed.emit()


@dataclass
class TrainingState:
    """The training panel's model: the running job, its progress, and each service's models."""

    running: bool = False
    progress: float = 0.0  # 0..1
    message: str = ""
    result: str = ""
    services: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → {state, active, versions}
    changed: Signal = field(default_factory=Signal, repr=False, compare=False)
    progressed: Signal = field(default_factory=Signal, repr=False, compare=False)

    def update(self, **values: Any) -> None:
        """Set fields and notify subscribers once."""
        for key, value in values.items():
            setattr(self, key, value)
        self.changed.emit()

    def set_progress(self, fraction: float, message: str) -> None:
        """Progress from the worker (already marshalled to the GUI thread)."""
        self.progress = max(0.0, min(1.0, fraction))
        self.message = message
        self.progressed.emit(self.progress, message)


# --- live data --------------------------------------------------------------------------------
LIVE_COLUMNS = 2 + N_FEATURES  # window start (epoch s), score (NaN before a model), features…


class LiveState:
    """Per-service ring buffers of fingerprints and scores, bounded by `capacity` rows each."""

    def __init__(self, capacity: int = LIVE_CAPACITY):
        self.capacity = capacity
        self.buffers: dict[str, RingBuffer] = {}
        self.thresholds: dict[str, float] = {}
        self.services_changed = Signal()

    def buffer(self, service: str) -> RingBuffer:
        """The service's buffer, created on first use."""
        buf = self.buffers.get(service)
        if buf is None:
            buf = self.buffers[service] = RingBuffer(self.capacity, LIVE_COLUMNS)
            self.services_changed.emit()
        return buf

    def append(self, service: str, start: float, vector: np.ndarray, score: float | None) -> None:
        """Add one window."""
        row = np.empty(LIVE_COLUMNS)
        row[0] = start
        row[1] = np.nan if score is None else score
        row[2:] = vector
        self.buffer(service).append(row)

    def nbytes(self) -> int:
        """Memory held by the ring buffers."""
        return sum(b.nbytes for b in self.buffers.values())


# --- incidents --------------------------------------------------------------------------------
@dataclass
class Incident:
    """One incident as the app knows it, built from its alerts (and actions taken on it)."""

    incident_id: str
    service: str
    severity: str
    score: float
    reason: str
    reasons: list[dict[str, Any]]
    start: float
    last: float
    window_first: int
    window_last: int
    state: str = "open"  # open | acknowledged | snoozed | resolved | false_positive
    snoozed_until: float = 0.0
    alerts: int = 0
    message: str = ""
    model_version: Any = None
    windows: int = 0  # anomalous windows, as the stored record counts them

    @property
    def duration(self) -> float:
        return max(0.0, self.last - self.start)

    @property
    def active(self) -> bool:
        """Still needs attention: open, or a snooze that has run out."""
        if self.state == "open":
            return True
        return self.state == "snoozed" and self.snoozed_until <= time.time()


def parse_time(value: Any) -> float:
    """RFC 3339 / epoch seconds → epoch seconds (0.0 when missing or unreadable)."""
    from datetime import datetime

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


class IncidentsState:
    """Incidents keyed by id, filled from the alerts log (catch-up) and pub/sub; bounded."""

    def __init__(self, max_rows: int = INCIDENT_ROWS_MAX):
        self.max_rows = max_rows
        self.incidents: dict[str, Incident] = {}
        self.seen_alerts: set[str] = set()
        self.last_log_id: str = "0-0"  # newest alerts-log entry id seen (catch-up restarts here)
        self.changed = Signal()  # (incident)
        self.health_changed = Signal()  # (level)
        self._health = "none"

    def forget(self) -> None:
        """No incidents and no alerts seen (another server): health goes back to "none"."""
        self.incidents.clear()
        self.seen_alerts.clear()
        self.last_log_id = "0-0"
        self._update_health()

    def apply_alert(self, alert: dict[str, Any]) -> tuple[Incident | None, bool]:
        """Fold one alert in; returns (incident, is_new) and (None, False) for a duplicate alert."""
        alert_id = str(alert.get("id", ""))
        if alert_id and alert_id in self.seen_alerts:
            return None, False
        if alert_id:
            self.seen_alerts.add(alert_id)
        iid = str(alert.get("incident_id") or alert_id)
        t = parse_time(alert.get("time"))
        reasons = alert.get("reasons") or []
        first_reason = reasons[0].get("text", "") if reasons and isinstance(reasons[0], dict) else ""
        severity = str(alert.get("severity", "info"))
        kind = str(alert.get("kind", "new"))
        inc = self.incidents.get(iid)
        is_new = inc is None
        window = int(alert.get("window") or 0)
        if inc is None:
            inc = Incident(
                incident_id=iid, service=str(alert.get("service", "")), severity=severity,
                score=float(alert.get("score") or 0.0), reason=first_reason or str(alert.get("message", "")),
                reasons=list(reasons), start=t, last=t, window_first=window, window_last=window,
                message=str(alert.get("message", "")), model_version=alert.get("model_version"),
            )  # fmt: skip
            self.incidents[iid] = inc
            self._trim()
        else:
            inc.last = max(inc.last, t)
            inc.window_last = max(inc.window_last, window)
            inc.score = max(inc.score, float(alert.get("score") or 0.0))
            if SEVERITY_RANK.get(severity, 0) > SEVERITY_RANK.get(inc.severity, 0):
                inc.severity = severity
            if reasons:
                inc.reasons, inc.reason = list(reasons), first_reason or inc.reason
            inc.message = str(alert.get("message", inc.message))
        inc.alerts += 1
        if kind == "resolved" and inc.state not in CLOSED_STATES:
            inc.state = "resolved"  # a false positive stays one when its closing alert arrives
        self.changed.emit(inc)
        self._update_health()
        return inc, is_new

    def apply_record(self, record: dict[str, Any], window_seconds: float, state: tuple[str, float]) -> Incident | None:
        """Follow the stored record (the detector extends an incident every window without an alert):
        start, duration, windows, score, severity and reasons as the CLI shows them; `state` is the
        table state and snooze end of the record (`backend.app_state_of`)."""
        iid = str(record.get("id", ""))
        inc = self.incidents.get(iid)
        if inc is None and record.get("status") != "open":
            return None
        first = int(record.get("first_window") or 0)
        last = int(record.get("last_window") or first)
        start = parse_time(record.get("opened"))
        reasons = list(record.get("reasons") or [])
        reason = reasons[0].get("text", "") if reasons and isinstance(reasons[0], dict) else ""
        values = dict(service=str(record.get("service", "")), severity=str(record.get("severity", "info")),
                      score=float(record.get("score") or 0.0), start=start,
                      last=start + (last - first + 1) * window_seconds, window_first=first, window_last=last,
                      windows=int(record.get("windows") or 0), model_version=record.get("model_version"),
                      state=state[0], snoozed_until=state[1])  # fmt: skip
        if reasons:
            values.update(reasons=reasons, reason=reason)
        if inc is None:
            inc = Incident(incident_id=iid, reason=reason, reasons=reasons, **{
                k: v for k, v in values.items() if k not in ("reasons", "reason")})
            self.incidents[iid] = inc
            self._trim()
        elif all(getattr(inc, k) == v for k, v in values.items()):
            return inc
        else:
            for k, v in values.items():
                setattr(inc, k, v)
        self.changed.emit(inc)
        self._update_health()
        return inc

    def tracked(self) -> list[str]:
        """Ids of the incidents the app shows as still going (their records are followed)."""
        return [i.incident_id for i in self.incidents.values() if i.state not in CLOSED_STATES]

    def set_state(self, incident_id: str, state: str, snoozed_until: float = 0.0) -> Incident | None:
        """Record an action's outcome (after Redis accepted it)."""
        inc = self.incidents.get(incident_id)
        if inc is None:
            return None
        inc.state = state
        inc.snoozed_until = snoozed_until
        self.changed.emit(inc)
        self._update_health()
        return inc

    def _trim(self) -> None:
        if len(self.incidents) <= self.max_rows:
            return
        # drop the oldest closed incidents first, then the oldest of any state
        order = sorted(self.incidents.values(), key=lambda i: (i.state not in CLOSED_STATES, i.last))
        for inc in order[: len(self.incidents) - self.max_rows]:
            del self.incidents[inc.incident_id]
        if len(self.seen_alerts) > 20 * self.max_rows:
            self.seen_alerts.clear()  # dedup only matters around reconnects; keep memory bounded

    @property
    def health(self) -> str:
        """none | warning | critical, from the incidents that still need attention."""
        return self._health

    def _update_health(self) -> None:
        rank = max(
            (SEVERITY_RANK.get(i.severity, 0) for i in self.incidents.values() if i.active), default=0
        )
        level = HEALTH_LEVELS[rank]  # an info-only incident leaves the tray at "none"
        if level != self._health:
            self._health = level
            self.health_changed.emit(level)

    def bands(self, service: str) -> list[tuple[float, float, str]]:
        """(start, end, severity) of each incident of `service`, for the live plot."""
        return [(i.start, max(i.last, i.start), i.severity) for i in self.incidents.values()
                if i.service == service]  # fmt: skip


class AppState:
    """All the state objects of one app window, handed to the panels."""

    def __init__(self, live_capacity: int = LIVE_CAPACITY):
        self.connection = ConnectionState()
        self.demo = DemoState()
        self.training = TrainingState()
        self.live = LiveState(live_capacity)
        self.incidents = IncidentsState()
        self.services: list[str] = []
        self.services_changed = Signal()
        self.sketches: dict[str, Any] = {}  # settings + per-service info for the sketches panel
        self.sketches_changed = Signal()

    def forget_server(self) -> None:
        """Drop what the previous server showed: live windows, services, incidents, models, sketch sizes."""
        self.live.buffers.clear()
        self.live.thresholds.clear()
        self.live.services_changed.emit()
        self.set_services([])
        self.incidents.forget()
        self.training.update(services={})
        self.sketches = {}
        self.sketches_changed.emit()

    def set_services(self, names: list[str]) -> None:
        """Replace the known services, notifying only on change."""
        names = sorted(names)
        if names != self.services:
            self.services = names
            self.services_changed.emit()
