"""The system's dark theme respected (offscreen): the palette follows Qt's colour scheme, the plots and
the overview strip restyle from it, and every state × severity cell of the incidents table still reads
at WCAG AA in the dark palette the app sets (computed from the table model's own colour roles)."""

from __future__ import annotations

import pytest
from PySide6 import QtCore, QtGui, QtWidgets

from test_app_tables import every_state_and_severity, ratio

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_level_fail("WARNING"),
              pytest.mark.qt_log_ignore("This plugin does not support")]  # fmt: skip


@pytest.fixture()
def restore_palette(qapp):
    before, style = qapp.palette(), qapp.style().name()
    yield qapp
    qapp.setStyle(style)
    qapp.setPalette(before)


def lightness(colour) -> int:
    return QtGui.QColor(colour).lightness()


def test_the_plots_follow_the_colour_scheme_both_ways(qtbot, restore_palette):
    from anomalydesk.app.model.settings import AppSettings
    from anomalydesk.app.model.state import AppState
    from anomalydesk.app.widgets import theme
    from anomalydesk.app.widgets.main_window import MainWindow
    from test_app_panels import NoActions

    app = restore_palette
    window = MainWindow(AppState(), NoActions(), AppSettings())
    qtbot.addWidget(window)
    window.show()
    live = window.live
    assert not theme.is_dark(app.palette())
    assert lightness(live.graphics.backgroundBrush().color()) > 200  # a light window gets light plots
    assert lightness(live.score_curve.opts["pen"].color()) < 80

    theme.follow_system(app)
    app.styleHints().colorSchemeChanged.emit(QtCore.Qt.ColorScheme.Dark)  # the desktop switched to dark
    qtbot.waitUntil(lambda: lightness(live.graphics.backgroundBrush().color()) < 60, timeout=2_000)
    assert theme.is_dark(app.palette()) and app.style().name().lower() == "fusion"
    assert lightness(live.score_curve.opts["pen"].color()) > 180  # the score curve reads on the dark plot
    axis = live.score_plot.getAxis("left")
    assert lightness(axis.textPen().color()) > 180
    assert lightness(window.incidents.detail_plot.backgroundBrush().color()) < 60
    assert lightness(window.overview.spark.backgroundBrush().color()) < 80
    unchecked = live.range.preset_buttons[900]  # drawn by the range bar's style sheet: it follows too
    image = unchecked.grab().toImage()
    pixels = [image.pixelColor(x, y).lightness() for x in range(image.width()) for y in range(image.height())]
    assert sum(pixels) / len(pixels) < 110  # (the stale style sheet drew it white: about 240)
    back = theme.plot_colours(app.palette()).background
    for i in range(3):  # feature curves keep their contrast against the plot
        assert ratio(live._curves[list(live._curves)[i]].opts["pen"].color(), back) >= 3.0

    app.styleHints().colorSchemeChanged.emit(QtCore.Qt.ColorScheme.Light)
    qtbot.waitUntil(lambda: lightness(live.graphics.backgroundBrush().color()) > 200, timeout=2_000)
    assert not theme.is_dark(app.palette())
    for i in range(3):
        assert ratio(live._curves[list(live._curves)[i]].opts["pen"].color(), QtGui.QColor("white")) >= 3.0


@pytest.mark.parametrize("scheme", [QtCore.Qt.ColorScheme.Light, QtCore.Qt.ColorScheme.Dark])
def test_every_cell_reads_at_aa_in_the_palette_the_app_sets(qtbot, restore_palette, scheme):
    from anomalydesk.app.widgets import theme
    from anomalydesk.app.widgets.incidents_panel import COLUMNS, IncidentsModel

    app = restore_palette
    theme.apply_scheme(app, scheme)
    assert theme.is_dark(QtWidgets.QApplication.palette()) == (scheme == QtCore.Qt.ColorScheme.Dark)
    model = IncidentsModel(every_state_and_severity().incidents)
    roles = QtCore.Qt.ItemDataRole
    checked = 0
    for row in range(model.rowCount()):
        for col in range(len(COLUMNS)):
            index = model.index(row, col)
            fg, bg, font = (model.data(index, r) for r in (roles.ForegroundRole, roles.BackgroundRole, roles.FontRole))
            large = font.pointSizeF() >= 18 or (font.bold() and font.pointSizeF() >= 14)
            assert ratio(fg, bg) >= (3.0 if large else 4.5), (scheme, model.incident_at(row).state, COLUMNS[col])
            checked += 1
    assert checked == model.rowCount() * len(COLUMNS) > 0
