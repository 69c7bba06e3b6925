"""The live plots' time range: presets, follow-live, and windows older than the ring buffer read from the
streams on demand (real redis-server, real window offscreen)."""

from __future__ import annotations

import asyncio
import csv
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PySide6 import QtWidgets

from anomalydesk.app.services.range_history import RangeLoader, downsample, mark_gaps, read_range
from anomalydesk.fingerprint import FEATURE_INDEX, N_FEATURES
from anomalydesk.store.keys import Keys
from app_support import qloop, run  # noqa: F401  (fixture)

REQUESTS = 2 + FEATURE_INDEX["requests"]
pytestmark = [pytest.mark.qt_log_level_fail("WARNING"), pytest.mark.qt_log_ignore("This plugin does not support")]


def rows_at(starts: np.ndarray, requests: np.ndarray) -> np.ndarray:
    rows = np.zeros((len(starts), 2 + N_FEATURES))
    rows[:, 0] = starts
    rows[:, 1] = np.nan
    rows[:, REQUESTS] = requests
    return rows


def test_downsampling_keeps_a_one_window_spike_and_a_gap_stays_a_gap():
    starts = np.r_[np.arange(0, 6000, 5), np.arange(9000, 12000, 5)].astype(float)  # 50 min without windows
    requests = np.full(len(starts), 100.0)
    requests[300] = 5000.0  # one window's spike
    rows = downsample(rows_at(starts, requests), 60.0)
    assert len(rows) < len(starts) / 5
    assert np.nanmax(rows[:, REQUESTS]) == 5000.0 and np.nanmin(rows[:, REQUESTS]) == 100.0
    assert np.all(np.diff(rows[:, 0]) > 0)
    gaps = np.flatnonzero(np.isnan(rows[:, REQUESTS]))
    assert len(gaps) == 1 and 6000 < rows[gaps[0], 0] < 9000  # one break in the curve, inside the gap
    assert rows[gaps[0] - 1, 0] < 6000 and rows[gaps[0] + 1, 0] >= 9000
    unreduced = mark_gaps(rows_at(starts, requests), 5.0)
    assert np.isnan(unreduced[:, REQUESTS]).sum() == 1 and len(unreduced) == len(starts) + 1


def test_the_stream_reader_imports_no_qt():
    code = ("import sys, anomalydesk.app.services.range_history; "
            "print(any(m.startswith(('PySide6', 'pyqtgraph')) for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


def history_with_a_gap(r) -> float:
    """4 h of live demo windows up to now, then a backfill of 3 h that ends 5 h ago (in the history
    stream): 8 h in the streams with an hour without windows. Returns the backfill's first window start."""
    from anomalydesk.ingest.demo import run_fast
    from anomalydesk.ingest.demo_model import parse_inject

    now = time.time() // 5 * 5
    run_fast(r, duration=4 * 3600, rate=2, services=1, seed=3)
    run_fast(r, duration=3 * 3600, rate=2, services=1, seed=3, end=now - 5 * 3600,
             injects=[parse_inject("spike@600+30:gateway")])  # a spike of a few windows in the history
    return now - 8 * 3600


def test_read_range_reads_history_live_and_scores_reduced_with_the_gap(r):
    from anomalydesk.detect.incident_model import Severity
    from anomalydesk.detect.window_scores import WindowScore

    keys = Keys()
    first = history_with_a_gap(r)
    live = r.xrange(keys.fingerprints("gateway"))
    assert 2879 <= len(live) <= 2881 and r.xlen(keys.history("gateway", 5)) == 2160  # (a window may seal meanwhile)
    scored = float(live[-10][1][b"start"])
    score = WindowScore(int(scored // 5), scored, 87.5, Severity.WARNING, True, 2)
    r.xadd(keys.scores("gateway"), dict(zip(score.fields()[::2], score.fields()[1::2], strict=True)),
           id=f"{int(scored * 1000)}-0")  # fmt: skip
    now = time.time()
    found = read_range(r, keys, "gateway", now - 86_400, now, points=500)
    assert found.windows == len(live) + 2160 and found.reduced and found.bin_seconds == 175.0
    rows = found.rows
    assert len(rows) <= 2 * 500 + 10 and np.all(np.diff(rows[:, 0]) > 0)
    assert abs(rows[0, 0] - first) < 175  # the bin of the first window (bins sit on multiples of their width)
    raw = np.array([float(f[b"requests"]) for _id, f in live])
    assert np.nanmax(rows[:, REQUESTS]) >= raw.max()  # the spike in the history survives the bins
    gaps = rows[np.isnan(rows[:, REQUESTS]), 0]
    assert len(gaps) == 1 and now - 5 * 3600 - 60 < gaps[0] < now - 4 * 3600  # the hour without windows
    assert np.nanmax(rows[:, 1]) == 87.5  # the stored score, in its bin
    near = read_range(r, keys, "gateway", now - 900, now, points=500)
    assert not near.reduced and near.bin_seconds == 5.0 and near.windows == len(near.rows) >= 170


def test_a_new_request_cancels_the_one_before(qtbot, qloop, r):  # noqa: F811
    keys = Keys()
    history_with_a_gap(r)
    loader = RangeLoader(lambda: (r, keys), points=200)
    try:
        now = time.time()

        async def both():
            old = asyncio.ensure_future(loader.load("gateway", now - 86_400, now))
            await asyncio.sleep(0)  # the first read is under way
            new = await loader.load("gateway", now - 3_600, now)
            return await old, new

        old, new = run(qtbot, both())
        assert old is None and loader.cancelled == 1  # superseded: never applied
        assert new is not None and new.start == now - 3_600 and 715 <= new.windows <= 720  # the last hour
    finally:
        loader.close()


def drag(widget, start, end) -> None:
    """A left-button drag across the plot, as the operator's mouse makes it."""
    from PySide6 import QtCore, QtGui, QtWidgets

    button, none = QtCore.Qt.MouseButton.LeftButton, QtCore.Qt.MouseButton.NoButton
    mods = QtCore.Qt.KeyboardModifier.NoModifier
    viewport = widget.viewport()
    steps = [start + (end - start) * (i / 10) for i in range(11)]
    send = QtWidgets.QApplication.sendEvent
    send(viewport, QtGui.QMouseEvent(QtCore.QEvent.Type.MouseButtonPress, steps[0], viewport.mapToGlobal(steps[0]),
                                     button, button, mods))  # fmt: skip
    for p in steps[1:]:
        send(viewport, QtGui.QMouseEvent(QtCore.QEvent.Type.MouseMove, p, viewport.mapToGlobal(p), none, button, mods))
    send(viewport, QtGui.QMouseEvent(QtCore.QEvent.Type.MouseButtonRelease, steps[-1], viewport.mapToGlobal(steps[-1]),
                                     button, none, mods))  # fmt: skip


def test_presets_follow_live_and_read_older_windows_in_the_real_window(qtbot, qloop, redis_url, r):  # noqa: F811
    from PySide6 import QtCore, QtGui
    from PySide6.QtTest import QTest

    from test_app_incidents import close_app, open_app

    first = history_with_a_gap(r)
    app = open_app(qtbot, redis_url)
    try:
        run(qtbot, app.session.history_loaded.wait())
        live = app.window.live
        live.select_service("gateway")
        buf = app.state.live.buffers["gateway"]
        assert len(buf) == buf.capacity == 3_600  # 5 h of the 8 h the streams hold
        view = live.score_plot.getViewBox()
        assert live.range.follow and live.range.follow_button.isChecked()
        assert live.range.preset_buttons[3_600].isChecked()
        low, high = view.viewRange()[0]
        assert abs(high - time.time()) < 5 and high - low == pytest.approx(3_600, abs=2)  # the last hour

        live.range.preset_buttons[86_400].click()
        qtbot.waitUntil(lambda: live.range.rows is not None, timeout=10_000)
        assert app.window.live.range.loader.requests == 1
        qtbot.waitUntil(lambda: live._curves["requests"].xData[0] < first + 200, timeout=5_000)
        low, high = view.viewRange()[0]
        assert abs(high - time.time()) < 5 and high - low == pytest.approx(86_400, abs=2)
        x, y = live._curves["requests"].xData, live._curves["requests"].yData
        assert np.all(np.diff(x) > 0)  # older rows before the buffered ones, in time order
        gap = x[np.isnan(y)]
        assert len(gap) == 1 and time.time() - 5 * 3600 - 200 < gap[0] < time.time() - 4 * 3600  # still a gap
        assert re.search(r"3,600 windows · 5,0\d\d read from the streams in \d+-s bins", live.info_label.text())

        # new windows push the oldest out of the full buffer: the rows read still reach it, no new gap
        last = buf.last()
        for i in range(1, 121):
            app.state.live.append("gateway", last[0] + 5 * i, last[2:], None)
        live.redraw(force=True)
        y = live._curves["requests"].yData
        assert np.isnan(y).sum() == 1 and live.range.loader.requests == 1  # nothing read again

        # dragging the plot to the right (into the past) leaves follow-live
        rect = view.sceneBoundingRect()
        centre = live.graphics.mapFromScene(rect.center())
        drag(live.graphics, QtCore.QPointF(centre), QtCore.QPointF(centre) + QtCore.QPointF(rect.width() / 3, 0))
        qtbot.waitUntil(lambda: not live.range.follow, timeout=2_000)
        assert not live.range.follow_button.isChecked()
        assert not any(b.isChecked() for b in live.range.preset_buttons.values())
        moved = view.viewRange()[0][1]
        assert moved < time.time() - 3_600
        live.redraw(force=True)
        qtbot.wait(1_500)  # the clock moves on; the view stays where the operator put it
        assert view.viewRange()[0][1] == pytest.approx(moved)

        # Ctrl+L returns to live
        live.setFocus()
        QTest.keyClick(live, QtCore.Qt.Key.Key_L, QtCore.Qt.KeyboardModifier.ControlModifier)
        assert live.range.follow and live.range.follow_button.isChecked()
        assert abs(view.viewRange()[0][1] - time.time()) < 5
        assert QtGui.QKeySequence(live.range.follow_shortcut.key()).toString() == "Ctrl+L"

        # an old stretch read on its own does not stand for a longer range later: 6 h reads again,
        # on to where the buffer takes over (it used to count as covered: a gap nothing filled)
        qtbot.waitUntil(lambda: live.range.loading is None, timeout=10_000)
        live.range.rows = None  # forget the 24 h read: what is read next is the old stretch alone
        before = live.range.loader.requests
        view.setXRange(time.time() - 7.5 * 3600, time.time() - 7 * 3600, padding=0)
        live.range._moved_by_hand()  # what a drag there emits
        qtbot.waitUntil(lambda: live.range.loader.requests == before + 1 and live.range.loading is None,
                        timeout=10_000)  # fmt: skip
        assert live.range.rows.end < time.time() - 6.5 * 3600
        live.range.preset_buttons[21_600].click()
        qtbot.waitUntil(lambda: live.range.loader.requests == before + 2 and live.range.loading is None,
                        timeout=10_000)  # fmt: skip
        live.redraw(force=True)
        x, y = live._curves["requests"].xData, live._curves["requests"].yData
        shown = (x >= time.time() - 6 * 3600)
        assert x[shown][0] < time.time() - 6 * 3600 + 60 and np.isnan(y[shown]).sum() <= 1  # only the real gap
    finally:
        close_app(qtbot, app)


def seven_hours_on_the_6_h_preset(qtbot, redis_url: str, r, services: int):
    """7 h of demo windows without a gap (more than the live buffer holds) and the app started on the 6-h
    preset showing gateway, its history loaded; the caller closes it (`test_app_incidents.close_app`)."""
    from anomalydesk.app.application import DesktopApp
    from anomalydesk.app.model.settings import AppSettings
    from anomalydesk.ingest.demo import run_fast

    now = time.time() // 5 * 5
    run_fast(r, duration=4 * 3600, rate=2, services=services, seed=3)
    run_fast(r, duration=3 * 3600, rate=2, services=services, seed=3, end=now - 4 * 3600)
    app = DesktopApp(AppSettings(live_span_seconds=21_600, live_service="gateway"), redis_url, run_detector=False)
    app.window.show()
    run(qtbot, app.start())
    qtbot.waitUntil(lambda: app.state.connection.status == "connected", timeout=20_000)
    run(qtbot, app.session.history_loaded.wait())
    return app


def test_a_restored_preset_reads_its_older_windows_as_a_click_does(qtbot, qloop, redis_url, r, tmp_path,  # noqa: F811
                                                                   monkeypatch):  # fmt: skip
    """The 6-h preset saved from the last session: at start-up the buffer fills after the plots follow
    the range, and its first hour used to stay blank until 6 h was clicked again."""
    from test_app_incidents import close_app

    app = seven_hours_on_the_6_h_preset(qtbot, redis_url, r, services=1)
    try:
        live = app.window.live
        assert live.range.preset_buttons[21_600].isChecked() and live.range.follow
        qtbot.waitUntil(lambda: "read from the streams" in live.info_label.text(), timeout=10_000)
        qtbot.waitUntil(lambda: live._curves["requests"].xData[0] < time.time() - 6 * 3600 + 200, timeout=5_000)
        assert live.range.loader.requests == 1

        # the CSV is the 6 h shown, every window (the plots show the older ones in time bins): it was the
        # buffer's 5 h
        monkeypatch.setattr(QtWidgets.QFileDialog, "getSaveFileName",
                            staticmethod(lambda _p, _c, start, f: (str(tmp_path / Path(start).name), f)))  # fmt: skip
        low, high = live.visible_range()
        buf = app.state.live.buffers["gateway"]
        newest = buf.last()[0]
        live.csv_button.click()
        qtbot.waitUntil(lambda: app.window.status.currentMessage().startswith("exported "), timeout=10_000)
        written = next(tmp_path.glob("anomalydesk-gateway-*.csv"))
        with open(written, newline="") as f:
            starts = np.array([int(row[0]) for row in list(csv.reader(f))[1:]])
        # to the newest window (not "within 10 s of the clock": run_fast's last window starts 5–10 s before
        # it ends, and the app's start-up comes on top, so that failed whenever both took more than 5 s)
        assert np.all(np.diff(starts) == 5) and low <= starts[0] < low + 10
        assert newest <= starts[-1] <= min(buf.last()[0], high)
        assert len(starts) > buf.capacity  # more than the buffer holds
        first = datetime.fromtimestamp(starts[0]).astimezone().strftime("%Y%m%dT%H%M")
        assert written.name.startswith(f"anomalydesk-gateway-{first}-")
    finally:
        close_app(qtbot, app)


@pytest.mark.parametrize(("clip", "span", "via"), [
    (True, 900, "button"), (True, 3_600, "button"), (False, 900, "button"), (False, 3_600, "button"),
    (True, 3_600, "plot-A"), (True, 3_600, "score-A"),
], ids=["clip-to-view-15-min-buffered", "clip-to-view-1-h-read", "no-clip-15-min-buffered", "no-clip-1-h-read",
        "clip-to-view-1-h-read-plot-A", "clip-to-view-1-h-read-score-A"])  # fmt: skip
def test_reset_zoom_shows_the_whole_loaded_range_after_a_zoom(qtbot, qloop, r, clip, span, via):  # noqa: F811
    """A buffer of 20 min, the 15-min or the 1-h preset (its older 40 min read from the streams). Zoomed in
    on ten windows, Reset zoom shows every window loaded (with clip-to-view it showed the zoomed part:
    pyqtgraph measured the x-linked curves by the points they drew) and no more (its auto-range padding
    had the older windows read again and again, further back each time); new windows stay in view. A
    plot's own "A" (auto-range) button does the same: it was pyqtgraph's auto-range, with those faults."""
    from anomalydesk import fingerprint as fpmod
    from anomalydesk.app.model.settings import AppSettings
    from anomalydesk.app.model.state import AppState
    from anomalydesk.app.widgets.live_panel import LivePanel

    keys = Keys()
    now = time.time() // 5 * 5
    starts = np.arange(now - 3_000 * 5, now, 5.0)  # 4 h 10 min of windows in the stream
    requests = np.full(len(starts), 100.0)
    requests[-200] = 900.0  # a peak the zoom leaves out
    pipe = r.pipeline(transaction=False)
    for start, value in zip(starts.tolist(), requests.tolist(), strict=True):
        fields: dict[str, object] = {name: 0 for name in fpmod.FEATURE_NAMES}
        fields.update(requests=value, window=int(start // 5), start=start, schema=fpmod.SCHEMA_VERSION,
                      no_data=0, kpis="", ws=5)  # fmt: skip
        pipe.xadd(keys.fingerprints("orders"), fields, id=f"{int(start * 1000)}-1")
    pipe.execute()
    r.hset(keys.config, "window_seconds", 5)
    state = AppState(live_capacity=240)  # 20 min
    loader = RangeLoader(lambda: (r, keys))
    features = ["requests", "rate_5xx", "latency_p95_ms"]  # x-linked plots, as the app's default
    panel = LivePanel(state, AppSettings(live_features=features, live_span_seconds=span), loader)
    qtbot.addWidget(panel)
    panel.show()
    try:
        vector = np.zeros(N_FEATURES)
        for start, value in zip(starts[-240:], requests[-240:], strict=True):  # what the live reader buffered
            vector[FEATURE_INDEX["requests"]] = value
            state.live.append("orders", start, vector.copy(), 20.0)
        state.set_services(["orders"])
        for item in [*panel._curves.values(), panel.score_curve]:
            item.setClipToView(clip)
        curve = panel._curves["requests"]
        if span > 1_200:
            qtbot.waitUntil(lambda: panel.range.rows is not None and panel.range.loading is None, timeout=10_000)
        panel.redraw(force=True)
        loaded = (float(curve.xData[0]), float(curve.xData[-1]))
        assert loaded[1] == starts[-1] and loaded[0] == (starts[-240] if span < 1_200 else pytest.approx(
            now - 1.1 * span, abs=180))  # the buffer; or the hour and its margin, in 175-s bins  # fmt: skip
        requests_read = loader.requests

        view = panel._feature_plots[0].getViewBox()
        view.setXRange(starts[-100], starts[-90], padding=0)  # zoomed in on ten windows, away from the peak
        panel.range._moved_by_hand()  # what the wheel emits
        qtbot.waitUntil(lambda: view.viewRange()[0][1] == starts[-90], timeout=5_000)
        if via == "button":
            panel.zoom_button.click()
        else:  # the "A" button pyqtgraph shows in a plot's corner
            button = (panel._feature_plots[1] if via == "plot-A" else panel.score_plot).autoBtn
            button.clicked.emit(button)
        assert not panel.range.follow
        qtbot.waitUntil(lambda: view.viewRange()[0] == pytest.approx(loaded, abs=1), timeout=5_000)
        for plot in [*panel._feature_plots, panel.score_plot]:  # every linked plot, whichever paints first
            assert plot.getViewBox().viewRange()[0] == pytest.approx(loaded, abs=1)
        qtbot.waitUntil(lambda: view.viewRange()[1][1] >= 900, timeout=5_000)  # the peak is in view again
        panel.range.keep_loaded()
        assert panel.range.loading is None and loader.requests == requests_read  # nothing more to read

        # a new window: still in view, as all the others
        vector[FEATURE_INDEX["requests"]] = 100.0
        state.live.append("orders", now, vector, 20.0)
        panel.redraw()
        assert view.viewRange()[0] == pytest.approx((loaded[0] if span > 1_200 else starts[-239], now), abs=1)
    finally:
        panel.stop()
