"""The app after a window-length change, offscreen against a real redis-server: a model trained for
another window length is shown as not used, its service as learning, and its threshold nowhere.

A new user ran `anomalydesk setup --window 10 --force` while the app ran: `status` said "v1 (not used)
… train it again", the app went on saying "services 1 normal", "ready v1" and "score 31 / threshold
70" — and, once 10-s windows arrived (Stop and Start of the demo), an 8-minute-old score as "now".
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from PySide6 import QtCore

from anomalydesk.app.model.state import READY_TO_TRAIN
from anomalydesk.cli import main as cli_main
from anomalydesk.config import SketchSettings
from anomalydesk.fingerprint import FEATURE_NAMES, SCHEMA_VERSION
from anomalydesk.store import admin
from anomalydesk.store.keys import Keys
from app_support import close_app, qloop, run  # noqa: F401  (fixture)
from test_app_scores import SERVICE, open_app_on_service
from test_app_training_panel import cells

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_level_fail("WARNING"),
              pytest.mark.qt_log_ignore("This plugin does not support")]  # the offscreen platform says so


def service_row(panel) -> list[str]:
    """SERVICE's row of the Training panel's services table ([] while it is not listed)."""
    table = panel.services_table
    return next((cells(table, i) for i in range(table.rowCount()) if table.item(i, 0).text() == SERVICE), [])


def wait_for(qtbot, shown, what, timeout: int = 20_000) -> None:
    try:
        qtbot.waitUntil(lambda: bool(shown()), timeout=timeout)
    except Exception:
        pytest.fail(f"not shown: {what()}")


def test_a_model_of_the_old_window_length_is_shown_not_used_its_service_learning_without_a_threshold(
        qtbot, qloop, redis_url, r, capsys):  # noqa: F811  # fmt: skip
    from anomalydesk.detect import window_scores
    from anomalydesk.detect.detector import Detector
    from anomalydesk.detect.service_state import decode_model, score_window
    from anomalydesk.detect.train import TrainParams
    from anomalydesk.detect.training_run import train_service
    from test_detector import healthy_window

    admin.setup(r, SketchSettings(window_seconds=5))
    rng = np.random.default_rng(7)
    now_w = int(time.time() // 5)
    for w in range(now_w - 300, now_w - 1):
        healthy_window(r, SERVICE, w, rng)
    assert train_service(r, SERVICE, params=TrainParams(trees=30)).version == 1
    detector = Detector(r, scorer=score_window, decode=decode_model, seal=False, block_ms=10)
    while detector.step().processed:
        pass
    assert window_scores.read(r, SERVICE)[-1].start == (now_w - 2) * 5.0

    app = open_app_on_service(qtbot, redis_url, 299)
    try:
        training, live, overview = app.window.training, app.window.live, app.window.overview

        def title() -> str:
            return live.score_plot.titleLabel.text

        def seen() -> str:
            return (f"row {service_row(training)}, counts {overview.service_counts()}, thresholds "
                    f"{app.state.live.thresholds}, title {title()!r}, info {live.info_label.text()!r}")

        # trained for 5-s windows, at 5 s: it scores, and the app says so
        wait_for(qtbot, lambda: service_row(training)[1:] == ["ready", "v1"]
                 and overview.service_counts()["normal"] == 1 and " threshold 70" in title(), seen)

        # `setup --window 10 --force` while the app runs: the detector does not use v1 at 10 s
        assert cli_main(["setup", "--window", "10", "--force", "--redis", redis_url]) == 0
        assert cli_main(["status", "--redis", redis_url]) == 0
        assert f"{SERVICE} v1 (not used)" in capsys.readouterr().out
        assert run(qtbot, app.session.core.model_threshold(SERVICE)) is None  # no threshold of a model not used

        def not_used() -> bool:
            row, counts = service_row(training), overview.service_counts()
            # (the windows carry no length, as those sealed before lengths were recorded: training would
            # use them at 10 s, so the state is "ready to train" rather than "learning (256 more windows)")
            return (row[1:] == [READY_TO_TRAIN, "v1 (not used)"]
                    and counts["normal"] == 0 and counts["learning"] == 1
                    and SERVICE not in app.state.live.thresholds and "threshold" not in title()
                    and "threshold" not in live.info_label.text())  # fmt: skip

        wait_for(qtbot, not_used, seen)  # nothing clicked, no new window: the app re-read what the change moved
        row = training.services_table.findItems("v1 (not used)", QtCore.Qt.MatchFlag.MatchExactly)[0].row()
        why = training.services_table.item(row, 2).toolTip()
        assert "counts 5-s windows, the windows are 10 s now: train it again" in why, why
        assert title() == "score (0–100) · learning (no model in use)", title()

        # 10-s windows arrive (the demo started again): none is scored, and the last 5-s score is no "now"
        keys = Keys()
        start = -(-(now_w - 1) * 5 // 10) * 10  # the first 10-s window after the last 5-s one
        for t in (start, start + 10):
            fields: dict[str, object] = dict.fromkeys(FEATURE_NAMES, 0)
            fields.update(requests=500, window=t // 10, start=t, ws=10, schema=SCHEMA_VERSION, no_data=0, kpis="")
            r.xadd(keys.fingerprints(SERVICE), fields, id=f"{t * 1000}-1")
        while detector.step().processed:
            pass
        assert window_scores.read(r, SERVICE)[-1].start == (now_w - 2) * 5.0  # the detector scored none of them
        qtbot.waitUntil(lambda: len(app.state.live.buffers[SERVICE]) == 301, timeout=20_000)
        live.redraw(force=True)
        assert "now" not in title() and "threshold" not in title(), title()

        # back to 5-s windows from the app's own Sketches settings: v1 scores again, said once the change is done
        run(qtbot, app.actions.apply_sketch_settings({"window_seconds": 5}, True))
        assert app.state.live.thresholds.get(SERVICE) == 70 and service_row(training)[1:] == ["ready", "v1"], seen()
        assert overview.service_counts()["normal"] == 1
        wait_for(qtbot, lambda: live.threshold_line.isVisible() and "threshold 70" in live.info_label.text(), seen)
    finally:
        close_app(qtbot, app)
