"""The Connection panel while the server goes away and comes back (offscreen, a real redis-server
started here): what the server said about itself — memory, detector, counts — is not shown while
reconnecting, and is shown again, read afresh, once it answers."""

from __future__ import annotations

import signal

import pytest

from anomalydesk.app.model.settings import AppSettings
from app_support import qloop, run  # noqa: F401  (fixture)
from conftest import RedisServer
from test_app_operator import close_app, open_app

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_level_fail("WARNING"),
              pytest.mark.qt_log_ignore("This plugin does not support")]  # the offscreen platform says so


def test_server_facts_clear_while_reconnecting_and_return(qtbot, qloop, tmp_path):  # noqa: F811
    server = RedisServer(tmp_path / "redis")
    app = None
    try:
        app = open_app(qtbot, AppSettings(redis_url=server.url))
        conn, panel = app.state.connection, app.window.connection
        qtbot.waitUntil(lambda: "memory" in panel.facts.text() and "open incidents" in panel.facts.text(),
                        timeout=20_000)  # fmt: skip
        assert "detector: " in panel.facts.text()
        server.stop(signal.SIGKILL)
        qtbot.waitUntil(lambda: conn.status in ("reconnecting", "failed"), timeout=30_000)
        assert panel.facts.text() == "server facts appear once connected"
        assert conn.used_memory == 0 and conn.status_json == {} and conn.detector == "" and not conn.warnings
        assert conn.server_version == "" and panel.warnings.text() == ""
        server.start()
        qtbot.waitUntil(lambda: conn.status == "connected", timeout=30_000)
        qtbot.waitUntil(lambda: "memory" in panel.facts.text() and "Redis " in panel.facts.text(), timeout=20_000)
    finally:
        if app is not None:
            close_app(qtbot, app)
        server.stop()


def test_the_password_hint_names_where_the_password_goes(qtbot, qloop, redis_url, monkeypatch):  # noqa: F811
    """No OS keyring (the tests' null backend): the hint said "stored in the OS keyring" while the note
    below said secrets.json; both name the file now, and the keyring where there is one."""
    from anomalydesk.app.model import settings as settings_mod

    app = open_app(qtbot, AppSettings(redis_url=redis_url))
    try:
        panel = app.window.connection
        qtbot.waitUntil(lambda: app.state.connection.status == "connected" and bool(app.state.sketches),
                        timeout=20_000)  # start-up's reads done: closing races nothing  # fmt: skip
        hint, note = panel.password.placeholderText(), panel.secrets.text()
        assert "no OS keyring available" in note and settings_mod.SECRETS_FILE in note
        assert hint == f"stored in {settings_mod.SECRETS_FILE} (no OS keyring available)"
        assert "stored in the OS keyring" not in hint
    finally:
        close_app(qtbot, app)
    monkeypatch.setattr(settings_mod, "_keyring_usable", lambda: True)  # a desktop with a keyring
    assert settings_mod.password_placeholder() == "stored in the OS keyring"
    assert settings_mod.secret_store_description().startswith("OS keyring")
