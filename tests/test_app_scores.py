"""The live plot shows the scores the detector stored (the ones its alerts used), offscreen, against a
real redis-server: windows nobody scored are gaps, and each model version's takeover is marked."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from app_support import close_app, qloop, run  # noqa: F401  (fixture)

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_level_fail("WARNING"),
              pytest.mark.qt_log_ignore("This plugin does not support")]  # the offscreen platform says so

SERVICE = "payments"


def stored_scores(r) -> dict[float, float]:
    from anomalydesk.detect import window_scores

    return {s.start: s.score for s in window_scores.read(r, SERVICE)}


def plotted(panel) -> tuple[np.ndarray, np.ndarray]:
    """The score curve's data as set (getData() would give what clip-to-view shows of it)."""
    panel.redraw(force=True)
    curve = panel.score_curve
    return np.asarray(curve.xData, dtype=float), np.asarray(curve.yData, dtype=float)


def open_app_on_service(qtbot, redis_url: str, windows: int):
    """The app on the test's server, its live panel showing SERVICE once its `windows` windows are read."""
    from anomalydesk.app.application import DesktopApp
    from anomalydesk.app.model.settings import AppSettings

    app = DesktopApp(AppSettings(live_features=["requests"]), redis_url, run_detector=False)
    app.window.show()
    run(qtbot, app.start())
    panel = app.window.live
    panel.select_service(SERVICE)
    live = app.state.live
    qtbot.waitUntil(lambda: SERVICE in live.buffers and len(live.buffers[SERVICE]) == windows, timeout=20_000)
    # the service list can refill after the buffers arrive (a full suite once plotted before it did)
    qtbot.waitUntil(lambda: panel.service == SERVICE, timeout=20_000)
    return app


def test_the_plot_shows_the_stored_scores_and_marks_each_activation(qtbot, qloop, redis_url, r):  # noqa: F811
    from anomalydesk.store import models as registry
    from test_detector import add_window, alerts, drain, make_detector

    detector = make_detector(r)
    for w in range(1000, 1004):  # learning: no model, no scores
        add_window(r, SERVICE, w)
    drain(detector)
    registry.save(r, SERVICE, json.dumps({"limit": 200}), {"windows": 100})
    detector._last_refresh = -1e18  # the next step reads the new model at once
    for w, requests in zip(range(1004, 1008), [100, 300, 900, 100], strict=True):
        add_window(r, SERVICE, w, requests=requests)
    drain(detector)
    assert len(stored_scores(r)) == 4

    app = open_app_on_service(qtbot, redis_url, 8)
    try:
        panel, live = app.window.live, app.state.live
        # history read at start-up: scores where the detector stored one, gaps where it did not
        x, y = plotted(panel)
        assert list(x) == [w * 5.0 for w in range(1000, 1008)]
        assert np.isnan(y[:4]).all()
        assert dict(zip(x[4:], y[4:], strict=True)) == stored_scores(r)
        assert panel.activation_marks == [(1004 * 5.0, "model v1")]
        # the alert's score is the plotted one
        opened = [a for a in alerts(r) if a["service"] == SERVICE and a["kind"] == "new"]
        assert opened and y[list(x).index(opened[0]["window"] * 5.0)] == opened[0]["score"]

        # a newer model activated while the app runs: it scores from its activation on
        registry.save(r, SERVICE, json.dumps({"limit": 1000}), {"windows": 100})
        detector._last_refresh = -1e18
        for w in range(1008, 1012):
            add_window(r, SERVICE, w, requests=300)
        drain(detector)
        qtbot.waitUntil(lambda: np.isfinite(live.buffers[SERVICE].view()[:, 1]).sum() == 8, timeout=20_000)
        x, y = plotted(panel)
        stored = stored_scores(r)
        assert {a: b for a, b in zip(x, y, strict=True) if np.isfinite(b)} == stored
        assert np.isnan(y[:4]).all() and len(stored) == 8
        assert panel.activation_marks == [(1004 * 5.0, "model v1"), (1008 * 5.0, "model v2")]
        # v1 said 300 requests is anomalous (80), v2 does not (10): the earlier windows keep v1's scores
        assert y[5] == 80.0 and list(y[8:]) == [10.0] * 4
    finally:
        detector.release()
        close_app(qtbot, app)


def test_the_score_title_says_what_became_of_the_traffic_not_the_last_score_as_if_live(qtbot, qloop, redis_url, r,  # noqa: F811
                                                                                      monkeypatch):
    """A new user stopped the demo and the score plot's title still read "now 31, threshold 70": the last
    score before the stop (a stop's silent windows are not scored), as if live. Against a real server, a
    trained model and the real detector, the title and the info line say instead that no window came
    for a while ("no recent windows (newest …)"), that the traffic was stopped on purpose ("demo traffic
    stopped at …", the stop `store.traffic_stops` records), and, once a live service falls silent, "no
    traffic since …" — with the score only when the detector scored a window of the silence. Traffic
    back, the newest score is "now" again."""
    import re

    from anomalydesk.app.application import DesktopApp
    from anomalydesk.app.model import traffic
    from anomalydesk.app.model.settings import AppSettings
    from anomalydesk.detect import window_scores
    from anomalydesk.detect.detector import Detector
    from anomalydesk.detect.incident_model import local_time
    from anomalydesk.detect.service_state import decode_model, score_window
    from anomalydesk.detect.train import TrainParams
    from anomalydesk.detect.training_run import train_service
    from anomalydesk.store import traffic_stops
    from test_detector import add_window, healthy_window

    rng = np.random.default_rng(5)
    now_w = int(time.time() // 5)
    newest = now_w - 30  # the newest window is 150 s old: 30 windows without one
    for w in range(newest - 399, newest + 1):
        healthy_window(r, SERVICE, w, rng)
    assert train_service(r, SERVICE, params=TrainParams(trees=30)).version == 1
    detector = Detector(r, scorer=score_window, decode=decode_model, seal=False, block_ms=10)

    def drain() -> None:
        while detector.step().processed:
            pass

    drain()
    assert window_scores.read(r, SERVICE)[-1].start == newest * 5.0

    app = DesktopApp(AppSettings(live_features=["requests"]), redis_url, run_detector=False)
    app.window.show()
    run(qtbot, app.start())
    try:
        panel = app.window.live
        panel.select_service(SERVICE)

        def title() -> str:
            return panel.score_plot.titleLabel.text

        def wait_for(shown, timeout: int = 20_000) -> None:
            try:
                qtbot.waitUntil(lambda: bool(shown()), timeout=timeout)
            except Exception:
                pytest.fail(f"the title reads {title()!r}, the info line {panel.info_label.text()!r}")

        def shows(words: str) -> bool:
            return words in title() and panel.info_label.text().endswith(f"{words} · threshold 70")

        stale = f"no recent windows (newest {local_time(newest * 5.0)})"
        wait_for(lambda: shows(stale))
        assert title() == f"score (0–100) · {stale}" and "now" not in panel.info_label.text()

        since = (newest + 1) * 5.0
        traffic_stops.record(r, [SERVICE], since)  # the demo stopped: its services' silence is on purpose
        for w in range(newest + 1, now_w - 4):
            add_window(r, SERVICE, w, requests=0, silent=1)
        drain()
        assert window_scores.read(r, SERVICE)[-1].start == newest * 5.0  # the stop's windows are not scored
        stopped = f"demo traffic stopped at {local_time(since)}"
        wait_for(lambda: shows(stopped))
        assert title() == f"score (0–100) · {stopped}"

        # the windows from here on are the newest ones, none in the future (the view ends now), and the
        # newest with traffic less than 4 windows old (older, it says "no recent windows")
        current = int(time.time() // 5)
        healthy_window(r, SERVICE, current - 2, rng)  # traffic is back: the detector ends the stop, scores it
        drain()
        assert window_scores.read(r, SERVICE)[-1].start == (current - 2) * 5.0
        wait_for(lambda: re.fullmatch(r"score \(0–100\) · now \d+, threshold 70", title()), timeout=10_000)
        assert re.search(r" · score \d+ / threshold 70$", panel.info_label.text()), panel.info_label.text()

        monkeypatch.setattr(traffic, "NO_TRAFFIC_WINDOWS", 2)  # (three would reach into the future)
        for w in (current - 1, current):  # the service falls silent, no stop: its silence is scored
            add_window(r, SERVICE, w, requests=0, silent=1)
        drain()
        silent = f"no traffic since {local_time((current - 1) * 5.0)}"
        newest_score = window_scores.read(r, SERVICE)[-1]
        assert newest_score.start == current * 5.0  # (one service alone: no system gap)
        wait_for(lambda: f"{silent} · now " in title(), timeout=10_000)
        assert title().endswith(f"now {int(newest_score.score)}, threshold 70"), title()
    finally:
        close_app(qtbot, app)


def test_a_window_without_its_score_yet_is_a_gap_until_the_score_arrives(qtbot):
    from anomalydesk.app.model.settings import AppSettings
    from anomalydesk.app.model.state import AppState
    from anomalydesk.app.widgets.live_panel import LivePanel
    from anomalydesk.detect.window_scores import WindowScore
    from anomalydesk.fingerprint import N_FEATURES

    state = AppState(live_capacity=10)
    panel = LivePanel(state, AppSettings(live_features=["requests"]))
    qtbot.addWidget(panel)
    for i in range(12):
        state.live.append(SERVICE, 100.0 + 5 * i, np.zeros(N_FEATURES), None)
    state.set_services([SERVICE])
    panel.select_service(SERVICE)
    _, y = plotted(panel)
    assert np.isnan(y).all() and panel.activation_marks == []
    scores = [WindowScore(20 + i, 100.0 + 5 * i, 40.0 + i, "info", False, 3) for i in range(12)]  # type: ignore[arg-type]
    assert state.live.apply_scores(SERVICE, scores[:1]) == 0  # its window left the buffer: dropped
    assert state.live.apply_scores(SERVICE, scores[1:]) == 10
    x, y = plotted(panel)
    assert list(x) == [100.0 + 5 * i for i in range(2, 12)]
    assert list(y) == [40.0 + i for i in range(2, 12)]
    # one mark, where v3 began scoring (the dropped window: off the plot now), none for the rest
    assert panel.activation_marks == [(100.0, "model v3")]


def test_model_labels_a_few_windows_apart_do_not_print_over_each_other(qtbot):
    """v1 … v4 took over 20 s apart (5 px in the hour shown): their labels read "modelmodel v2" on one
    row; now they stack, one a row, and one with no row free is left out (its dotted line stays)."""
    import time

    from anomalydesk.app.model.settings import AppSettings
    from anomalydesk.app.model.state import AppState
    from anomalydesk.app.widgets.live_panel import LivePanel
    from anomalydesk.detect.window_scores import WindowScore
    from anomalydesk.fingerprint import N_FEATURES

    state = AppState(live_capacity=800)
    panel = LivePanel(state, AppSettings(live_features=["requests"], live_service=SERVICE))
    qtbot.addWidget(panel)
    panel.resize(1000, 400)
    panel.show()
    first = int(time.time() // 5) - 720
    for w in range(first, first + 720):
        state.live.append(SERVICE, w * 5.0, np.zeros(N_FEATURES), None)
    state.set_services([SERVICE])
    panel.select_service(SERVICE)
    takeovers = [first + 700, first + 704, first + 708, first + 712]
    scores = [WindowScore(w, w * 5.0, 40.0, "info", False, 1 + sum(w >= t for t in takeovers[1:]))  # type: ignore[arg-type]
              for w in range(takeovers[0], first + 720)]  # fmt: skip
    state.live.apply_scores(SERVICE, scores)
    panel.redraw(force=True)
    assert [label for _x, label in panel.activation_marks] == ["model v1", "model v2", "model v3", "model v4"]
    qtbot.waitUntil(lambda: 0 < panel.mark_labels[0].left() < panel.width())  # drawn where the lines are
    shown = panel.mark_labels
    assert len(shown) >= 2
    assert not any(a.intersects(b) for i, a in enumerate(shown) for b in shown[i + 1:])

    # far apart (the view zoomed in on them), every label is on the first row
    view = panel.score_plot.getViewBox()
    panel.range.stop_following()
    view.setXRange(takeovers[0] * 5.0 - 10, takeovers[-1] * 5.0 + 10, padding=0)
    shown = panel.mark_labels
    assert len(shown) == 4 and len({round(r.top()) for r in shown}) == 1
    assert not any(a.intersects(b) for i, a in enumerate(shown) for b in shown[i + 1:])


def test_a_window_length_change_is_marked_where_the_requests_per_window_step(qtbot, qloop, redis_url, r):  # noqa: F811
    """5-s windows, then 10-s ones: each holds twice the requests, a step on the plot that is no change in
    traffic. The score plot marks where the length changed, for windows read at start-up and live alike."""
    from anomalydesk.fingerprint import FEATURE_NAMES, SCHEMA_VERSION
    from anomalydesk.store.keys import Keys

    keys = Keys()

    def window(start: int, length: int, requests: float) -> None:
        fields: dict[str, object] = dict.fromkeys(FEATURE_NAMES, 0)
        fields.update(requests=requests, window=start // length, start=start, ws=length, schema=SCHEMA_VERSION,
                      no_data=0, kpis="")  # fmt: skip
        r.sadd(keys.services, SERVICE)
        r.xadd(keys.fingerprints(SERVICE), fields, id=f"{start * 1000}-1")

    for start in range(5000, 5020, 5):
        window(start, 5, 100)
    for start in range(5020, 5050, 10):
        window(start, 10, 200)
    app = open_app_on_service(qtbot, redis_url, 7)
    try:
        panel, live = app.window.live, app.state.live
        panel.redraw(force=True)
        assert panel.marks == [(5020.0, "window 5 s → 10 s")]
        # one line across the change: the first 10-s window's step (10 s after 5-s ones) is no gap
        requests = panel._curves["requests"]
        assert list(requests.xData) == [5000, 5005, 5010, 5015, 5020, 5030, 5040]
        assert np.isfinite(requests.yData).all()
        window(5050, 10, 200)  # live, the same length: no new mark
        window(5060, 30, 600)  # live, another change
        qtbot.waitUntil(lambda: len(live.buffers[SERVICE]) == 9, timeout=20_000)
        panel.redraw(force=True)
        assert panel.marks == [(5020.0, "window 5 s → 10 s"), (5060.0, "window 10 s → 30 s")]
        assert panel.activation_marks == []  # (no model scored anything)
    finally:
        close_app(qtbot, app)
