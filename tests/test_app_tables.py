"""The incidents table as an operator reads it (offscreen): contrast of every state × severity computed
from the table model's own colour and font roles, rows visible at the default size, and — against a real
redis-server — the shared state words, snoozed-until and live duration columns, the details header that
follows the incident, the keyboard shortcuts and the silence messages."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
from PySide6 import QtCore, QtGui, QtWidgets

from anomalydesk.detect.incident_model import Incident, IncidentState, Mark, Severity, local_time
from anomalydesk.store.keys import Keys
from app_support import qloop, run  # noqa: F401  (fixture)
from test_app_incidents import close_app, open_app, raise_alert

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_level_fail("WARNING"),
              pytest.mark.qt_log_ignore("This plugin does not support")]  # the offscreen platform says so


def luminance(c: QtGui.QColor) -> float:
    """WCAG 2.x relative luminance (written out here, not the app's helper)."""
    def lin(v: int) -> float:
        s = v / 255
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4

    return 0.2126 * lin(c.red()) + 0.7152 * lin(c.green()) + 0.0722 * lin(c.blue())


def ratio(a: QtGui.QColor, b: QtGui.QColor) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def incident_in(state: IncidentState, severity: Severity, window: int) -> Incident:
    base = replace(Incident.open(f"svc-{window}", "anomaly", window, window * 5.0), windows=1, score=80.0,
                   severity=severity)  # fmt: skip
    mark = Mark("ops", "2026-01-31T22:00:00.000Z")
    return {
        IncidentState.OPEN: base,
        IncidentState.ACKNOWLEDGED: replace(base, acked=mark),
        IncidentState.SNOOZED: replace(base, snoozed_until="later", snoozed_until_epoch=time.time() + 3600),
        IncidentState.RESOLVED: replace(base, status="resolved", resolved=Mark("ops", "t", "operator")),
        IncidentState.FALSE_POSITIVE: replace(base, status="resolved", resolved=Mark("ops", "t", "false positive"),
                                              false_positive=mark),
        IncidentState.ACCEPTED: replace(base, kind="level_shift", status="resolved", accepted=mark,
                                        resolved=Mark("ops", "t", "accepted")),
    }[state]  # fmt: skip


def every_state_and_severity():
    from anomalydesk.app.model.state import AppState

    state = AppState()
    window = 1000
    for s in IncidentState:
        for severity in Severity:
            state.incidents.apply(incident_in(IncidentState.OPEN, severity, window))  # shown while open,
            state.incidents.apply(incident_in(s, severity, window))  # then followed to its state
            window += 1
    return state


def dark_palette() -> QtGui.QPalette:
    palette = QtGui.QPalette()
    for role, colour in ((QtGui.QPalette.ColorRole.Base, QtGui.QColor(30, 30, 30)),
                         (QtGui.QPalette.ColorRole.Text, QtGui.QColor(230, 230, 230)),
                         (QtGui.QPalette.ColorRole.Window, QtGui.QColor(45, 45, 45)),
                         (QtGui.QPalette.ColorRole.WindowText, QtGui.QColor(230, 230, 230))):  # fmt: skip
        palette.setColor(role, colour)
    return palette


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_every_state_and_severity_cell_reads_at_wcag_aa(qtbot, theme):
    """Each cell's contrast from the model's ForegroundRole/BackgroundRole (both defined by the model for
    every cell) and FontRole (large bold text may go down to 3:1), in a light and a dark palette."""
    from anomalydesk.app.widgets.incidents_panel import COLUMNS, IncidentsModel

    app = QtWidgets.QApplication.instance()
    before = app.palette()
    if theme == "dark":
        app.setPalette(dark_palette())
    try:
        state = every_state_and_severity()
        model = IncidentsModel(state.incidents)
        assert model.rowCount() == len(IncidentState) * len(Severity)
        roles = QtCore.Qt.ItemDataRole
        seen = set()
        worst = 21.0
        for row in range(model.rowCount()):
            inc = model.incident_at(row)
            seen.add((inc.incident.state_at(time.time()), inc.severity))
            for col in range(len(COLUMNS)):
                index = model.index(row, col)
                fg, bg, font = (model.data(index, r) for r in (roles.ForegroundRole, roles.BackgroundRole,
                                                                roles.FontRole))  # fmt: skip
                assert isinstance(fg, QtGui.QColor) and isinstance(bg, QtGui.QColor) and isinstance(font, QtGui.QFont)
                large = font.pointSizeF() >= 18 or (font.bold() and font.pointSizeF() >= 14)
                got = ratio(fg, bg)
                worst = min(worst, got)
                assert got >= (3.0 if large else 4.5), (theme, inc.state, inc.severity.value, COLUMNS[col],
                                                        fg.name(), bg.name(), round(got, 2))  # fmt: skip
        assert seen == {(s, sev) for s in IncidentState for sev in Severity}
        # a closed incident's severity cell is a pale tint, not the full colour of one that needs attention
        by = {(model.incident_at(r).state, model.incident_at(r).severity): r for r in range(model.rowCount())}
        live = model.data(model.index(by[(IncidentState.OPEN, Severity.CRITICAL)], 0), roles.BackgroundRole)
        closed = model.data(model.index(by[(IncidentState.RESOLVED, Severity.CRITICAL)], 0), roles.BackgroundRole)
        assert live != closed
    finally:
        app.setPalette(before)


def test_the_table_shows_several_rows_at_the_default_size(qtbot):
    """At the window's default size (1280×800) the incidents table shows at least five whole rows, and
    all its columns without a horizontal scroll bar."""
    from anomalydesk.app.model.settings import AppSettings
    from anomalydesk.app.widgets.incidents_panel import VISIBLE_ROWS
    from anomalydesk.app.widgets.main_window import MainWindow
    from test_app_panels import NoActions

    state = every_state_and_severity()
    window = MainWindow(state, NoActions(), AppSettings())
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    assert (window.width(), window.height()) == (1280, 800)
    table = window.incidents.table
    window.incidents.model.reload()
    row_height = table.rowHeight(0)
    whole = sum(1 for r in range(table.model().rowCount())
                if table.rowViewportPosition(r) >= 0 and table.rowViewportPosition(r) + row_height
                <= table.viewport().height())  # fmt: skip
    assert whole >= VISIBLE_ROWS, (whole, table.viewport().height(), row_height)
    assert not table.horizontalScrollBar().isVisible()
    window.grab().save("/tmp/wtc-main-1280x800.png")


def test_states_snooze_duration_details_shortcuts_and_silences(qtbot, qloop, redis_url, r):  # noqa: F811
    from anomalydesk.app.widgets.incidents_panel import COLUMNS, SHORTCUTS, _duration

    older = raise_alert(r, "payments", int(time.time() // 5) - 120)  # opened ten minutes ago: still open
    newer = raise_alert(r, "orders", int(time.time() // 5) - 2)
    app = open_app(qtbot, redis_url)
    try:
        window, panel = app.window, app.window.incidents
        model = panel.model
        qtbot.waitUntil(lambda: {older["incident_id"], newer["incident_id"]} <= set(model.ids), timeout=10_000)
        window.activateWindow()
        qtbot.waitUntil(lambda: QtWidgets.QApplication.activeWindow() is window, timeout=5_000)

        def cell(incident_id: str, column: str) -> str:
            return model.data(model.index(model.ids.index(incident_id), COLUMNS.index(column)))

        def header() -> str:
            return panel.details.toPlainText().splitlines()[0]

        # live duration: an open incident lasts until now, and the column follows the clock
        row = app.state.incidents.incidents[older["incident_id"]]
        assert abs(row.duration - (time.time() - row.start)) < 2
        shown = cell(older["incident_id"], "duration")
        assert shown in {_duration(row.duration + d) for d in (-1, 0, 1)}
        qtbot.waitUntil(lambda: cell(older["incident_id"], "duration") != shown, timeout=5_000)

        # next incident (keyboard) selects one that needs attention, then the next, wrapping around
        qtbot.keyClick(panel.table, QtCore.Qt.Key.Key_N, QtCore.Qt.KeyboardModifier.ControlModifier
                       | QtCore.Qt.KeyboardModifier.ShiftModifier)  # fmt: skip
        first = panel.selected().incident_id
        assert header().endswith(" — open") and cell(first, "state") == "open", header()
        qtbot.keyClick(panel.table, QtCore.Qt.Key.Key_N, QtCore.Qt.KeyboardModifier.ControlModifier
                       | QtCore.Qt.KeyboardModifier.ShiftModifier)  # fmt: skip
        assert panel.selected().incident_id != first
        target = panel.selected().incident_id

        # acknowledge by keyboard: table, details header and status bar say so
        mods = QtCore.Qt.KeyboardModifier.ControlModifier | QtCore.Qt.KeyboardModifier.ShiftModifier
        assert SHORTCUTS["ack"] == "Ctrl+Shift+A"
        qtbot.keyClick(panel.table, QtCore.Qt.Key.Key_A, mods)
        qtbot.waitUntil(lambda: cell(target, "state") == "acknowledged", timeout=10_000)
        assert header().endswith(" — acknowledged"), header()
        assert window.status.currentMessage() == f"{target}: acknowledged"

        # snooze by keyboard (1 hour): until when, in the column, the header and the status bar
        qtbot.keyClick(panel.table, QtCore.Qt.Key.Key_S, mods)
        qtbot.waitUntil(lambda: cell(target, "state") == "snoozed [acked]", timeout=10_000)  # the CLI's mark
        until = json.loads(r.hget(Keys().incidents, target))["snoozed_until_epoch"]
        assert 3590 < until - time.time() <= 3600
        assert cell(target, "snoozed until") == local_time(until)
        assert header().endswith(f" — snoozed until {local_time(until)} [acked]"), header()
        assert window.status.currentMessage() == f"{target}: snoozed until {local_time(until)}"
        assert cell(first, "snoozed until") == ""

        # resolve by keyboard; false positive by button: the words are the core's labels
        qtbot.keyClick(panel.table, QtCore.Qt.Key.Key_R, mods)
        qtbot.waitUntil(lambda: cell(target, "state") == f"{IncidentState.RESOLVED.label} [acked]", timeout=10_000)
        assert header().endswith(" — resolved [acked]") and cell(target, "snoozed until") == ""
        panel.select_incident(first)
        panel.fp_button.click()
        qtbot.waitUntil(lambda: cell(first, "state") == "false positive", timeout=10_000)
        assert IncidentState.FALSE_POSITIVE.label == "false positive"
        assert header().endswith(" — false positive")
        panel.table.clearSelection()
        qtbot.keyClick(panel.table, QtCore.Qt.Key.Key_N, mods)  # nothing left that needs attention
        assert panel.selected() is None and panel.status_label.text() == "no incident needs attention"

        # silences: "added" names until when, and goes once the silence is removed
        panel.silence_pattern.setText("svc-*")
        panel.silence_reason.setText("maintenance")
        panel.silence_add.click()
        qtbot.waitUntil(lambda: panel.silence_list.count() == 1, timeout=10_000)
        assert panel.status_label.text().startswith("silence added: svc-* muted until ")
        panel.silence_list.setCurrentRow(0)
        panel.silence_remove.click()
        qtbot.waitUntil(lambda: panel.silence_list.count() == 0, timeout=10_000)
        assert panel.status_label.text() == "silence removed: svc-* notifies again"
        assert "silence added" not in panel.status_label.text() + window.status.currentMessage()
    finally:
        close_app(qtbot, app)
