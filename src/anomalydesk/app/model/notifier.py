"""Which alerts become desktop notifications, and how often (Qt-free).

One notification per new incident or escalation, never one per window; a per-incident minimum
interval and a global burst limit (the excess is summarised in one "N more" notification, never
dropped); a "pause for 1 h" mutes notifications — the incident row still appears. Silences are not
judged here: the detector judges them (once, at the window's time) and marks the alert `silenced`;
such an alert is never published and, read from the log after a reconnect, never notified.
Delivery is a plain callable so the tray, the in-window banner and the tests all plug in alike.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from anomalydesk.app.model.settings import NOTIFY_MIN_INTERVAL_SECONDS, NOTIFY_PAUSE_SECONDS
from anomalydesk.app.model.state import IncidentRow
from anomalydesk.detect.incident_model import Alert, Incident, score_text

BURST_WINDOW_SECONDS = 10.0
BURST_MAX = 5


@dataclass(frozen=True)
class Notification:
    title: str
    body: str
    severity: str  # info | warning | critical
    incident_id: str  # "" for a summary or a test notification


def taken(incident: Incident, now: float) -> bool:
    """Whether an operator has taken the incident: acknowledged, snoozed or closed it by hand
    (closed by the detector it is not: an alert missed while away still notifies)."""
    by_hand = incident.resolved is not None and incident.resolved.by != "detector"
    return bool(incident.acked or incident.false_positive or by_hand or incident.snoozed_at(now))


def popup_title(alert: Alert, incident: IncidentRow) -> str:
    """`WARNING payments: escalated (score 74; incident peak 97, critical)`: this alert's own severity and
    score (a popup once showed the incident's peak as if it were the alert's), and the incident's peak
    beside them, named as such, when it stands higher."""
    word = {"escalated": "escalated", "rule": "rule", "level_shift": "new normal?"}.get(alert.kind, "new incident")
    score = f"score {score_text(alert.score)}"
    if score_text(incident.score) != score_text(alert.score) and incident.score > alert.score:
        peak = f"incident peak {score_text(incident.score)}"
        score += f"; {peak}, {incident.severity}" if incident.severity != alert.severity else f"; {peak}"
    return f"{alert.severity.upper()} {alert.service}: {word} ({score})"


def _first_reason(alert: Alert) -> str:
    """The alert's own first reason in words ("" when it names none)."""
    texts = [str(r.get("text") or "") for r in alert.reasons if isinstance(r, dict)]
    return texts[0] if texts else ""


class Notifier:
    """Decides, throttles and delivers; `deliver(Notification)` does the showing."""

    def __init__(self, deliver: Callable[[Notification], None], clock: Callable[[], float] = time.time,
                 burst_max: int = BURST_MAX) -> None:  # fmt: skip
        self.deliver = deliver
        self.clock = clock
        self.burst_max = burst_max
        self.paused_until = 0.0
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

    def on_alert(self, alert: Alert, incident: IncidentRow, is_new: bool) -> Notification | None:
        """Called for each alert counted against `incident` (`is_new`: its first); returns what was
        delivered, if anything."""
        kind = alert.kind
        # a level shift not accepted notifies again at its interval (incident_flow._advance_shift)
        if alert.silenced or kind == "resolved" or not (is_new or kind in ("escalated", "level_shift")):
            return None
        now = self.clock()
        if self.paused or taken(incident.incident, now):
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
        note = Notification(
            title=popup_title(alert, incident),
            body=_first_reason(alert) or alert.message or incident.reason or "anomalous behaviour",
            severity=alert.severity.value,
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
