"""The Sketches panel against a real redis-server (offscreen): on a first run, where the services arrive
with the first events after the app connected, each service's sketch sizes appear without a restart."""

from __future__ import annotations

import time

import pytest

from anomalydesk.app.model.settings import AppSettings
from app_support import qloop  # noqa: F401  (fixture)
from test_app_operator import close_app, open_app, seed_service

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_level_fail("WARNING"),
              pytest.mark.qt_log_ignore("This plugin does not support")]  # the offscreen platform says so


def test_sizes_fill_when_services_arrive_after_start_up(qtbot, qloop, redis_url, r):  # noqa: F811
    app = open_app(qtbot, AppSettings(redis_url=redis_url))
    try:
        panel = app.window.sketches
        qtbot.waitUntil(lambda: app.state.connection.status == "connected" and bool(app.state.sketches),
                        timeout=20_000)  # fmt: skip
        assert panel.sizes.rowCount() == 0  # the start-up read: nothing set up, no service yet
        seed_service(r, "first-svc", time.time())  # the server is set up and the first events arrive
        qtbot.waitUntil(lambda: "first-svc" in app.state.services, timeout=20_000)
        qtbot.waitUntil(lambda: panel.sizes.rowCount() == 1, timeout=10_000)
        assert panel.sizes.item(0, 0).text() == "first-svc"
        assert "×" in panel.sizes.item(0, 1).text()  # its CMS width × depth, not an error
    finally:
        close_app(qtbot, app)


def test_a_new_service_does_not_undo_the_form_being_edited(qtbot, qloop, redis_url, r):  # noqa: F811
    """The sizes are re-read when a service appears; that re-read wrote the stored settings back into
    the form, so a width the operator was changing (or waiting to confirm with "Recreate") was lost and
    Recreate applied the old one. The form keeps what is being edited; the sizes table still fills."""
    seed_service(r, "first-svc", time.time())
    app = open_app(qtbot, AppSettings(redis_url=redis_url))
    try:
        panel = app.window.sketches
        qtbot.waitUntil(lambda: panel.sizes.rowCount() == 1, timeout=20_000)
        stored = panel.cms_width.value()
        panel.cms_width.setValue(stored * 2)  # the operator is editing
        seed_service(r, "second-svc", time.time())
        qtbot.waitUntil(lambda: panel.sizes.rowCount() == 2, timeout=20_000)
        assert panel.cms_width.value() == stored * 2
        panel._cancel_confirm()  # "keep the current sketches": the form shows the stored ones again
        qtbot.waitUntil(lambda: panel.cms_width.value() == stored, timeout=10_000)
    finally:
        close_app(qtbot, app)
