"""The app's main journey on the data layer: demo traffic first, then "Backfill", then "Train" — the
real window (offscreen) against a real redis-server. Before history landed whenever it was sent, the
backfill came back millions late and training refused every service.
"""

from __future__ import annotations

import asyncio

import pytest

from anomalydesk.app.model.settings import AppSettings
from anomalydesk.app.services.core_client import JobCancelled
from anomalydesk.config import SketchSettings
from anomalydesk.store import admin
from app_support import qloop, run  # noqa: F401  (fixture)
from test_app_operator import close_app, open_app

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_level_fail("WARNING"),
              pytest.mark.qt_log_ignore("This plugin does not support")]  # the offscreen platform says so


def test_backfill_after_the_live_demo_then_train_every_service(qtbot, qloop, redis_url, r):  # noqa: F811
    admin.setup(r, SketchSettings(window_seconds=2))
    app = open_app(qtbot, AppSettings(redis_url=redis_url, offer_backfill=False))
    try:
        run(qtbot, app.actions.start_demo(300, 5))
        qtbot.waitUntil(lambda: any(len(b) for b in app.state.live.buffers.values()), timeout=30_000)
        result = run(qtbot, app.actions.backfill(1800, 5), timeout=120)  # while the demo goes on
        assert result["late"] == 0 and result["events_accepted"] == result["events"], result["summary"]
        assert app.state.demo.backfill.startswith("done") and "refused" not in app.state.demo.backfill
        trained = run(qtbot, app.actions.train(None, 17_280, 20, 0.01), timeout=120)
        assert len(trained["trained"]) == 5, trained["summary"]
        windows = {o["service"]: o["windows"] for o in trained["outcomes"]}
        assert all(n >= 890 for n in windows.values()), windows  # 1800 s of 2-s windows, from history
        assert app.window.training.progress.value() == 100
    finally:
        run(qtbot, app.actions.stop_demo())
        close_app(qtbot, app)


def test_quitting_during_a_backfill_ends_it_instead_of_waiting_for_it(qtbot, qloop, redis_url, r):  # noqa: F811
    """The backfill runs in a child process the app waited for on quit: a month of history held the
    window for minutes. Quitting now ends the child; what it wrote stays."""
    app = open_app(qtbot, AppSettings(redis_url=redis_url, offer_backfill=False))
    keys, days = app.session.keys, 30
    task = asyncio.ensure_future(app.actions.backfill(days * 86400, 3))
    try:
        qtbot.waitUntil(lambda: app.state.demo.backfill == "running" and r.xlen(keys.fingerprints("gateway")) > 0,
                        timeout=60_000)  # fmt: skip
        run(qtbot, app.shutdown())  # returns once the child is ended (it waited for it to finish)
        qtbot.waitUntil(task.done, timeout=10_000)
    finally:
        app.dispose()
    assert isinstance(task.exception(), JobCancelled)
    assert app.state.demo.backfill.startswith("backfill cancelled")
    assert 0 < r.xlen(keys.fingerprints("gateway")) < days * 86400 // 5  # ended part-way
