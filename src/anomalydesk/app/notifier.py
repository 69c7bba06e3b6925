"""Which alerts become desktop notifications, and how often (Qt-free).

One notification per new incident or escalation, never one per window; a per-incident minimum
interval and a global burst limit (the excess is summarised in one "N more" notification, never
dropped); silences and a "pause for 1 h" mute notifications — the incident row still appears.
Delivery is a plain callable so the tray, the in-window banner and the tests all plug in alike.
"""

from __future__ import annotations

import fnmatch
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from anomalydesk.app.settings import NOTIFY_MIN_INTERVAL_SECONDS, NOTIFY_PAUSE_SECONDS
from anomalydesk.app.state import Incident

BURST_WINDOW_SECONDS = 10.0
BURST_MAX = 5


@dataclass(frozen=True)
class Notification:
    title: str
    body: str
    severity: str  # info | warning | critical
    incident_id: str  # "" for a summary or a test notification


@dataclass(frozen=True)
class Silence:
    pattern: str  # fnmatch pattern on the service name
    start: float
    end: float
    reason: str = ""

    def mutes(self, service: str, now: float) -> bool:
        """True while active and matching `service`."""
        return self.start <= now < self.end and fnmatch.fnmatchcase(service, self.pattern)


class Notifier:
    """Decides, throttles and delivers; `deliver(Notification)` does the showing."""

    def __init__(self, deliver: Callable[[Notification], None], clock: Callable[[], float] = time.time,
                 burst_max: int = BURST_MAX) -> None:  # fmt: skip
        self.deliver = deliver
        self.clock = clock
        self.burst_max = burst_max
        self.paused_until = 0.0
        self.silences: list[Silence] = []
        self._last_for: dict[str, float] = {}
        self._recent: deque[float] = deque()
        self.suppressed: int = 0  # waiting to be summarised
        self.delivered: int = 0

    def pause(self, seconds: float = NOTIFY_PAUSE_SECONDS) -> float:
        """Mute notifications for `seconds`; returns the end time."""
        self.paused_until = self.clock() + seconds
        return self.paused_until

    def resume(self) -> None:
        """Undo a pause."""
        self.paused_until = 0.0

    @property
    def paused(self) -> bool:
        return self.clock() < self.paused_until

    def on_alert(self, alert: dict[str, Any], incident: Incident, is_new: bool) -> Notification | None:
        """Called for each alert folded into `incident`; returns what was delivered, if anything."""
        kind = str(alert.get("kind", "new"))
        if kind == "resolved" or not (is_new or kind == "escalated"):
            return None
        if incident.state not in ("open",) and not (incident.state == "snoozed" and incident.active):
            return None
        now = self.clock()
        if self.paused or any(s.mutes(incident.service, now) for s in self.silences):
            return None
        if now - self._last_for.get(incident.incident_id, -1e18) < NOTIFY_MIN_INTERVAL_SECONDS:
            return None
        while self._recent and now - self._recent[0] > BURST_WINDOW_SECONDS:
            self._recent.popleft()
        if len(self._recent) >= self.burst_max:
            self.suppressed += 1
            return None
        self._last_for[incident.incident_id] = now
        if len(self._last_for) > 10_000:
            self._last_for = {k: v for k, v in self._last_for.items() if now - v < 3600}
        self._recent.append(now)
        word = "escalated" if kind == "escalated" else ("rule" if kind == "rule" else "new incident")
        note = Notification(
            title=f"{incident.severity.upper()} {incident.service}: {word} (score {incident.score:.0f})",
            body=incident.reason or incident.message or "anomalous behaviour",
            severity=incident.severity,
            incident_id=incident.incident_id,
        )
        self._send(note)
        return note

    def flush_summary(self) -> Notification | None:
        """Deliver one "N more incidents" notification for what the burst limit held back."""
        if not self.suppressed or self.paused:
            return None
        note = Notification(
            title=f"{self.suppressed} more alert(s)",
            body="Open AnomalyDesk's incidents panel to see them all.",
            severity="warning",
            incident_id="",
        )
        self.suppressed = 0
        self._send(note)
        return note

    def _send(self, note: Notification) -> None:
        self.delivered += 1
        self.deliver(note)
