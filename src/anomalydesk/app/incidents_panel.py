"""Incidents panel: the live incident table, operator actions, silences and a details view.

The table model reads `IncidentsState` (the stored incidents the alerts name: the alerts log at
start-up, then pub/sub); buttons call the `Actions` service, which writes to Redis and then updates
the state with the incident as stored.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets
from qasync import asyncSlot

from anomalydesk.app.state import AppState, IncidentRow, IncidentsState
from anomalydesk.fingerprint import FEATURE_INDEX

COLUMNS = ("severity", "service", "score", "reason", "start", "duration", "state")
SEVERITY_COLOUR = {"info": QtGui.QColor(80, 140, 220), "warning": QtGui.QColor(240, 170, 40),
                   "critical": QtGui.QColor(220, 50, 50)}  # fmt: skip
SNOOZE_CHOICES = (("15 minutes", 15 * 60), ("1 hour", 3600), ("until tomorrow", -1))


def seconds_until_tomorrow(now: float | None = None) -> float:
    """Seconds from `now` until 08:00 local time tomorrow."""
    now_dt = dt.datetime.fromtimestamp(time.time() if now is None else now)
    tomorrow = (now_dt + dt.timedelta(days=1)).replace(hour=8, minute=0, second=0, microsecond=0)
    return (tomorrow - now_dt).total_seconds()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class IncidentsModel(QtCore.QAbstractTableModel):
    """Rows are incidents, newest first."""

    def __init__(self, incidents: IncidentsState, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self.incidents = incidents
        self.ids: list[str] = []
        self.reload()
        incidents.changed.connect(self._incident_changed)

    def reload(self) -> None:
        """Rebuild the rows from the state."""
        self.beginResetModel()
        order = sorted(self.incidents.incidents.values(), key=lambda i: (i.start, i.incident_id), reverse=True)
        self.ids = [i.incident_id for i in order]
        self.endResetModel()

    def _incident_changed(self, incident: IncidentRow) -> None:
        known = incident.incident_id in self.ids
        if len(self.incidents.incidents) != len(self.ids) + (0 if known else 1):
            self.reload()  # the state dropped old incidents
            return
        if known:
            row = self.ids.index(incident.incident_id)
            self.dataChanged.emit(self.index(row, 0), self.index(row, len(COLUMNS) - 1))
            return
        row = 0
        while row < len(self.ids) and self.incidents.incidents[self.ids[row]].start > incident.start:
            row += 1
        self.beginInsertRows(QtCore.QModelIndex(), row, row)
        self.ids.insert(row, incident.incident_id)
        self.endInsertRows()

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
        if 0 <= row < len(self.ids):
            return self.incidents.incidents.get(self.ids[row])
        return None

    def data(self, index: QtCore.QModelIndex, role: int = 0) -> Any:
        inc = self.incident_at(index.row())
        if inc is None:
            return None
        column = COLUMNS[index.column()]
        if role == QtCore.Qt.ItemDataRole.DisplayRole:
            if column == "score":
                return f"{inc.score:.0f}"
            if column == "start":
                return dt.datetime.fromtimestamp(inc.start).strftime("%Y-%m-%d %H:%M:%S")
            if column == "duration":
                return _duration(inc.duration)
            if column == "state":
                return inc.state.replace("_", " ")
            return str(getattr(inc, column))
        if role == QtCore.Qt.ItemDataRole.BackgroundRole and column == "severity":
            return SEVERITY_COLOUR.get(inc.severity)
        if role == QtCore.Qt.ItemDataRole.ToolTipRole:
            return "\n".join(r.get("text", "") for r in inc.reasons if isinstance(r, dict)) or inc.message
        if role == QtCore.Qt.ItemDataRole.ForegroundRole and inc.state in ("resolved", "false_positive"):
            return QtGui.QColor(130, 130, 130)
        return None


class IncidentsPanel(QtWidgets.QWidget):
    """Table + actions + silences + details of the selected incident."""

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
        for column, width in zip(COLUMNS, (70, 90, 50, 300, 145, 90, 100), strict=True):
            self.table.setColumnWidth(COLUMNS.index(column), width)
        header.setSectionResizeMode(COLUMNS.index("reason"), QtWidgets.QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.selectionModel().selectionChanged.connect(self._selection_changed)

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
        self.status_label = QtWidgets.QLabel("")
        buttons = QtWidgets.QHBoxLayout()
        for w in (self.ack_button, self.snooze_button, self.fp_button, self.resolve_button):
            buttons.addWidget(w)
        buttons.addStretch(1)
        buttons.addWidget(self.status_label)

        # silences
        self.silence_pattern = QtWidgets.QLineEdit(placeholderText="service pattern, e.g. payments or svc-*")
        self.silence_hours = QtWidgets.QDoubleSpinBox(minimum=0.05, maximum=720.0, value=1.0, suffix=" h")
        self.silence_reason = QtWidgets.QLineEdit(placeholderText="reason (maintenance …)")
        self.silence_add = QtWidgets.QPushButton("Add silence")
        self.silence_add.clicked.connect(self._add_silence)
        self.silence_list = QtWidgets.QListWidget()
        self.silence_list.setMaximumHeight(80)
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
        self.detail_plot = pg.PlotWidget(axisItems={"bottom": pg.DateAxisItem()})
        self.detail_plot.setMinimumHeight(140)
        self.detail_plot.addLegend(offset=(5, 5))
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
        splitter.setStretchFactor(1, 2)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(splitter)
        self._update_buttons()

    def forget(self) -> None:
        """Show the (emptied) incidents state afresh: the app switched servers."""
        self.model.reload()
        self.details.clear()
        self.detail_plot.clear()
        self.status_label.setText("")
        self._update_buttons()

    # --- selection ----------------------------------------------------------------------------
    def selected(self) -> IncidentRow | None:
        """The selected incident, if any."""
        rows = self.table.selectionModel().selectedRows()
        return self.model.incident_at(rows[0].row()) if rows else None

    def select_incident(self, incident_id: str) -> bool:
        """Select and reveal an incident (the tray's click lands here)."""
        if incident_id not in self.model.ids:
            return False
        row = self.model.ids.index(incident_id)
        self.table.selectRow(row)
        self.table.scrollTo(self.model.index(row, 0))
        return True

    def _selection_changed(self, *_args: object) -> None:
        self._update_buttons()
        inc = self.selected()
        if inc is not None:
            self.show_details(inc)

    def _update_buttons(self) -> None:
        inc = self.selected()
        open_ = inc is not None and inc.state not in ("resolved", "false_positive")
        for w in (self.ack_button, self.snooze_button, self.resolve_button):
            w.setEnabled(open_)
        self.fp_button.setEnabled(inc is not None and inc.state != "false_positive")

    # --- actions ------------------------------------------------------------------------------
    def run_action(self, action: str, seconds: float = 0.0) -> None:
        """Apply an operator action to the incident selected now (at the click, not when the task runs)."""
        inc = self.selected()
        if inc is None:
            self.status_label.setText("select an incident first")
            return
        if action == "snooze" and seconds < 0:
            seconds = seconds_until_tomorrow()
        self.status_label.setText(f"{action.replace('_', ' ')} {inc.incident_id} …")
        self._apply(action, inc, seconds)

    @asyncSlot()
    async def _apply(self, action: str, inc: IncidentRow, seconds: float) -> None:
        try:
            await self.actions.incident_action(action, inc.incident_id, seconds)
        except Exception as err:  # shown to the operator, not swallowed
            self.status_label.setText(f"{action.replace('_', ' ')} failed: {err}")
            return
        self.status_label.setText(f"{inc.incident_id}: {inc.state.replace('_', ' ')}")
        self._update_buttons()

    @asyncSlot()
    async def refresh_silences(self) -> None:
        """Reload the silences list from Redis."""
        try:
            silences = await self.actions.silences()
        except Exception as err:
            self.status_label.setText(f"silences: {err}")
            return
        self.silence_list.clear()
        for s in silences:
            end = dt.datetime.fromtimestamp(s.end).strftime("%Y-%m-%d %H:%M")
            item = QtWidgets.QListWidgetItem(f"{s.pattern} until {end} — {s.reason} ({s.by})")
            item.setData(QtCore.Qt.ItemDataRole.UserRole, s.id)
            self.silence_list.addItem(item)

    @asyncSlot()
    async def _add_silence(self) -> None:
        try:
            await self.actions.add_silence(self.silence_pattern.text().strip(),
                                           self.silence_hours.value() * 3600, self.silence_reason.text())  # fmt: skip
        except Exception as err:
            self.status_label.setText(f"silence not added: {err}")
            return
        self.silence_reason.clear()
        self.status_label.setText("silence added")
        self.refresh_silences()

    @asyncSlot()
    async def _remove_silence(self) -> None:
        item = self.silence_list.currentItem()
        if item is None:
            return
        try:
            await self.actions.remove_silence(item.data(QtCore.Qt.ItemDataRole.UserRole))
        except Exception as err:
            self.status_label.setText(f"silence not removed: {err}")
            return
        self.refresh_silences()

    # --- details ------------------------------------------------------------------------------
    def show_details(self, inc: IncidentRow) -> None:
        """Reasons as text, and the involved features around the incident (fetched on demand)."""
        lines = [f"<b>{inc.severity.upper()}</b> — {inc.service} — score {inc.score:.0f} — {inc.state}",
                 f"incident {inc.incident_id}, {inc.alerts} alert(s), windows {inc.window_first}…{inc.window_last}",
                 "<ul>"]  # fmt: skip
        for reason in inc.reasons:
            if isinstance(reason, dict):
                lines.append(f"<li>{reason.get('text') or reason.get('feature')}</li>")
        lines.append("</ul>")
        if inc.message:
            lines.append(f"<i>{inc.message}</i>")
        self.details.setHtml("\n".join(lines))
        self._plot_details(inc)

    @asyncSlot()
    async def _plot_details(self, inc: IncidentRow) -> None:
        features = [r.get("feature") for r in inc.reasons if isinstance(r, dict) and r.get("feature") in FEATURE_INDEX]
        self.detail_plot.clear()
        if not features:
            return
        margin = max(60.0, inc.duration)
        try:
            rows = await self.actions.fingerprint_window(inc.service, inc.start - margin, inc.last + margin)
        except Exception as err:
            self.status_label.setText(f"details: {err}")
            return
        if self.selected() is not inc or rows.size == 0:
            return
        for i, name in enumerate(features[:4]):
            values = rows[:, 1 + FEATURE_INDEX[name]]
            span = float(np.nanmax(values) - np.nanmin(values)) or 1.0
            self.detail_plot.plot(rows[:, 0], (values - np.nanmin(values)) / span,
                                  pen=pg.intColor(i, hues=4), name=f"{name} (scaled)")  # fmt: skip
        region = pg.LinearRegionItem(values=(inc.start, inc.last + 1), movable=False,
                                     brush=pg.mkBrush(220, 50, 50, 50))  # fmt: skip
        self.detail_plot.addItem(region)
