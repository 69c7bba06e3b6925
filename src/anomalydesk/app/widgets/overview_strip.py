"""The overview strip across the top of the main window: what an operator checks at a glance.

Five tiles, each a button to the panel that says more: events per second (with the last minutes as a
sparkline) and the connection → Connection; services by state → Training (each service's model);
open incidents by severity → Incidents; the detector → Connection. The strip reads the plain-Python
state objects (`AppState`) and redraws when they change; it never talks to Redis.

Events per second come from the `events_total` counter of the status poll: the difference between two
polls over the time between them (the poll runs every `STATUS_POLL_SECONDS`). Backfilled history
(`history_events_total`) is not live traffic: it is left out of the rate and shown beside it while a
backfill runs (a simulated day read as "857,006 events/s").
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from anomalydesk.app.model.state import READY_TO_TRAIN, AppState
from anomalydesk.app.widgets import theme
from anomalydesk.app.widgets.incidents_panel import SEVERITY_COLOUR
from anomalydesk.detect.incident_model import Severity

RATE_SAMPLES = 90  # status polls kept for the sparkline (3 minutes at one poll every 2 s)
SPARK_SIZE = (80, 18)
_STATUS_WORDS = {"connected": "connected", "connecting": "connecting …", "reconnecting": "reconnecting …",
                 "failed": "failed", "disconnected": "disconnected"}  # fmt: skip
SERVICE_STATES = ("anomalous", "normal", "learning", "stale", "retired")


class Tile(QtWidgets.QFrame):
    """A heading and its value, clickable (mouse, or Enter/Space with the keyboard focus)."""

    clicked = QtCore.Signal()

    def __init__(self, heading: str, tooltip: str, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.setFrameShape(QtWidgets.QFrame.Shape.StyledPanel)
        self.setCursor(QtCore.Qt.CursorShape.PointingHandCursor)
        self.setFocusPolicy(QtCore.Qt.FocusPolicy.StrongFocus)
        self.setToolTip(tooltip)
        self.setAccessibleName(heading)
        self.heading = QtWidgets.QLabel(heading)
        small = self.heading.font()
        small.setPointSizeF(max(small.pointSizeF() * 0.85, 7.0))
        self.heading.setFont(small)
        self.value = QtWidgets.QLabel("…")
        self.value.setTextFormat(QtCore.Qt.TextFormat.RichText)
        self.value.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.NoTextInteraction)
        self.value.setAttribute(QtCore.Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.heading.setAttribute(QtCore.Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.row = QtWidgets.QHBoxLayout(self)  # one line: the strip costs the plots as little height as it can
        self.row.setContentsMargins(6, 1, 6, 1)
        self.row.setSpacing(6)
        self.row.addWidget(self.heading)
        self.row.addWidget(self.value)

    def set_value(self, html: str, plain: str) -> None:
        """Show `html`; `plain` is what a screen reader says."""
        self.value.setText(html)
        self.setAccessibleDescription(plain)

    def mouseReleaseEvent(self, event: QtGui.QMouseEvent) -> None:
        if event.button() == QtCore.Qt.MouseButton.LeftButton and self.rect().contains(event.position().toPoint()):
            self.clicked.emit()
        super().mouseReleaseEvent(event)

    def keyPressEvent(self, event: QtGui.QKeyEvent) -> None:
        if event.key() in (QtCore.Qt.Key.Key_Return, QtCore.Qt.Key.Key_Enter, QtCore.Qt.Key.Key_Space):
            self.clicked.emit()
            return
        super().keyPressEvent(event)


def _chip(colour: QtGui.QColor, text: str) -> str:
    return f"<span style='color:{colour.name()}'>●</span>&nbsp;{text}"


class OverviewStrip(QtWidgets.QWidget):
    """Events/s, connection, services by state, open incidents by severity, detector; `open_panel(name)`
    asks the window to bring up the panel behind a tile ("connection", "training", "incidents")."""

    open_panel = QtCore.Signal(str)

    def __init__(self, state: AppState, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.state = state
        # (monotonic s, live events, history events): events_total less history_events_total, and the latter
        self._samples: deque[tuple[float, float, float]] = deque(maxlen=RATE_SAMPLES + 1)
        self.history_rate: float | None = None  # backfilled events per second between the last two polls
        self._last_status: object = None
        self.rates: deque[float] = deque(maxlen=RATE_SAMPLES)

        self.events = Tile("events/s", "events accepted per second (status poll) — Connection panel")
        self.connection = Tile("connection", "the Redis connection — Connection panel")
        self.services = Tile("services", "services by state — Training panel (each service's model)")
        self.incidents = Tile("open incidents", "open incidents by severity — Incidents panel")
        self.detector = Tile("detector", "who scores the windows — Connection panel")
        self.spark = pg.PlotWidget(enableMenu=False)
        self.spark.setFixedSize(*SPARK_SIZE)
        self.spark.hideAxis("left")
        self.spark.hideAxis("bottom")
        self.spark.setMouseEnabled(x=False, y=False)
        self.spark.hideButtons()
        self.spark.setAttribute(QtCore.Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.spark.getPlotItem().setContentsMargins(0, 0, 0, 0)
        self.spark_curve = self.spark.plot(pen=pg.mkPen(self.palette().color(QtGui.QPalette.ColorRole.Highlight),
                                                        width=1.5))  # fmt: skip
        self.events.row.addWidget(self.spark)
        self.style_spark()

        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.setSpacing(6)
        for tile, panel in ((self.events, "connection"), (self.connection, "connection"),
                            (self.services, "training"), (self.incidents, "incidents"),
                            (self.detector, "connection")):  # fmt: skip
            tile.clicked.connect(lambda p=panel: self.open_panel.emit(p))
            layout.addWidget(tile)
        layout.addStretch(1)
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Fixed)

        state.connection.changed.connect(self.refresh_connection)
        state.services_changed.connect(self.refresh_services)
        state.training.changed.connect(self.refresh_services)
        state.incidents.changed.connect(self._incident_changed)
        self.clock = QtCore.QTimer(self)  # snoozes run out: an incident comes back without a message
        self.clock.setInterval(5_000)
        self.clock.timeout.connect(self.refresh_incidents)
        self.clock.start()
        self.refresh()

    # --- reading the state --------------------------------------------------------------------
    def refresh(self) -> None:
        """Every tile from the state as it is."""
        self.refresh_connection()
        self.refresh_services()
        self.refresh_incidents()

    def _incident_changed(self, *_args: object) -> None:
        self.refresh_incidents()
        self.refresh_services()  # a service with an open incident counts as anomalous

    def take_status(self, status: dict, now: float | None = None) -> None:
        """One status poll's counters: the events/s since the poll before."""
        total = status.get("events_total")
        if not isinstance(total, int | float):
            return
        history = status.get("history_events_total")
        history = float(history) if isinstance(history, int | float) else 0.0
        now = time.monotonic() if now is None else now
        live = float(total) - history
        if self._samples and (live < self._samples[-1][1] or history < self._samples[-1][2]):
            self._samples.clear()  # another server, or its counters were reset: no negative rate
        self._samples.append((now, live, history))
        if len(self._samples) >= 2:
            (t0, n0, h0), (t1, n1, h1) = self._samples[-2], self._samples[-1]
            if t1 > t0:
                self.rates.append((n1 - n0) / (t1 - t0))
                self.history_rate = (h1 - h0) / (t1 - t0)

    @property
    def events_per_second(self) -> float | None:
        """The rate between the last two polls (None before two polls)."""
        return self.rates[-1] if self.rates else None

    def refresh_connection(self) -> None:
        c = self.state.connection
        if c.status == "connected" and c.status_json is not self._last_status:
            self._last_status = c.status_json
            self.take_status(c.status_json)
        elif c.status != "connected":
            self._samples.clear()
            self.rates.clear()
            self.history_rate = None
            self._last_status = None
        rate = self.events_per_second
        text = "—" if rate is None else f"{rate:,.0f}" if rate >= 10 else f"{rate:,.1f}"
        if self.history_rate:  # a backfill is running: its pace beside the live rate, not in it
            self.events.set_value(f"<b>{text}</b> <small>+ {self.history_rate:,.0f} history</small>",
                                  f"{text} events per second, and {self.history_rate:,.0f} backfilled per second")
        else:
            self.events.set_value(f"<b>{text}</b>", f"{text} events per second")
        self.spark_curve.setData(np.arange(len(self.rates)), np.asarray(self.rates, dtype=float))
        good = QtGui.QColor(46, 139, 87) if c.status == "connected" else QtGui.QColor(192, 57, 43)
        word = _STATUS_WORDS.get(c.status, c.status)
        warn = " ⚠" if c.warnings and c.status == "connected" else ""
        self.connection.set_value(_chip(self._readable(good), f"{word}{warn}"), f"{word}{warn}")
        self.connection.setToolTip("; ".join([c.url, c.reason, *c.warnings]).strip("; ") or "the Redis connection")
        if c.status != "connected":
            self.detector.set_value("—", "unknown while not connected")
        elif c.detector:
            self.detector.set_value(_chip(self._readable(QtGui.QColor(46, 139, 87)), c.detector), c.detector)
        else:
            self.detector.set_value(_chip(self._readable(QtGui.QColor(192, 57, 43)), "none alive"),
                                    "no detector alive: nothing is scored")  # fmt: skip

    def service_counts(self) -> dict[str, int]:
        """How many services are in each state: anomalous (an open incident), normal, learning, stale, retired."""
        now = time.time()
        anomalous = {row.service for row in self.state.incidents.incidents.values()
                     if not row.incident.state_at(now).closed}  # fmt: skip
        models = self.state.training.services
        counts = dict.fromkeys(SERVICE_STATES, 0)
        for name in sorted(set(self.state.services) | set(models)):
            full = str(models.get(name, {}).get("state", "learning"))
            state = "learning" if full == READY_TO_TRAIN else full.split(" ")[0]  # no model scores it yet
            if state == "retired":
                counts["retired"] += 1
            elif name in anomalous:
                counts["anomalous"] += 1
            elif state == "ready":
                counts["normal"] += 1
            else:
                counts[state if state in counts else "learning"] += 1
        return counts

    def refresh_services(self, *_args: object) -> None:
        counts = self.service_counts()
        colours = {"anomalous": SEVERITY_COLOUR["critical"], "normal": QtGui.QColor(46, 139, 87),
                   "learning": SEVERITY_COLOUR["info"], "stale": SEVERITY_COLOUR["warning"],
                   "retired": QtGui.QColor(128, 128, 128)}  # fmt: skip
        shown = [(name, n) for name, n in counts.items() if n or name in ("anomalous", "normal")]
        html = " &nbsp;".join(_chip(self._readable(colours[name]), f"{n} {name}") for name, n in shown)
        self.services.set_value(html, ", ".join(f"{n} {name}" for name, n in shown))

    def incident_counts(self) -> dict[Severity, int]:
        """Incidents not closed (open, acknowledged, snoozed), by severity."""
        now = time.time()
        counts = dict.fromkeys(reversed(Severity), 0)
        for row in self.state.incidents.incidents.values():
            if not row.incident.state_at(now).closed:
                counts[row.severity] += 1
        return counts

    def refresh_incidents(self) -> None:
        counts = self.incident_counts()
        html = " &nbsp;".join(_chip(self._readable(SEVERITY_COLOUR[s.value]), f"<b>{n}</b> {s.value}")
                              for s, n in counts.items())  # fmt: skip
        self.incidents.set_value(html, ", ".join(f"{n} {s.value}" for s, n in counts.items()))

    # --- colours ------------------------------------------------------------------------------
    def _readable(self, colour: QtGui.QColor) -> QtGui.QColor:
        """`colour` adjusted to stand out from the window (a dark theme lightens it, keeping its hue)."""
        return theme.graphic_colour(colour, self.palette().color(QtGui.QPalette.ColorRole.Window))

    def style_spark(self) -> None:
        """The sparkline in the window's colours (called again when the palette changes)."""
        palette = self.palette()
        self.spark.setBackground(palette.color(QtGui.QPalette.ColorRole.Window))
        self.spark_curve.setPen(pg.mkPen(palette.color(QtGui.QPalette.ColorRole.Highlight), width=1.5))

    def changeEvent(self, event: QtCore.QEvent) -> None:
        if event.type() == QtCore.QEvent.Type.PaletteChange:
            self.style_spark()
            self.refresh()
        super().changeEvent(event)
