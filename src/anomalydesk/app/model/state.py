"""Plain-Python state the panels subscribe to (Qt-free: no PySide6 import here).

The session (`session.py`) writes these from the asyncio side; panels read them and connect to their
`changed` signals. Nothing here talks to Redis.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anomalydesk import config
from anomalydesk.app.model.observable import Signal
from anomalydesk.app.model.ringbuffer import RingBuffer
from anomalydesk.app.model.settings import INCIDENT_ROWS_MAX, LIVE_CAPACITY
from anomalydesk.app.model.traffic import Traffic
from anomalydesk.app.model.window_lengths import WindowLengths
from anomalydesk.detect.incident_model import CLOSED_STATES, Alert, Incident, IncidentState, Severity
from anomalydesk.detect.window_scores import WindowScore, activations
from anomalydesk.fingerprint import N_FEATURES

HEALTH_LEVELS = ("none", "warning", "critical")  # by `Severity.rank`: an info incident is no warning


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
        """Set fields and notify subscribers once. Leaving "connected" drops what the server said about
        itself (version, memory, detector, counts, warnings): while (re)connecting, or on another server,
        they no longer hold; the next answers fill them again."""
        if values.get("status", "connected") != "connected" and self.status == "connected":
            values = {**_no_server_facts(), **values}
        for key, value in values.items():
            setattr(self, key, value)
        self.changed.emit()


def _no_server_facts() -> dict[str, Any]:
    """ConnectionState's server facts as before the first answer."""
    return {"server_version": "", "sketch_backend": "", "used_memory": 0, "detector": "", "status_json": {},
            "warnings": []}  # fmt: skip


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


# the state of a service without a usable model whose windows are enough to train one
READY_TO_TRAIN = "ready to train"


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
LIVE_COLUMNS = 2 + N_FEATURES  # window start (epoch s), stored score (NaN: not scored), features…
ACTIVATIONS_KEPT = 50  # activation marks kept per service


class LiveState:
    """Per-service ring buffers of fingerprints and the scores the detector stored for them, bounded by
    `capacity` rows each, and where a model version took over scoring (`activations`)."""

    def __init__(self, capacity: int = LIVE_CAPACITY):
        self.capacity = capacity
        self.buffers: dict[str, RingBuffer] = {}
        self.thresholds: dict[str, float] = {}
        self.activations: dict[str, list[tuple[float, int]]] = {}  # service → [(window start, version)]
        self._scored_by: dict[str, int | None] = {}  # the version of the newest score applied
        self._lengths: dict[str, WindowLengths] = {}  # where the window length changed (marked on the plot)
        self.traffic = Traffic()  # stopped on purpose, silent: whether the newest score is still news
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
        buf = self.buffer(service)
        last = buf.last()
        if last is not None and start <= last[0]:
            buf.merge(row)  # a late or repeated window: in its place, not drawn back in time
        else:
            buf.append(row)

    def note_lengths(self, service: str, windows: Sequence[tuple[float, int | None]]) -> None:
        """Note the length of each of `windows` ((start, length), any order): where it changed is marked
        on the plot (`window_lengths`)."""
        self._lengths.setdefault(service, WindowLengths()).note(windows)

    def length_changes(self, service: str) -> list[tuple[float, int, int]]:
        """(first window start, old length, new length) of the service's window-length changes."""
        lengths = self._lengths.get(service)
        return lengths.changes() if lengths else []

    def lengths_at(self, service: str, starts: np.ndarray) -> np.ndarray | None:
        """The window length of each window starting at `starts` (None: none noted)."""
        lengths = self._lengths.get(service)
        return lengths.at(starts) if lengths else None

    def apply_scores(self, service: str, scores: Sequence[WindowScore]) -> int:
        """Put stored scores (oldest first) on their windows' rows and note where a model version took
        over scoring; a score whose window is not buffered is dropped. Returns the rows set."""
        if not scores:
            return 0
        marks = activations(scores, before=self._scored_by.get(service))
        self._scored_by[service] = scores[-1].model_version
        if marks:
            kept = self.activations.setdefault(service, [])
            kept.extend(marks)
            del kept[: max(0, len(kept) - ACTIVATIONS_KEPT)]
        starts = np.fromiter((s.start for s in scores), np.float64, len(scores))
        values = np.fromiter((s.score for s in scores), np.float64, len(scores))
        order = np.argsort(starts, kind="stable")
        return self.buffer(service).assign_by_key(starts[order], 1, values[order])

    def forget_scores(self, service: str | None = None) -> None:
        """Drop the activation and window-length marks and scoring history of one service (its buffer is
        filled again), or all."""
        if service is None:
            self.activations.clear()
            self._scored_by.clear()
            self._lengths.clear()
            return
        self.activations.pop(service, None)
        self._scored_by.pop(service, None)
        self._lengths.pop(service, None)

    def nbytes(self) -> int:
        """Memory held by the ring buffers."""
        return sum(b.nbytes for b in self.buffers.values())


# --- incidents --------------------------------------------------------------------------------
def table_state(incident: Incident, now: float | None = None) -> tuple[IncidentState, float]:
    """The incident's state (the core's `Incident.state_at`), and its snooze end (0 when not snoozed)."""
    state = incident.state_at(time.time() if now is None else now)
    until = float(incident.snoozed_until_epoch or 0.0) if state is IncidentState.SNOOZED else 0.0
    return state, until


@dataclass(eq=False)
class IncidentRow:
    """One row of the incidents table: the stored incident (the core's frozen `Incident`, replaced
    whenever the app reads a newer record) and what the app adds to it: its table state when read,
    how many alerts of it arrived, the last one's message."""

    incident: Incident
    window_seconds: float
    state: IncidentState = IncidentState.OPEN  # as `table_state` gave it when the record was read
    snoozed_until: float = 0.0
    alerts: int = 0
    message: str = ""

    @property
    def incident_id(self) -> str:
        return self.incident.id

    @property
    def service(self) -> str:
        return self.incident.service

    @property
    def severity(self) -> Severity:
        return self.incident.severity

    @property
    def score(self) -> float:
        return self.incident.score

    @property
    def reasons(self) -> tuple[dict[str, Any], ...]:
        return self.incident.reasons

    @property
    def reason(self) -> str:
        """The first reason in words, else the last alert's message."""
        reasons = self.incident.reasons
        return str(reasons[0].get("text", "")) if reasons else self.message

    @property
    def window_first(self) -> int:
        return self.incident.first_window

    @property
    def window_last(self) -> int:
        return self.incident.last_window

    @property
    def windows(self) -> int:
        """Anomalous windows, as the stored record counts them."""
        return self.incident.windows

    @property
    def model_version(self) -> int | None:
        return self.incident.model_version

    @property
    def start(self) -> float:
        """The first window's start (epoch seconds)."""
        return self.incident.start_epoch

    @property
    def last(self) -> float:
        """The end of the last window (epoch seconds)."""
        return self.start + (self.window_last - self.window_first + 1) * self.window_seconds

    @property
    def duration(self) -> float:
        """How long it has lasted, on to now while it is open (`Incident.duration`)."""
        return self.incident.duration(self.window_seconds, time.time())

    def state_text(self, now: float | None = None) -> str:
        """Its state in the shared vocabulary, a snooze with its end (`Incident.state_text`)."""
        return self.incident.state_text(time.time() if now is None else now)

    @property
    def active(self) -> bool:
        """Still needs attention: open, or a snooze that has run out."""
        if self.state == "open":
            return True
        return self.state == "snoozed" and self.snoozed_until <= time.time()


class IncidentsState:
    """The incidents the app shows, by id: stored records, read by the id an alert names (the alerts
    log at start-up, then pub/sub) and followed while they are open; bounded."""

    def __init__(self, max_rows: int = INCIDENT_ROWS_MAX, window_seconds: float = config.DEFAULT_WINDOW_SECONDS):
        self.max_rows = max_rows
        self.window_seconds = float(window_seconds)  # the server's window length (row start and end)
        self.incidents: dict[str, IncidentRow] = {}
        self.seen_alerts: set[str] = set()
        self.last_log_id: str = "0-0"  # newest alerts-log entry id seen (catch-up restarts here)
        self.changed = Signal()  # (row)
        self.health_changed = Signal()  # (level)
        self._health = "none"

    def forget(self) -> None:
        """No incidents and no alerts seen (another server): health goes back to "none"."""
        self.incidents.clear()
        self.seen_alerts.clear()
        self.last_log_id = "0-0"
        self._update_health()

    def seen(self, alert: Alert) -> bool:
        """Whether this alert was counted already (catch-up and pub/sub both deliver it)."""
        return bool(alert.id) and alert.id in self.seen_alerts

    def apply_alert(self, alert: Alert, incident: Incident | None) -> tuple[IncidentRow | None, bool]:
        """Count an alert against its incident, as stored now (`incident`, read by the id the alert
        names); returns (row, is it the row's first alert). (None, False) for an alert counted before
        or one whose incident is no longer stored."""
        if self.seen(alert):
            return None, False
        if alert.id:
            self.seen_alerts.add(alert.id)
        if incident is None:
            return None, False
        row, _ = self._put(incident)
        first = row.alerts == 0
        row.alerts += 1
        row.message = alert.message or row.message
        self.changed.emit(row)
        self._update_health()
        return row, first

    def apply(self, incident: Incident) -> IncidentRow | None:
        """Follow a stored record (the status poll; an operator's action): a row for an open incident
        or one already shown (the detector extends an incident every window without an alert)."""
        if incident.id not in self.incidents and not incident.is_open:
            return None
        row, changed = self._put(incident)
        if changed:
            self.changed.emit(row)
            self._update_health()
        return row

    def _put(self, incident: Incident) -> tuple[IncidentRow, bool]:
        state, until = table_state(incident)
        row = self.incidents.get(incident.id)
        if row is None:
            row = self.incidents[incident.id] = IncidentRow(incident, self.window_seconds, state, until)
            self._trim()
            return row, True
        now = (incident, self.window_seconds, state, until)
        if (row.incident, row.window_seconds, row.state, row.snoozed_until) == now:
            return row, False
        row.incident, row.window_seconds, row.state, row.snoozed_until = now
        return row, True

    def tracked(self) -> list[str]:
        """Ids of the incidents the app shows as still going (their records are followed)."""
        return [i.incident_id for i in self.incidents.values() if i.state not in CLOSED_STATES]

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
        rank = max((i.severity.rank for i in self.incidents.values() if i.active), default=0)
        level = HEALTH_LEVELS[rank]  # an info-only incident leaves the tray at "none"
        if level != self._health:
            self._health = level
            self.health_changed.emit(level)

    def bands(self, service: str) -> list[tuple[float, float, str]]:
        """(start, end, severity) of each incident of `service`, for the live plot."""
        return [(i.start, max(i.last, i.start), i.severity.value) for i in self.incidents.values()
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
        self.feedback = Signal()  # (text): what an action did, for the window's status bar

    def say(self, text: str) -> None:
        """Report what an action did (the file written, the new state) to whoever shows messages."""
        self.feedback.emit(text)

    def forget_server(self) -> None:
        """Drop what the previous server showed: live windows, services, incidents, models, sketch sizes."""
        self.live.buffers.clear()
        self.live.thresholds.clear()
        self.live.traffic.forget()
        self.live.forget_scores()
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
