"""The main window at 1280×800 with the overview strip (offscreen): every control of the strip and the live
plots' bar keeps its full size inside the window, the plots keep room for their curves, and no plot's y
axis prints its labels over one another (the score plot's "80 60 40 20")."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PySide6 import QtCore, QtGui, QtWidgets

from app_support import qloop  # noqa: F401  (fixture)
from test_app_layout import settle

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_level_fail("WARNING"),
              pytest.mark.qt_log_ignore("This plugin does not support")]  # fmt: skip


def shown_window(qtbot, size: tuple[int, int]):
    """(state, main window) shown at `size`, with no server behind it (`NoActions`)."""
    from anomalydesk.app.model.settings import AppSettings
    from anomalydesk.app.model.state import AppState
    from anomalydesk.app.widgets.main_window import MainWindow
    from test_app_panels import NoActions

    state = AppState()
    window = MainWindow(state, NoActions(), AppSettings())
    qtbot.addWidget(window)
    window.resize(*size)
    window.show()
    qtbot.waitExposed(window)
    return state, window


def busy_window(qtbot, size: tuple[int, int]):
    from anomalydesk.fingerprint import FEATURE_INDEX, N_FEATURES

    state, window = shown_window(qtbot, size)
    now = time.time() // 5 * 5
    rng = np.random.default_rng(7)
    for i in range(720):  # the last hour: a level in requests, 0.4 % errors, then 20 % and a high score
        vector = np.abs(rng.normal(1.0, 0.1, N_FEATURES))
        vector[FEATURE_INDEX["requests"]] = 300 + rng.normal(0, 20)
        vector[FEATURE_INDEX["rate_5xx"]] = 0.004 if i < 650 else 0.2
        state.live.append("orders", now - 5 * (720 - i), vector, 20 + rng.normal(0, 5) if i < 650 else 93)
    state.live.thresholds["orders"] = 70.0
    state.connection.update(status="connected", url="redis://127.0.0.1:6379/0", detector="app-1234",
                            status_json={"events_total": 10_000, "services": ["orders"]})  # fmt: skip
    window.live.select_service("orders")
    window.live.redraw(force=True)
    settle()
    return window


def labels(axis) -> list[tuple[QtCore.QRectF, str]]:
    """The tick labels the axis draws: (rectangle, text)."""
    image = QtGui.QImage(10, 10, QtGui.QImage.Format.Format_ARGB32)
    painter = QtGui.QPainter(image)
    try:
        specs = axis.generateDrawSpecs(painter)
    finally:
        painter.end()
    return [(rect, text) for rect, _flags, text in (specs[2] if specs else [])]


def inside(widget: QtWidgets.QWidget, window: QtWidgets.QWidget) -> bool:
    top_left = widget.mapTo(window, QtCore.QPoint(0, 0))
    return QtCore.QRect(top_left, widget.size()).intersected(window.rect()) == QtCore.QRect(top_left, widget.size())


@pytest.mark.parametrize("size", [(1280, 800), (1920, 1080)])
def test_nothing_is_clipped_and_the_plots_have_room(qtbot, qloop, size):  # noqa: F811  (a connect re-reads the silences)
    window = busy_window(qtbot, size)
    assert window.size().toTuple() == size  # the strip did not make the window grow
    live, strip = window.live, window.overview
    controls = [live.service_box, live.features_button, *live.range.preset_buttons.values(), live.range.follow_button,
                live.pause_button, live.zoom_button, live.png_button, live.csv_button,
                strip.events, strip.connection, strip.services, strip.incidents, strip.detector]  # fmt: skip
    for w in controls:
        assert w.isVisible() and inside(w, window), w
        assert w.width() >= w.sizeHint().width() - 1, (w, w.width(), w.sizeHint().width())  # not squeezed
    for tile in (strip.events, strip.connection, strip.services, strip.incidents, strip.detector):
        assert tile.value.width() >= tile.value.sizeHint().width() - 1  # the counts are not cut off
    info = live.info_label  # its own row: the whole line, not elided ("1…" beside the bar at 1280 px)
    assert info.isVisible() and inside(info, window) and info.text().endswith("threshold 70"), info.text()
    assert info.fontMetrics().horizontalAdvance(info.text()) <= info.contentsRect().width(), info.text()
    plots = [*live._feature_plots, live.score_plot]
    for plot in plots:
        assert plot.getViewBox().height() >= 30, plot.titleLabel.text  # room for a curve
        drawn = labels(plot.getAxis("left"))
        assert drawn, f"no y label on {plot.titleLabel.text!r}"
        rects = [rect for rect, _text in drawn]
        for i, a in enumerate(rects):
            for b in rects[i + 1 :]:
                assert not a.intersects(b), (plot.titleLabel.text, [t for _r, t in drawn])  # no overlapping labels
    assert [t for _r, t in labels(live.score_plot.getAxis("left"))] in (["50"], ["0", "50", "100"], ["0", "100"],
                                                                        ["25", "50", "75"], ["20", "40", "60", "80"])


def test_the_score_axis_labels_as_many_as_fit():
    from anomalydesk.app.widgets.plot_axes import SparseAxis

    axis = SparseAxis("left")
    height = axis.text_height()
    short = axis.tickSpacing(0, 100, 2.2 * height)
    tall = axis.tickSpacing(0, 100, 20 * height)
    assert short[0][0] == 50  # a short axis: one label in the middle (0 and 100 would be cut at the ends)
    assert tall[0][0] <= 20  # a tall one keeps pyqtgraph's finer labels


@pytest.mark.parametrize(("size", "points"), [((1280, 800), 11), ((1024, 700), 10)])
def test_no_y_labels_overlap_while_the_first_windows_arrive(qtbot, size, points):
    """A fresh start: one window after another, in a larger desktop font. pyqtgraph printed a label
    near an axis end that SparseAxis had counted as cut off, over the next one ("0.2" over "0.1",
    "260" over "240")."""
    from anomalydesk.fingerprint import FEATURE_INDEX, N_FEATURES

    app = QtWidgets.QApplication.instance()
    font = app.font()
    bigger = QtGui.QFont(font)
    bigger.setPointSize(points)
    app.setFont(bigger)
    try:
        state, window = shown_window(qtbot, size)
        now = time.time() // 5 * 5
        rng = np.random.default_rng(7)
        for n in range(1, 30):
            vector = np.abs(rng.normal(1.0, 0.1, N_FEATURES))
            vector[FEATURE_INDEX["rate_5xx"]] = 0.001 + 0.001 * rng.random()
            vector[FEATURE_INDEX["latency_p95_ms"]] = 240 + 20 * rng.random()
            state.live.append("orders", now - 5 * (30 - n), vector, None)
            if n == 1:
                window.live.select_service("orders")
            window.live.redraw(force=True)
            settle()
            for plot in [*window.live._feature_plots, window.live.score_plot]:
                drawn = labels(plot.getAxis("left"))
                rects = [rect for rect, _text in drawn]
                overlaps = [(a, b) for i, a in enumerate(rects) for b in rects[i + 1:] if a.intersects(b)]
                assert not overlaps, (n, plot.titleLabel.text, [t for _r, t in drawn])
    finally:
        app.setFont(font)


def ink_columns(image: QtGui.QImage, top: int, bottom: int) -> list[bool]:
    """Per column of `image`, whether any pixel between rows `top` and `bottom` differs from the background
    (the commonest colour there): where text is drawn."""
    from collections import Counter

    pixels = [[image.pixel(x, y) for y in range(top, bottom)] for x in range(image.width())]
    background = Counter(p for column in pixels for p in column).most_common(1)[0][0]
    return [any(p != background for p in column) for column in pixels]


def test_the_status_bar_messages_never_run_into_each_other(qtbot, qloop, tmp_path):  # noqa: F811  (a connect re-reads the silences)
    """At 1280×800 an export's message ran into the connection's state ("…/Documents connected ·
    redis://…"): QStatusBar painted it cut off, not elided, up to the first pixel of the connection's
    label, and the rest could not be read anywhere. Each status item is a label of its own now: the
    message and the connection's state each fit their room, elided with the whole text in the tooltip,
    with empty room between them (looked for in the pixels of the bar as drawn)."""
    from anomalydesk.app.widgets.status_bar import MESSAGE_GAP_PX

    state, window = shown_window(qtbot, (1280, 800))
    warnings = ["no fingerprints arrived in the last 3 windows",
                "no detector is alive: nothing is being scored or alerted"]
    state.connection.update(status="connected", url="redis://127.0.0.1:6379/0", detector="app-1234",
                            warnings=warnings)  # fmt: skip
    said = ("exported 1,440 windows of orders, 2026-01-31 21:00:05 CET – 2026-01-31 23:00:00 CET: "
            "/home/operator/Documents/anomalydesk/anomalydesk-orders-20260131T2100-20260131T2300.csv")
    window.say(said)
    settle()
    bar = window.status
    window.grab().save(str(tmp_path / "window-1280x800.png"))  # (kept by pytest: the picture of the bar)
    assert bar.currentMessage() == said
    connection = window.connection_status
    # the pixels first: empty room between the end of the message as drawn and the connection's state
    image = bar.grab().toImage()
    ink = ink_columns(image, connection.y(), connection.y() + connection.height())
    edge = connection.x()
    message_ends = max(x for x in range(edge) if ink[x])
    connection_starts = min(x for x in range(edge, len(ink)) if ink[x])
    assert connection_starts - message_ends > MESSAGE_GAP_PX // 2, (message_ends, connection_starts)
    items = [w for w in bar.findChildren(QtWidgets.QLabel) if w.isVisible()]
    shown = {w.text(): w for w in items}
    assert said in shown, f"no label of the status bar shows the message: {list(shown)}"
    message = shown[said]
    assert connection in items and len(items) == 2
    for label in (message, connection):
        drawn = QtWidgets.QLabel.text(label)  # what it draws (its text() is the whole text)
        assert inside(label, window) and label.height() >= label.fontMetrics().height()
        assert label.fontMetrics().horizontalAdvance(drawn) <= label.contentsRect().width(), drawn
        assert drawn.endswith("…") and label.toolTip() == label.text(), (drawn, label.toolTip())
        assert label.text().startswith(drawn[:-1].rstrip())  # the beginning of its own text, nothing else
    assert not message.geometry().intersects(connection.geometry())
    assert message.geometry().right() < connection.geometry().left()

    bar.showMessage("short and whole", 50)  # a timeout still takes a message away
    assert QtWidgets.QLabel.text(message) == "short and whole" and message.toolTip() == "short and whole"
    qtbot.waitUntil(lambda: bar.currentMessage() == "" and QtWidgets.QLabel.text(message) == "", timeout=2_000)
