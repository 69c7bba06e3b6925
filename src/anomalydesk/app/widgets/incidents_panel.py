"""Incidents panel: the live incident table, operator actions, silences and a details view.

The table model reads `IncidentsState` (the stored incidents the alerts name: the alerts log at
start-up, then pub/sub); buttons call the `Actions` service, which writes to Redis and then updates
the state with the incident as stored.

The details plot of an open incident follows it: on the panel's clock, when the live buffer holds a
window newer than the plot, the service's live stream is read from the newest window plotted on, a
chunk at a time, however long the incident lasts; the plot keeps at most `DETAIL_PLOT_POINTS` points
(older windows are reduced to min/max time bins). A failed read is said in the panel and tried again
after 2 s, then twice as long each time up to 60 s, until one succeeds.

Why this module is long: it is one panel whose parts share one selection — the table model that holds
its rows still under the pointer and keeps the selection on its incident, its colours, the operator's
actions with the rules that enable them and the message about the selected incident, silences, and the
details view with the plot that follows an open incident; the plot and its follow are the next part to
move to a module of their own.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets
from qasync import asyncSlot

from anomalydesk.app.model.settings import (
    DETAIL_PLOT_POINTS,
    DETAIL_RETRY_CAP_SECONDS,
    DETAIL_RETRY_FIRST_SECONDS,
    INCIDENT_HOLD_GRACE_MS,
    INCIDENT_MESSAGE_SECONDS,
)
from anomalydesk.app.model.state import AppState, IncidentRow, IncidentsState
from anomalydesk.app.services.range_history import bin_width, downsample
from anomalydesk.app.widgets import theme
from anomalydesk.app.widgets.live_panel import axis_title
from anomalydesk.app.widgets.message_label import MessageLabel
from anomalydesk.app.widgets.theme import contrast
from anomalydesk.detect.incident_model import Incident, IncidentState, local_time, score_text
from anomalydesk.fingerprint import FEATURE_INDEX, FEATURES, shown_values

log = logging.getLogger(__name__)
COLUMNS = ("severity", "service", "score", "reason", "start", "duration", "state", "snoozed until")
COLUMN_WIDTHS = (64, 84, 44, 200, 170, 88, 136, 170)  # state: room for "open [silenced]"
# severity cells of incidents that still need attention; closed ones get a pale tint of the same hue
SEVERITY_COLOUR = {"info": QtGui.QColor(31, 95, 168), "warning": QtGui.QColor(240, 170, 40),
                   "critical": QtGui.QColor(183, 28, 28)}  # fmt: skip
SNOOZE_MORNING_HOUR = 8  # "until 08:00 tomorrow": the hour (local time) the longest snooze ends at
# -1: until the morning hour tomorrow (`seconds_until_tomorrow`); the label says the hour, as the snooze does
SNOOZE_CHOICES = (("15 minutes", 15 * 60), ("1 hour", 3600), (f"until {SNOOZE_MORNING_HOUR:02d}:00 tomorrow", -1))
SHORTCUTS = {"ack": "Ctrl+Shift+A", "snooze": "Ctrl+Shift+S", "resolve": "Ctrl+Shift+R",
             "false_positive": "Ctrl+Shift+F", "accept": "Ctrl+Shift+W", "next": "Ctrl+Shift+N"}  # fmt: skip
# what each action does, as its button's tooltip says while the selected incident can take it
ACTION_TIPS = {"ack": "Someone is on it: escalations are still notified",
               "snooze": "Mute its notifications for a while (its alerts are still logged)",
               "false_positive": "Not a real problem: it closes and its windows go back into the next training",
               "resolve": "Close it by hand",
               "accept": "This level shift is the service's normal now: the detector re-baselines and the next "
                         "training learns it"}  # fmt: skip
_ACTION_VERBS = {"ack": "acknowledge", "snooze": "snooze", "resolve": "resolve", "accept": "accept"}
SHORTCUT_SNOOZE_SECONDS = 3600  # the snooze shortcut's length (the button's menu offers the others)
VISIBLE_ROWS = 5  # the table is never shorter than this many rows
AA_CONTRAST = 4.5  # WCAG 2.x level AA for normal text
_CLOSED_TINT = 0.78  # how far a closed incident's severity colour is blended towards the table's base


def seconds_until_tomorrow(now: float | None = None) -> float:
    """Seconds from `now` until `SNOOZE_MORNING_HOUR` (08:00) local time tomorrow."""
    now = time.time() if now is None else now
    now_dt = dt.datetime.fromtimestamp(now)
    tomorrow = (now_dt + dt.timedelta(days=1)).replace(hour=SNOOZE_MORNING_HOUR, minute=0, second=0, microsecond=0)
    return tomorrow.timestamp() - now  # on the clock, also across a daylight-saving change overnight


def _blend(a: QtGui.QColor, b: QtGui.QColor, t: float) -> QtGui.QColor:
    """`a` moved the fraction `t` towards `b`."""
    return QtGui.QColor(round(a.red() + (b.red() - a.red()) * t), round(a.green() + (b.green() - a.green()) * t),
                        round(a.blue() + (b.blue() - a.blue()) * t))  # fmt: skip


def readable_on(background: QtGui.QColor, wanted: QtGui.QColor) -> QtGui.QColor:
    """`wanted` when it reads on `background` at AA contrast, else black or white, whichever reads better."""
    if contrast(wanted, background) >= AA_CONTRAST:
        return wanted
    black, white = QtGui.QColor(0, 0, 0), QtGui.QColor(255, 255, 255)
    return black if contrast(black, background) >= contrast(white, background) else white


def muted_text(text: QtGui.QColor, base: QtGui.QColor) -> QtGui.QColor:
    """The text colour faded towards the base as far as AA contrast allows (closed incidents read quieter)."""
    for t in (0.45, 0.35, 0.25, 0.15, 0.0):
        colour = _blend(text, base, t)
        if contrast(colour, base) >= AA_CONTRAST + 0.1:
            return colour
    return readable_on(base, text)


def bounded(points: np.ndarray, window_s: float, limit: int) -> np.ndarray:
    """[time, value] rows in time order as they are, or, once more than `limit`, all but the newest
    quarter of `limit` reduced to min/max time bins (`range_history.downsample`) that take about half of
    it: a spike stays, the newest windows stay windows (the last point is the last window), memory is
    bounded."""
    if len(points) <= limit:
        return points
    bin_s = bin_width(float(points[0, 0]), float(points[-1, 0]), max(1, limit // 4), window_s)
    origin = math.floor(points[0, 0] / bin_s) * bin_s  # downsample's bins: the tail begins on a bin's edge
    edge = origin + math.floor((points[-max(1, limit // 4), 0] - origin) / bin_s) * bin_s
    head = points[:, 0] < edge
    if not head.any():
        return downsample(points, bin_s)
    return np.vstack([downsample(points[head], bin_s), points[~head]])


def action_refusal(action: str, incident: Incident, now: float) -> str | None:
    """Why the operator's `action` does not apply to `incident` at `now`, or None when it does: its button
    is greyed out with this as its tooltip (the core refuses most of the same, `detect.incidents`)."""
    state = incident.state_at(now)
    if action == "false_positive":
        if incident.kind == "level_shift":  # training ignores the mark for a shift: the decision is `accept`
            return "A level shift is accepted as the new normal or resolved, not marked a false positive"
        return "Already marked a false positive" if state is IncidentState.FALSE_POSITIVE else None
    if state.closed:
        return f"It is {state.label}: nothing left to {_ACTION_VERBS[action]}"
    if action == "ack" and incident.acked is not None:
        return f"Already acknowledged by {incident.acked.by}"
    if action == "accept" and incident.kind != "level_shift":
        return "Only a level shift can be accepted as the new normal (mark an anomaly a false positive instead)"
    return None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    if seconds < 86_400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86_400:,} d {seconds % 86_400 // 3600:02d} h"


def _newest_first(row: IncidentRow) -> tuple[float, str]:
    """The table's sort key, read in reverse: the newest start first (ties by id, so the order is total)."""
    return row.start, row.incident_id


def _runs(rows: list[int]) -> list[tuple[int, int]]:
    """Ascending row numbers as (first, last) runs of consecutive rows."""
    runs: list[tuple[int, int]] = []
    for row in rows:
        if runs and runs[-1][1] == row - 1:
            runs[-1] = (runs[-1][0], row)
        else:
            runs.append((row, row))
    return runs


class IncidentsModel(QtCore.QAbstractTableModel):
    """Rows are incidents, newest first.

    While the model is held (`hold`: the pointer is over the table) no row moves: a new incident waits,
    counted in `waiting`, and so does any re-sort, until the hold ends or `reload` shows them. Rows are
    inserted, removed and moved with Qt's row and layout signals, never a reset, so the view's selection
    stays on its incident whatever moves around it.
    """

    waiting_changed = QtCore.Signal(int)  # how many new incidents wait for the hold to end
    rows_moving = QtCore.Signal()  # rows are about to be inserted, removed or re-sorted …
    rows_moved = QtCore.Signal()  # … and now they are (the panel keeps the rows in view where they were)

    def __init__(self, incidents: IncidentsState, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self.incidents = incidents
        self.rows: list[IncidentRow] = []  # as shown: a row the state dropped stays until the hold ends
        self.ids: list[str] = []
        self._row_of: dict[str, int] = {}
        self.held = False
        self.waiting = 0
        self._layout_due = False  # the state has incidents, or an order, that the rows do not show yet
        self.reload()
        incidents.changed.connect(self._incident_changed)

    def hold(self, held: bool) -> None:
        """Keep every row where it is (True), or show what waited meanwhile (False)."""
        self.held = held
        if not held and self._layout_due:
            self.reload()

    def reload(self) -> None:
        """Show the state's incidents in order now, held or not (the rows that waited too)."""
        order = sorted(self.incidents.incidents.values(), key=_newest_first, reverse=True)
        self._layout_due = False
        self._set_waiting(0)
        if order == self.rows:
            return
        self.rows_moving.emit()
        wanted = {row.incident_id: row for row in order}
        self._remove([r for r, row in enumerate(self.rows) if wanted.get(row.incident_id) is not row])
        kept = sorted(self.rows, key=_newest_first, reverse=True)
        if kept != self.rows:  # a shown incident's start changed: moved, its persistent indexes with it
            self.layoutAboutToBeChanged.emit()
            before = self.persistentIndexList()
            old_ids = list(self.ids)
            self._set_rows(kept)
            self.changePersistentIndexList(before, [self.index(self._row_of[old_ids[i.row()]], i.column())
                                                    for i in before])  # fmt: skip
            self.layoutChanged.emit()
        for first, last in _runs([r for r, row in enumerate(order) if row.incident_id not in self._row_of]):
            self.beginInsertRows(QtCore.QModelIndex(), first, last)
            self._set_rows(self.rows[:first] + order[first : last + 1] + self.rows[first:])
            self.endInsertRows()
        self.rows_moved.emit()

    def _remove(self, rows: list[int]) -> None:
        for first, last in reversed(_runs(rows)):  # from the bottom up: the runs above keep their numbers
            self.beginRemoveRows(QtCore.QModelIndex(), first, last)
            self._set_rows(self.rows[:first] + self.rows[last + 1 :])
            self.endRemoveRows()

    def _set_rows(self, rows: list[IncidentRow]) -> None:
        self.rows = rows
        self.ids = [row.incident_id for row in rows]
        self._row_of = {incident_id: r for r, incident_id in enumerate(self.ids)}

    def _set_waiting(self, count: int) -> None:
        if count != self.waiting:
            self.waiting = count
            self.waiting_changed.emit(count)

    def _in_place(self, r: int) -> bool:
        """Row `r` still sorts between its neighbours."""
        key = _newest_first(self.rows[r])
        return ((r == 0 or _newest_first(self.rows[r - 1]) > key)
                and (r == len(self.rows) - 1 or key > _newest_first(self.rows[r + 1])))  # fmt: skip

    def _incident_changed(self, incident: IncidentRow) -> None:
        r = self._row_of.get(incident.incident_id)
        if r is not None and self.rows[r] is incident:
            self.dataChanged.emit(self.index(r, 0), self.index(r, len(COLUMNS) - 1))
            if not self._layout_due and len(self.rows) == len(self.incidents.incidents) and self._in_place(r):
                return  # the common case (the detector extended it, an action): nothing moves
        self._layout_due = True
        if self.held:
            self._set_waiting(sum(1 for incident_id in self.incidents.incidents if incident_id not in self._row_of))
        else:
            self.reload()

    def rowCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.ids)

    def columnCount(self, parent: QtCore.QModelIndex = QtCore.QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: QtCore.Qt.Orientation, role: int = 0) -> Any:
        if role == QtCore.Qt.ItemDataRole.DisplayRole and orientation == QtCore.Qt.Orientation.Horizontal:
            return COLUMNS[section].capitalize()
        return None

    def incident_at(self, row: int) -> IncidentRow | None:
        """The incident shown in `row`."""
        return self.rows[row] if 0 <= row < len(self.rows) else None

    def tick(self) -> None:
        """Repaint the duration and state columns (open incidents last longer, snoozes run out)."""
        if self.ids:
            first, last = COLUMNS.index("duration"), len(COLUMNS) - 1
            self.dataChanged.emit(self.index(0, first), self.index(len(self.ids) - 1, last),
                                  [QtCore.Qt.ItemDataRole.DisplayRole])  # fmt: skip

    def data(self, index: QtCore.QModelIndex, role: int = 0) -> Any:
        inc = self.incident_at(index.row())
        if inc is None:
            return None
        column = COLUMNS[index.column()]
        roles = QtCore.Qt.ItemDataRole
        if role == roles.DisplayRole:
            return self._text(inc, column)
        if role == roles.BackgroundRole:
            return self._background(inc, column)
        if role == roles.ForegroundRole:
            return self._foreground(inc, column)
        if role == roles.FontRole:
            font = QtGui.QFont(QtWidgets.QApplication.font())
            font.setBold(column == "severity" and not inc.incident.state_at(time.time()).closed)
            return font
        if role == roles.ToolTipRole:
            return "\n".join(r.get("text", "") for r in inc.reasons if isinstance(r, dict)) or inc.message
        return None

    @staticmethod
    def _text(inc: IncidentRow, column: str) -> str:
        now = time.time()
        if column == "score":
            return score_text(inc.score)
        if column == "start":
            return local_time(inc.start)
        if column == "duration":
            return _duration(inc.duration)
        if column == "state":  # with the CLI's marks: "open [silenced]", "resolved [acked]"
            marks = inc.incident.marks_text(now)
            return f"{inc.incident.state_at(now).label} {marks}" if marks else inc.incident.state_at(now).label
        if column == "snoozed until":
            until = inc.incident.snoozed_until_epoch
            return local_time(until) if until and inc.incident.state_at(now) is IncidentState.SNOOZED else ""
        return str(getattr(inc, column))

    @staticmethod
    def _palette() -> tuple[QtGui.QColor, QtGui.QColor]:
        palette = QtWidgets.QApplication.palette()
        return palette.color(QtGui.QPalette.ColorRole.Base), palette.color(QtGui.QPalette.ColorRole.Text)

    def _background(self, inc: IncidentRow, column: str) -> QtGui.QColor:
        base, _text = self._palette()
        if column != "severity":
            return base
        colour = SEVERITY_COLOUR.get(inc.severity, SEVERITY_COLOUR["info"])
        return _blend(colour, base, _CLOSED_TINT) if inc.incident.state_at(time.time()).closed else colour

    def _foreground(self, inc: IncidentRow, column: str) -> QtGui.QColor:
        base, text = self._palette()
        background = self._background(inc, column)
        closed = inc.incident.state_at(time.time()).closed
        return readable_on(background, muted_text(text, base) if closed else text)


class IncidentsPanel(QtWidgets.QWidget):
    """Table + actions + silences + details of the selected incident.

    The table holds still while the pointer is over it (`IncidentsModel.hold`), so a click lands on the
    row it was aimed at; a hint under it counts the incidents that arrived meanwhile (notified at once all
    the same) and shows them when clicked, else they are shown once the pointer has left for
    INCIDENT_HOLD_GRACE_MS. The message beside the buttons belongs to the selected incident.
    """

    incident_chosen = QtCore.Signal(object)  # IncidentRow: the selection moved to it (a refresh that kept it is not)

    def __init__(self, state: AppState, actions: Any, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self.actions = actions
        self.model = IncidentsModel(state.incidents, self)
        self.table = QtWidgets.QTableView()
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
        header = self.table.horizontalHeader()
        header.setStretchLastSection(False)
        for column, width in zip(COLUMNS, COLUMN_WIDTHS, strict=True):
            self.table.setColumnWidth(COLUMNS.index(column), width)
        header.setSectionResizeMode(COLUMNS.index("reason"), QtWidgets.QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.setWordWrap(False)
        self.table.setTextElideMode(QtCore.Qt.TextElideMode.ElideRight)
        rows = self.table.verticalHeader().defaultSectionSize() * VISIBLE_ROWS
        scrollbar = self.table.style().pixelMetric(QtWidgets.QStyle.PixelMetric.PM_ScrollBarExtent)
        self.table.setMinimumHeight(header.sizeHint().height() + rows + scrollbar + 2 * self.table.frameWidth())
        self.table.selectionModel().selectionChanged.connect(self._selection_changed)
        self.table.clicked.connect(self._row_clicked)
        self.clock = QtCore.QTimer(self)  # live durations and snoozes that run out
        self.clock.setInterval(1000)
        self.clock.timeout.connect(self._tick)
        self.clock.start()
        state.incidents.changed.connect(self._row_changed)
        self._selected_id: str | None = None  # the incident chosen last (`incident_chosen`)
        self._acting: set[str] = set()  # incidents with an operator's action in flight: their buttons wait
        self.release_delay = QtCore.QTimer(self)  # the pointer left the table: what waited is shown after this
        self.release_delay.setSingleShot(True)
        self.release_delay.setInterval(INCIDENT_HOLD_GRACE_MS)
        self.release_delay.timeout.connect(self._release_if_away)
        self._top_row: tuple[str, int] | None = None  # the incident at the top of a scrolled view, and its y
        self.model.rows_moving.connect(self._remember_top_row)
        self.model.rows_moved.connect(self._keep_top_row)
        self.model.waiting_changed.connect(self._show_waiting_count)

        self.ack_button = QtWidgets.QPushButton("Acknowledge")
        self.ack_button.clicked.connect(lambda: self.run_action("ack"))
        self.snooze_button = QtWidgets.QToolButton(text="Snooze")
        self.snooze_button.setPopupMode(QtWidgets.QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QtWidgets.QMenu(self)
        self.snooze_actions = {}
        for label, seconds in SNOOZE_CHOICES:
            action = menu.addAction(label)
            action.triggered.connect(lambda _=False, s=seconds: self.run_action("snooze", s))
            self.snooze_actions[label] = action
        self.snooze_button.setMenu(menu)
        self.fp_button = QtWidgets.QPushButton("False positive")
        self.fp_button.clicked.connect(lambda: self.run_action("false_positive"))
        self.resolve_button = QtWidgets.QPushButton("Resolve")
        self.resolve_button.clicked.connect(lambda: self.run_action("resolve"))
        # a level shift (issue 17): the operator decides whether the new level is the service's normal now
        self.accept_button = QtWidgets.QPushButton("Accept new normal")
        self.accept_button.clicked.connect(lambda: self.run_action("accept"))
        # what the last action did, or why it failed, about the incident `_message_about` names (None: the
        # panel, e.g. silences): cleared when the selection moves, when the incident leaves the state a
        # confirmation named (`_message_confirms`), and a confirmation after `message_seconds`
        self.status_label = MessageLabel("")
        self._message_about: str | None = None
        self._message_confirms: IncidentState | None = None
        self.message_seconds = INCIDENT_MESSAGE_SECONDS
        self.message_expiry = QtCore.QTimer(self)
        self.message_expiry.setSingleShot(True)
        self.message_expiry.timeout.connect(self._clear_message)
        # at the row's right end, after the message (which elides): showing it moves no button
        self.waiting_hint = QtWidgets.QToolButton()
        self.waiting_hint.setAutoRaise(True)
        self.waiting_hint.setStyleSheet("QToolButton { color: palette(link); font-weight: bold; }")  # reads as a link
        self.waiting_hint.setToolTip("New incidents wait while the pointer is over the list, so the row you aim "
                                     "at stays where it is; they are shown when the pointer leaves it. Click to "
                                     "show them now.")
        self.waiting_hint.clicked.connect(self.show_waiting)
        self.waiting_hint.setVisible(False)
        self.shortcut_actions = self._shortcuts()
        buttons = QtWidgets.QHBoxLayout()
        for w in (self.ack_button, self.snooze_button, self.fp_button, self.resolve_button, self.accept_button):
            buttons.addWidget(w)
        buttons.addWidget(self.status_label, 1)
        buttons.addWidget(self.waiting_hint)
        self._action_widgets: dict[str, tuple[Any, ...]] = {
            "ack": (self.ack_button, self.shortcut_actions["ack"]),
            "snooze": (self.snooze_button, self.shortcut_actions["snooze"], *self.snooze_actions.values()),
            "false_positive": (self.fp_button, self.shortcut_actions["false_positive"]),
            "resolve": (self.resolve_button, self.shortcut_actions["resolve"]),
            "accept": (self.accept_button, self.shortcut_actions["accept"]),
        }  # fmt: skip
        for watched in (self.table, self.waiting_hint):  # the pointer over either holds the table still
            watched.installEventFilter(self)

        # silences
        self.silence_pattern = QtWidgets.QLineEdit(placeholderText="service pattern, e.g. payments or svc-*")
        self.silence_hours = QtWidgets.QDoubleSpinBox(minimum=0.05, maximum=720.0, value=1.0, suffix=" h")
        self.silence_reason = QtWidgets.QLineEdit(placeholderText="reason (maintenance …)")
        self.silence_add = QtWidgets.QPushButton("Add silence")
        self.silence_add.clicked.connect(self._add_silence)
        self.silence_list = QtWidgets.QListWidget()
        self.silence_list.setMaximumHeight(64)
        self.silence_remove = QtWidgets.QPushButton("Remove silence")
        self.silence_remove.clicked.connect(self._remove_silence)
        silences = QtWidgets.QGroupBox("Silences (mute notifications; incidents are still recorded)")
        sl = QtWidgets.QGridLayout(silences)
        sl.addWidget(self.silence_pattern, 0, 0)
        sl.addWidget(self.silence_hours, 0, 1)
        sl.addWidget(self.silence_reason, 0, 2)
        sl.addWidget(self.silence_add, 0, 3)
        sl.addWidget(self.silence_list, 1, 0, 1, 3)
        sl.addWidget(self.silence_remove, 1, 3)

        # details
        self.details = QtWidgets.QTextBrowser()
        self.details.setMinimumWidth(200)
        self.details.setPlaceholderText("Select an incident to see why it was raised.")
        self.detail_plot = pg.PlotWidget(axisItems={"bottom": pg.DateAxisItem()})
        self.detail_usual: tuple[float, float] | None = None  # the shaded usual range of the plotted feature
        # while the plotted incident is open its plot follows new windows (`_follow_details`, on the clock)
        self._detail_curve: pg.PlotDataItem | None = None
        self._detail_region: pg.LinearRegionItem | None = None
        self._detail_points = np.empty((0, 2))  # [time, value] plotted, at most `detail_limit` rows
        self.detail_limit = DETAIL_PLOT_POINTS
        self._detail_after = 0.0  # the newest window start read from the live stream: the follow reads on from it
        self._detail_until = 0.0  # the newest window start covered (read, or the live buffer's when read)
        self._detail_following = False  # a read for the plot is in flight
        self._detail_generation = 0  # moves on with every plot: a read begun for an earlier one is dropped
        self.follow_retry = QtCore.QTimer(self)  # a failed follow read is tried again when this fires
        self.follow_retry.setSingleShot(True)
        self.follow_retry.timeout.connect(self._follow_if_due)
        self.follow_backoff = DETAIL_RETRY_FIRST_SECONDS  # the wait after the next failed read
        self.detail_plot.setMinimumHeight(140)
        self.detail_plot.addLegend(offset=(5, 5))
        self.detail_plot.setVisible(False)  # until an incident is plotted (empty, its axis read "00.250" of 1970)
        self._style_detail_plot()
        detail = QtWidgets.QWidget()
        dl = QtWidgets.QVBoxLayout(detail)
        dl.setContentsMargins(0, 0, 0, 0)
        dl.addWidget(self.details, 1)
        dl.addWidget(self.detail_plot, 1)

        left = QtWidgets.QWidget()
        ll = QtWidgets.QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(self.table, 1)
        ll.addLayout(buttons)
        ll.addWidget(silences)
        splitter = QtWidgets.QSplitter()
        splitter.addWidget(left)
        splitter.addWidget(detail)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([900, 380])
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(splitter)
        self._update_buttons()

    def _style_detail_plot(self) -> None:
        colours = theme.plot_colours(self.palette())
        self.detail_plot.setBackground(colours.background)
        theme.style_plot(self.detail_plot.getPlotItem(), colours)

    def changeEvent(self, event: QtCore.QEvent) -> None:
        if event.type() == QtCore.QEvent.Type.PaletteChange and hasattr(self, "detail_plot"):
            self._style_detail_plot()  # the system switched light ↔ dark
        super().changeEvent(event)

    def stop(self) -> None:
        """Stop the clock of the live durations and the plot's retry (the app shuts down)."""
        self.clock.stop()
        self.follow_retry.stop()
        self.release_delay.stop()
        self.message_expiry.stop()

    def forget(self) -> None:
        """Show the (emptied) incidents state afresh: the app switched servers."""
        self.model.reload()
        self.details.clear()
        self._drop_detail_plot()
        self.detail_plot.setVisible(False)
        self._selected_id = None
        self._acting.clear()
        self._clear_message()
        self._update_buttons()

    # --- the table holds still under the pointer ----------------------------------------------
    def eventFilter(self, watched: QtCore.QObject, event: QtCore.QEvent) -> bool:
        if watched is self.table or watched is self.waiting_hint:
            if event.type() == QtCore.QEvent.Type.Enter:
                self.release_delay.stop()
                self.model.hold(True)
            elif event.type() == QtCore.QEvent.Type.Leave:
                self.release_delay.start()  # not at once: on its way to the hint, or back, the pointer crosses a gap
        return super().eventFilter(watched, event)

    def hideEvent(self, event: QtGui.QHideEvent) -> None:
        self.model.hold(False)  # hidden (a closed dock, the tray) the pointer is over nothing here
        super().hideEvent(event)

    def _release_if_away(self) -> None:
        if not (self.table.underMouse() or self.waiting_hint.underMouse()):
            self.model.hold(False)

    def show_waiting(self) -> None:
        """Show the incidents that waited under the pointer (the hint's click): the newest, at the top, in view."""
        self.model.reload()
        self.table.scrollToTop()

    def _show_waiting_count(self, count: int) -> None:
        self.waiting_hint.setText(f"▲ {count} new incident{'' if count == 1 else 's'}")
        self.waiting_hint.setVisible(count > 0)

    def _remember_top_row(self) -> None:
        """Before rows move: the incident at the top of a view the user scrolled down (at the top, the view
        stays there and new incidents come into it)."""
        top = self.table.rowAt(0)
        inc = self.model.incident_at(top)
        scrolled = self.table.verticalScrollBar().value() > 0
        self._top_row = (inc.incident_id, self.table.rowViewportPosition(top)) if scrolled and inc else None

    def _keep_top_row(self) -> None:
        """After rows moved: the incident that was at the top of the scrolled view is there again."""
        if self._top_row is None or self._top_row[0] not in self.model.ids:
            return
        incident_id, y = self._top_row
        row = self.model.ids.index(incident_id)
        self.table.updateGeometries()  # the scroll bar's range takes the new rows now, not at the next layout
        bar = self.table.verticalScrollBar()
        if self.table.verticalScrollMode() == QtWidgets.QAbstractItemView.ScrollMode.ScrollPerItem:
            bar.setValue(row)
        else:
            bar.setValue(bar.value() + self.table.rowViewportPosition(row) - y)

    # --- the message beside the buttons -------------------------------------------------------
    def _tell(self, text: str, about: str | None = None, *, lasting: bool = False,
              confirms: IncidentState | None = None) -> None:  # fmt: skip
        """Show `text` beside the buttons, about the incident `about` (None: about the panel); it goes after
        `message_seconds` unless `lasting` (an error, an action under way), and when the incident leaves
        the state it `confirms`."""
        self.status_label.setText(text)
        self._message_about = about
        self._message_confirms = confirms
        if lasting:
            self.message_expiry.stop()
        else:
            self.message_expiry.start(round(self.message_seconds * 1000))

    def _clear_message(self) -> None:
        self.message_expiry.stop()
        self.status_label.setText("")
        self._message_about = self._message_confirms = None

    def _drop_stale_message(self, inc: IncidentRow) -> None:
        """A confirmation of a state `inc` has left since (the detector resolved it, a snooze ran out) goes."""
        confirms, about = self._message_confirms, self._message_about
        if confirms is not None and about == inc.incident_id and inc.incident.state_at(time.time()) is not confirms:
            self._clear_message()

    # --- selection ----------------------------------------------------------------------------
    def selected(self) -> IncidentRow | None:
        """The selected incident, if any."""
        rows = self.table.selectionModel().selectedRows()
        return self.model.incident_at(rows[0].row()) if rows else None

    def select_incident(self, incident_id: str) -> bool:
        """Select and reveal an incident (the tray's click lands here), shown at once if it waited under the pointer."""
        if incident_id not in self.model.ids and incident_id in self.state.incidents.incidents:
            self.model.reload()
        if incident_id not in self.model.ids:
            return False
        row = self.model.ids.index(incident_id)
        self.table.selectRow(row)
        self.table.scrollTo(self.model.index(row, 0))
        return True

    def _row_clicked(self, index: QtCore.QModelIndex) -> None:
        """A click on an incident chooses it, the one already selected too: the live plot, moved to another
        service since, shows its service again (a click that changed the selection chose it on the press
        as well; showing the same service twice changes nothing)."""
        inc = self.model.incident_at(index.row())
        if inc is not None and inc.incident_id == self._selected_id:
            self.incident_chosen.emit(inc)

    def _selection_changed(self, *_args: object) -> None:
        inc = self.selected()
        chosen = None if inc is None else inc.incident_id
        if chosen != self._selected_id:
            self._selected_id = chosen
            self._clear_message()  # it was about the incident selected before, or about none
            if inc is not None:
                self.incident_chosen.emit(inc)
        self._update_buttons()
        if inc is not None:
            self.show_details(inc)

    def _row_changed(self, row: IncidentRow) -> None:
        """A shown incident changed (an action, the detector): its details header, buttons and message follow."""
        if self.selected() is row:
            self._render_details(row)
            self._update_buttons()
            self._drop_stale_message(row)
            if self._detail_region is not None:  # the detector extended it: its span on the plot too
                self._detail_region.setRegion((row.start, row.last + 1))

    def _tick(self) -> None:
        self.model.tick()
        inc = self.selected()
        if inc is not None and inc.state is IncidentState.SNOOZED and not inc.incident.snoozed_at(time.time()):
            self._render_details(inc)  # the snooze ran out: the header says so
        if inc is not None:
            self._update_buttons()  # a snooze that ran out: its tooltip
            self._drop_stale_message(inc)
        self._follow_if_due()

    def _follow_if_due(self) -> None:
        """Read the plotted incident's new windows when the live buffer holds one the plot does not: while
        the incident is open, and once it closed until the plot reaches its last window. Not while a read
        is in flight, nor while a failed one waits to be tried again (`follow_retry`)."""
        inc = self.selected()
        if inc is None or self._detail_curve is None or self._detail_following or self.follow_retry.isActive():
            return
        if not inc.incident.is_open and self._detail_until >= inc.last - inc.window_seconds:
            return
        newest = self._newest_window(inc.service)
        if newest is not None and newest > self._detail_until:
            self._follow_details(inc, newest)  # the incident is still going: so is its plot

    def _newest_window(self, service: str) -> float | None:
        """The newest window start the live buffers hold for `service` (the fingerprint reader fills them)."""
        buf = self.state.live.buffers.get(service)
        last = buf.last() if buf is not None else None
        return None if last is None else float(last[0])

    def _update_buttons(self) -> None:
        """Each action's button, menu items and shortcut are enabled only while the selected incident can
        take it now (`action_refusal`); a greyed-out button says why in its tooltip."""
        inc = self.selected()
        now = time.time()
        for name, widgets in self._action_widgets.items():
            if inc is None:
                why = "Select an incident first"
            elif inc.incident_id in self._acting:
                why = "Waiting for the last action on this incident to be stored"
            else:
                why = action_refusal(name, inc.incident, now)
            for widget in widgets:
                widget.setEnabled(why is None)
            tip = ACTION_TIPS[name]
            if why is None and name == "snooze" and inc is not None and inc.incident.snoozed_at(now):
                state = inc.state_text(now)  # "snoozed until …"
                tip = f"{state[0].upper()}{state[1:]}: choose a length to snooze it again from now"
            widgets[0].setToolTip(f"{why or tip} ({SHORTCUTS[name]})")

    def _shortcuts(self) -> dict[str, QtGui.QAction]:
        """Window-wide keys for the selected incident (the main window lists them in its Incidents menu)."""
        found: dict[str, QtGui.QAction] = {}
        for name, label, slot in (
            ("ack", "Acknowledge", lambda: self.run_action("ack")),
            ("snooze", "Snooze for 1 hour", lambda: self.run_action("snooze", SHORTCUT_SNOOZE_SECONDS)),
            ("resolve", "Resolve", lambda: self.run_action("resolve")),
            ("false_positive", "Mark false positive", lambda: self.run_action("false_positive")),
            ("accept", "Accept level shift as new normal", lambda: self.run_action("accept")),
            ("next", "Next incident needing attention", self.select_next),
        ):  # fmt: skip
            action = QtGui.QAction(label, self)
            action.setShortcut(QtGui.QKeySequence(SHORTCUTS[name]))
            action.setShortcutContext(QtCore.Qt.ShortcutContext.WindowShortcut)
            action.triggered.connect(slot)
            self.addAction(action)
            found[name] = action
        return found

    def select_next(self) -> IncidentRow | None:
        """Select the next incident below the selection that still needs attention (open or acknowledged,
        or a snooze that ran out), wrapping around; None when there is none."""
        if self.model.waiting:
            self.model.reload()  # asked for the next one: those waiting under the pointer count too
        current = self.selected()
        ids = self.model.ids
        start = ids.index(current.incident_id) + 1 if current is not None and current.incident_id in ids else 0
        now = time.time()
        for k in range(len(ids)):
            inc = self.model.incident_at((start + k) % len(ids))
            if inc is not None and inc.incident.state_at(now) in (IncidentState.OPEN, IncidentState.ACKNOWLEDGED):
                self.select_incident(inc.incident_id)
                return inc
        self._tell("no incident needs attention")
        return None

    # --- actions ------------------------------------------------------------------------------
    def run_action(self, action: str, seconds: float = 0.0) -> None:
        """Apply an operator action to the incident selected now (at the click, not when the task runs)."""
        inc = self.selected()
        if inc is None:
            self._tell("select an incident first")
            return
        if inc.incident_id in self._acting:
            return  # a second click while the first is stored (its buttons are greyed out meanwhile)
        refusal = action_refusal(action, inc.incident, time.time())
        if refusal is not None:
            self._tell(f"{inc.incident_id}: {refusal[0].lower()}{refusal[1:]}", inc.incident_id)
            return
        if action == "snooze" and seconds < 0:
            seconds = seconds_until_tomorrow()
        self._acting.add(inc.incident_id)
        self._update_buttons()
        self._tell(f"{action.replace('_', ' ')} {inc.incident_id} …", inc.incident_id, lasting=True)
        self._apply(action, inc, seconds)

    @asyncSlot()
    async def _apply(self, action: str, inc: IncidentRow, seconds: float) -> None:
        """Store the action; what it did is said in the status bar, and beside the buttons while the
        incident is still the one selected (the operator may have moved on meanwhile)."""
        try:
            await self.actions.incident_action(action, inc.incident_id, seconds)
        except Exception as err:  # shown to the operator, not swallowed
            words = f"{inc.incident_id}: {action.replace('_', ' ')} failed: {err}"
            self.state.say(words)
            if self._selected_id == inc.incident_id:
                self._tell(words, inc.incident_id, lasting=True)
            return
        finally:
            self._acting.discard(inc.incident_id)
            self._update_buttons()
        row = self.state.incidents.incidents.get(inc.incident_id, inc)
        words = f"{row.incident_id}: {row.state_text()}"
        self.state.say(words)
        if self._selected_id == row.incident_id:
            self._tell(words, row.incident_id, confirms=row.incident.state_at(time.time()))

    @asyncSlot()
    async def refresh_silences(self) -> None:
        """Reload the silences list from Redis."""
        try:
            silences = await self.actions.silences()
        except Exception as err:
            self._tell(f"silences: {err}", lasting=True)
            return
        self.silence_list.clear()
        for s in silences:
            item = QtWidgets.QListWidgetItem(f"{s.pattern} until {local_time(s.end)} — {s.reason} ({s.by})")
            item.setData(QtCore.Qt.ItemDataRole.UserRole, s.id)
            self.silence_list.addItem(item)

    @asyncSlot()
    async def _add_silence(self) -> None:
        try:
            silence = await self.actions.add_silence(
                self.silence_pattern.text().strip(), self.silence_hours.value() * 3600, self.silence_reason.text())
        except Exception as err:
            self._tell(f"silence not added: {err}", lasting=True)
            return
        self.silence_reason.clear()
        words = f"silence added: {silence.pattern} muted until {local_time(silence.end)}"
        self._tell(words)
        self.state.say(words)
        self.refresh_silences()

    @asyncSlot()
    async def _remove_silence(self) -> None:
        item = self.silence_list.currentItem()
        if item is None:
            return
        pattern = item.text().split(" until ")[0]
        try:
            await self.actions.remove_silence(item.data(QtCore.Qt.ItemDataRole.UserRole))
        except Exception as err:
            self._tell(f"silence not removed: {err}", lasting=True)
            return
        words = f"silence removed: {pattern} notifies again"
        self._tell(words)
        self.state.say(words)
        self.refresh_silences()

    # --- details ------------------------------------------------------------------------------
    def show_details(self, inc: IncidentRow) -> None:
        """Reasons as text, and the involved features around the incident (fetched on demand)."""
        self._render_details(inc)
        self._plot_details(inc)

    def _render_details(self, inc: IncidentRow) -> None:
        """The details text; its header names the incident's state now (acknowledged, snoozed until …)."""
        marks = inc.incident.marks_text(time.time())
        state = f"{inc.state_text()} {marks}" if marks else inc.state_text()
        header = f"{inc.severity.upper()}</b> — {inc.service} — score {score_text(inc.score)} — {state}"
        # the windows it spans as times, as the table's start column has them (window numbers, "window
        # 359201234", told an operator nothing): from the first window's start to the last one's end
        lines = [f"<p><b>{header}</p>",
                 f"<p>Incident {inc.incident_id}: {inc.alerts} alert(s), from {local_time(inc.start)} "
                 f"to {local_time(inc.last)}</p>", "<ul>"]  # fmt: skip
        for reason in inc.reasons:
            if isinstance(reason, dict):
                lines.append(f"<li>{reason.get('text') or reason.get('feature')}</li>")
        lines.append("</ul>")
        if inc.message:
            lines.append(f"<i>{inc.message}</i>")
        self.details.setHtml("\n".join(lines))

    @staticmethod
    def _plotted_feature(inc: IncidentRow) -> str | None:
        """The incident's leading feature that the details plot shows, if it names one."""
        features = [r.get("feature") for r in inc.reasons if isinstance(r, dict) and r.get("feature") in FEATURE_INDEX]
        return str(features[0]) if features else None

    @staticmethod
    def _detail_span(inc: IncidentRow) -> tuple[float, float]:
        """The times the first read of the plot covers: around the incident (the follow reads on from there)."""
        margin = max(60.0, inc.last - inc.start)
        return inc.start - margin, inc.last + margin

    @staticmethod
    def _feature_values(rows: np.ndarray, name: str) -> np.ndarray:
        """The feature's column in its own unit (% for ratios)."""
        factor = 100.0 if FEATURES[FEATURE_INDEX[name]].unit == "%" else 1.0
        return shown_values(rows[:, 1:])[:, FEATURE_INDEX[name]] * factor  # NaN without requests: no 0 ms

    @asyncSlot()
    async def _follow_details(self, inc: IncidentRow, newest: float) -> None:
        """New windows of the open incident's service, read from the newest one plotted on, a chunk at a
        time: the curve and the incident's span follow them. The view follows too unless the user zoomed
        or panned it (pyqtgraph then turns its auto-range off; the plot's "A" button or selecting the
        incident again brings it back)."""
        name = self._plotted_feature(inc)
        if name is None:
            return
        generation = self._detail_generation
        self._detail_following = True
        try:
            while True:
                found = await self.actions.fingerprints_after(inc.service, self._detail_after)
                if generation != self._detail_generation:
                    return  # another plot (another incident, or this one shown again) took over
                self._detail_after = found.read_to
                if found.rows.size:
                    self._extend_detail(found.rows, name, inc.window_seconds)
                if not found.more:
                    break
        except Exception as err:  # Redis away: said, and tried again later (`_follow_failed`)
            if generation == self._detail_generation:
                self._follow_failed(err)
            return
        finally:
            self._detail_following = False
        if self.follow_backoff != DETAIL_RETRY_FIRST_SECONDS:
            self._tell("details plot: following new windows again", inc.incident_id)
        self.follow_backoff = DETAIL_RETRY_FIRST_SECONDS
        if self._detail_region is not None:
            self._detail_region.setRegion((inc.start, inc.last + 1))
        self._detail_until = max(newest, self._detail_after)

    def _extend_detail(self, rows: np.ndarray, name: str, window_s: float) -> None:
        """Windows read after those plotted: onto the curve, which stays within `detail_limit` points."""
        points = np.column_stack([rows[:, 0], self._feature_values(rows, name)])
        self._detail_points = bounded(np.vstack([self._detail_points, points]), window_s, self.detail_limit)
        if self._detail_curve is not None:
            self._detail_curve.setData(self._detail_points[:, 0], self._detail_points[:, 1])

    def _follow_failed(self, err: Exception) -> None:
        """A read of new windows failed: said in the panel (and once in the status bar), and tried again
        after `follow_backoff`, which doubles up to DETAIL_RETRY_CAP_SECONDS (the clock's tick had tried
        again every second for as long as Redis was away)."""
        delay = self.follow_backoff
        first = delay == DETAIL_RETRY_FIRST_SECONDS
        self.follow_backoff = min(delay * 2, DETAIL_RETRY_CAP_SECONDS)
        self.follow_retry.start(round(delay * 1000))
        reason = str(err) or type(err).__name__
        words = f"details plot: reading new windows failed ({reason}); trying again in {delay:g} s"
        self._tell(words, self._selected_id, lasting=True)  # the plot is the selected incident's
        if first:
            self.state.say(words)
        log.info("%s", words)

    def _drop_detail_plot(self) -> None:
        """Nothing plotted any more (another incident is about to be, or another server): a read or a
        retry for the old plot does not apply."""
        self.detail_plot.clear()
        self._detail_curve = self._detail_region = None
        self._detail_points = np.empty((0, 2))
        self._detail_generation += 1
        self.follow_retry.stop()
        self.follow_backoff = DETAIL_RETRY_FIRST_SECONDS

    @asyncSlot()
    async def _plot_details(self, inc: IncidentRow) -> None:
        name = self._plotted_feature(inc)
        self._drop_detail_plot()
        generation = self._detail_generation
        self.detail_plot.enableAutoRange()  # another incident: shown whole, whatever the last one's zoom was
        if name is None:
            self.detail_plot.setVisible(False)
            return
        try:
            rows, normal = await self.actions.normal_window(inc.service, *self._detail_span(inc))
        except Exception as err:
            if generation == self._detail_generation:  # still the plot of the incident selected
                self._tell(f"details: {err}", inc.incident_id, lasting=True)
            return
        if self.selected() is not inc or rows.size == 0 or generation != self._detail_generation:
            return
        # the incident's leading feature in its own unit, its usual range shaded: the normal windows before
        # it (an earlier incident's windows left out as training leaves them out: they would widen it)
        feature = FEATURES[FEATURE_INDEX[name]]
        values = self._feature_values(rows, name)
        before = values[(rows[:, 0] < inc.start) & normal]
        if before.size >= 3:
            low, high = (float(v) for v in np.nanpercentile(before, [5, 95]))
            usual = pg.LinearRegionItem(values=(low, high), orientation="horizontal", movable=False,
                                        brush=pg.mkBrush(80, 160, 80, 60), pen=pg.mkPen(None))  # fmt: skip
            usual.setToolTip("usual range: 5th–95th percentile of the normal windows before the incident "
                             "(other incidents' windows left out unless marked false positive)")
            self.detail_plot.addItem(usual)
            self.detail_usual = (low, high)
        else:
            self.detail_usual = None
        self._detail_points = bounded(np.column_stack([rows[:, 0], values]), inc.window_seconds, self.detail_limit)
        self._detail_curve = self.detail_plot.plot(self._detail_points[:, 0], self._detail_points[:, 1],
                                                   pen=pg.mkPen(pg.intColor(0, hues=4), width=1.5),
                                                   name=feature.label)  # fmt: skip
        # what the read covered: the follow reads the live stream on from its newest window once the live
        # buffer holds a newer one (on the clock's tick: also those that came during this read)
        self._detail_after = self._detail_until = float(rows[-1, 0])
        self.detail_plot.setTitle(axis_title(feature.label, feature.unit), size="9pt",
                                  color=theme.plot_colours(self.palette()).foreground)  # fmt: skip
        self.detail_plot.setVisible(True)
        self.detail_plot.getAxis("left").enableAutoSIPrefix(False)
        self._detail_region = pg.LinearRegionItem(values=(inc.start, inc.last + 1), movable=False,
                                                  brush=pg.mkBrush(220, 50, 50, 50))  # fmt: skip
        self.detail_plot.addItem(self._detail_region)
