"""The Training panel against a real redis-server (offscreen): the model versions of the selected service
show without a click, their training metrics in words, "learning (N more windows)" counts live and
history windows and counts down as windows arrive, and each model action says what is active now."""

from __future__ import annotations

import json
import time

import pytest
import redis
from PySide6 import QtWidgets

from anomalydesk import config
from anomalydesk.app.model.settings import AppSettings
from anomalydesk.detect.service_state import service_states
from anomalydesk.detect.training_run import train_service
from anomalydesk.store import admin
from anomalydesk.store import models as registry
from anomalydesk.store.keys import Keys
from anomalydesk.store.sealing import seal_all
from app_support import qloop, run  # noqa: F401  (fixture)
from test_app_operator import close_app, open_app, seed_service

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_level_fail("WARNING"),
              pytest.mark.qt_log_ignore("This plugin does not support")]  # the offscreen platform says so

METRICS = {"training_flag_rate": 0.0123, "threshold_raw": 0.5311, "daily_cycle": True, "note": None,
           "excluded_windows": 3, "restored_windows": 0, "gap_windows": 12, "stretched_windows": 0}  # fmt: skip


def save_model(r: redis.Redis, service: str) -> int:
    return registry.save(r, service, json.dumps({"limit": 200}), {"windows": 4321, "metrics": METRICS})


def wait_message(qtbot, panel, text: str) -> None:
    try:
        qtbot.waitUntil(lambda: panel.message.text() == text, timeout=10_000)
    except Exception:
        pytest.fail(f"the panel says {panel.message.text()!r}, not {text!r}")


def state_shown(panel, service: str) -> str:
    """The state the panel's services table shows for `service` ("" while it is not listed)."""
    table = panel.services_table
    return next((table.item(i, 1).text() for i in range(table.rowCount()) if table.item(i, 0).text() == service), "")


def cells(table, row: int) -> list[str]:
    return [table.item(row, c).text() for c in range(table.columnCount())]


def test_versions_fill_without_a_click_in_words_and_actions_name_the_active_model(qtbot, qloop, redis_url, r):  # noqa: F811
    seed_service(r, "alpha", time.time())
    seed_service(r, "beta", time.time())
    for service in ("alpha", "alpha", "beta"):
        save_model(r, service)
    app = open_app(qtbot, AppSettings(redis_url=redis_url))
    try:
        panel = app.window.training
        qtbot.waitUntil(lambda: panel.services_table.rowCount() == 2, timeout=20_000)
        # a row is selected (not only the current cell) and its versions are listed, nothing clicked
        assert panel.selected_service() == "alpha"
        assert [i.row() for i in panel.services_table.selectionModel().selectedRows()] == [0]
        qtbot.waitUntil(lambda: panel.versions_table.rowCount() == 2, timeout=5_000)
        run(qtbot, app.actions.refresh_models())  # a re-read (the 15-s timer's) keeps what an action said
        panel.message.setText("kept")
        run(qtbot, app.actions.refresh_models())
        assert panel.message.text() == "kept"
        newest = cells(panel.versions_table, 0)
        assert newest[0] == "v2" and newest[2] == "4,321" and newest[3] == "yes"
        assert newest[-1] == ("flagged in training 1.2% · daily cycle yes · excluded 3 windows · gaps 12 windows · "
                              "raw threshold 0.531")  # fmt: skip
        assert "training_flag" not in newest[-1] and "_" not in newest[-1]

        panel.services_table.selectRow(1)
        assert panel.selected_service() == "beta" and panel.versions_table.rowCount() == 1
        panel.services_table.selectRow(0)
        panel.versions_table.selectRow(1)  # v1 of alpha (newest first)
        panel.activate_button.click()
        wait_message(qtbot, panel, "alpha: model v1 is active")
        assert app.window.status.currentMessage() == "alpha: model v1 is active"
        assert registry.active_versions(r)["alpha"] == 1
        panel.versions_table.selectRow(0)
        panel.activate_button.click()
        wait_message(qtbot, panel, "alpha: model v2 is active")
        panel.rollback_button.click()
        wait_message(qtbot, panel, "alpha: rolled back: model v1 is active")
        assert app.window.status.currentMessage() == "alpha: rolled back: model v1 is active"
        panel.rollback_button.click()  # nothing older than v1
        qtbot.waitUntil(lambda: panel.message.text().startswith("alpha: rollback failed: "), timeout=10_000)
    finally:
        close_app(qtbot, app)


def test_learning_counts_history_and_counts_down_as_windows_arrive(qtbot, qloop, redis_url, r, monkeypatch):  # noqa: F811
    from anomalydesk.app.model import settings as settings_mod

    monkeypatch.setattr(settings_mod, "LEARNING_REFRESH_MS", 300)
    now = time.time()
    seed_service(r, "gamma", now, windows=19)  # live windows
    seed_service(r, "gamma", now - 7200, windows=40)  # earlier: a backfill's history
    keys = Keys()
    history = r.xlen(keys.history("gamma", admin.window_seconds(r, keys)))
    live = r.xlen(keys.fingerprints("gamma"))
    assert history > 0 and live > 0
    app = open_app(qtbot, AppSettings(redis_url=redis_url))
    try:
        panel = app.window.training

        def shown() -> str:
            return state_shown(panel, "gamma")

        needed = config.MIN_TRAINING_WINDOWS - live - history
        assert service_states(r)["gamma"]["needed"] == needed
        qtbot.waitUntil(lambda: shown() == f"learning ({needed} more windows)", timeout=20_000)
        seed_service(r, "gamma", time.time() + 60, windows=10)  # more live windows arrive
        more = config.MIN_TRAINING_WINDOWS - r.xlen(keys.fingerprints("gamma")) - history
        assert more < needed
        qtbot.waitUntil(lambda: shown() == f"learning ({more} more windows)", timeout=10_000)  # no click
    finally:
        close_app(qtbot, app)


def test_a_service_with_a_gap_is_not_ready_to_train_before_training_would_train_it(qtbot, qloop, redis_url, r,  # noqa: F811
                                                                                   monkeypatch):  # fmt: skip
    """The state counted every stored window, training leaves a gap's out: 200 windows of traffic and
    100 silent ones after them read "ready to train" (300 of 256) and training then refused (200 of 256)."""
    from anomalydesk.app.model import settings as settings_mod

    monkeypatch.setattr(settings_mod, "LEARNING_REFRESH_MS", 300)
    keys, start = Keys(), time.time() - 7200
    seed_service(r, "delta", start, windows=200)
    seal_all(r, now=start + 100 * 5)  # then 100 windows without any event: a gap (500 s)
    entries = r.xrange(keys.fingerprints("delta"))
    with_data = sum(1 for _, fields in entries if fields.get(b"silent") != b"1")
    assert len(entries) >= config.MIN_TRAINING_WINDOWS > with_data  # stored enough, not enough to train on
    needed = config.MIN_TRAINING_WINDOWS - with_data
    app = open_app(qtbot, AppSettings(redis_url=redis_url))
    try:
        panel = app.window.training

        def shown() -> str:
            return state_shown(panel, "delta")

        try:
            qtbot.waitUntil(lambda: shown() == f"learning ({needed} more windows)", timeout=20_000)
        except Exception:
            pytest.fail(f"delta shows {shown()!r} with {with_data} windows of traffic")
        assert "ready to train" not in panel.message.text()
        assert service_states(r)["delta"]["needed"] == needed  # `status` and the panel count alike
        refused = train_service(r, "delta", activate=False)  # what training says of the same windows
        assert refused.version is None and refused.short_of_history == (with_data, config.MIN_TRAINING_WINDOWS)
        seed_service(r, "delta", start + 100 * 5 + (needed + 1) * 5, windows=needed)  # traffic is back
        qtbot.waitUntil(lambda: shown() == "ready to train", timeout=10_000)  # no click
        assert train_service(r, "delta", activate=False).version is not None  # and training does train it
    finally:
        close_app(qtbot, app)


def message_room(window) -> int:
    """The width, in px, the status bar leaves for its temporary message (left of the connection's state)."""
    return window.connection_status.geometry().left()


def test_rollback_and_its_failure_are_visible_in_the_status_bar(qtbot, qloop, redis_url, r):  # noqa: F811
    """The connection's state took the whole status bar (stretch 1): every action's message was drawn
    into zero pixels. The message now has room for all of its text, the connection's state its own."""
    seed_service(r, "delta", time.time())
    for _ in range(2):
        save_model(r, "delta")
    app = open_app(qtbot, AppSettings(redis_url=redis_url))
    try:
        window, panel = app.window, app.window.training
        qtbot.waitUntil(lambda: panel.services_table.rowCount() == 1, timeout=20_000)
        panel.rollback_button.click()
        said = "delta: rolled back: model v1 is active"
        qtbot.waitUntil(lambda: window.status.currentMessage() == said, timeout=10_000)
        qtbot.waitUntil(lambda: message_room(window) > window.status.fontMetrics().horizontalAdvance(said),
                        timeout=5_000)  # fmt: skip
        connection = window.connection_status  # in view beside it, elided only past its maximum width
        shown = QtWidgets.QLabel.text(connection)
        assert shown.startswith(f"connected · {redis_url}"), shown
        assert connection.width() >= min(connection.fontMetrics().horizontalAdvance(connection.text()),
                                          connection.max_width)  # fmt: skip
        panel.rollback_button.click()  # nothing older than v1: the failure is said in the status bar too
        qtbot.waitUntil(lambda: window.status.currentMessage().startswith("delta: rollback failed: "),
                        timeout=10_000)  # fmt: skip
        assert message_room(window) > window.width() // 2
    finally:
        close_app(qtbot, app)


def test_first_run_training_says_once_what_is_missing_and_then_that_it_can_train(qtbot, qloop, redis_url, r):  # noqa: F811
    """Train before any history: one sentence for every service short of windows (not the same reason
    once per service), each service's state with its count; once the windows are there the state reads
    "ready to train" and the stale message gives way to that."""
    now = time.time()
    for service in ("east", "west"):
        seed_service(r, service, now, windows=6)
    app = open_app(qtbot, AppSettings(redis_url=redis_url))
    try:
        panel = app.window.training
        need = config.MIN_TRAINING_WINDOWS
        qtbot.waitUntil(lambda: panel.services_table.rowCount() == 2, timeout=20_000)
        assert cells(panel.services_table, 0)[1] == f"learning ({need - 6} more windows)"
        panel.train_button.click()
        said = (f"trained 0 of 2 service(s); 2 services need more windows of history to train: "
                f"at least {need} each; each has 6")  # fmt: skip
        training = app.state.training
        qtbot.waitUntil(lambda: not training.running and training.result == said, timeout=30_000)
        wait_message(qtbot, panel, said)
        assert panel.message.text().count("need") == 1
        for service in ("east", "west"):  # a backfill's worth of windows arrives
            seed_service(r, service, now + 5 * (need + 10), windows=need + 10)
        run(qtbot, app.actions.refresh_models())
        qtbot.waitUntil(lambda: [cells(panel.services_table, i)[1] for i in range(2)] == ["ready to train"] * 2,
                        timeout=10_000)  # fmt: skip
        wait_message(qtbot, panel, "2 services ready to train: east, west")
        assert app.window.overview.service_counts()["learning"] == 2  # no model scores them yet
    finally:
        close_app(qtbot, app)
