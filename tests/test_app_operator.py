"""Operator paths of the real window (offscreen) against real redis-servers started here: switching
servers from the connection panel (a password server, TLS), the self-monitoring warnings, and the tray.

Data is written the way producers and the detector write it (the ingest sink, incident records +
alerts-log + PUBLISH), so these tests do not depend on detection quality.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis
import trustme

from anomalydesk.app.model import settings as settings_mod
from anomalydesk.app.model.settings import AppSettings
from anomalydesk.config import SketchSettings
from anomalydesk.detect import incidents
from anomalydesk.store import admin
from anomalydesk.store.sink import IngestSink
from app_support import close_app, qloop, run  # noqa: F401  (fixture)
from conftest import RedisServer, free_port
from test_app_incidents import raise_alert

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_level_fail("WARNING"),
              pytest.mark.qt_log_ignore("This plugin does not support")]  # the offscreen platform says so

PASSWORD = "s3cret-pw"


@pytest.fixture(autouse=True)
def own_config_dir(tmp_path, monkeypatch):
    """Passwords (secrets.json: the tests' keyring is the null backend) go to this test's own dir."""
    monkeypatch.setenv("ANOMALYDESK_CONFIG_DIR", str(tmp_path / "config"))


def seed_service(r: redis.Redis, service: str, end: float, windows: int = 3, window_seconds: int = 5) -> None:
    """Set the server up and ingest `windows` + 1 windows of `service` ending at `end`.

    Replayed (explicit timestamps): each later window seals the one before, so `windows` fingerprints
    are written, the newest starting about one window before `end`.
    """
    if not admin.read_settings(r).configured:
        admin.setup(r, SketchSettings(window_seconds=window_seconds))
    sink = IngestSink(r, replay=True)
    for w in range(windows + 1):
        t = end - window_seconds * (windows - w)
        sink.add_arrays(service, ["GET:/a", "POST:/b"], np.array([0, 1, 0]), np.array([200, 200, 500]),
                        np.array([10.0, 20.0, 30.0]), np.full(3, t))  # fmt: skip
    sink.close()


def open_app(qtbot, settings: AppSettings, run_detector: bool = False):
    from anomalydesk.app.application import DesktopApp

    app = DesktopApp(settings, run_detector=run_detector)
    app.window.show()
    run(qtbot, app.start())
    return app



def wait_connected_to(qtbot, app, server, timeout: int = 30_000) -> None:
    conn = app.state.connection
    qtbot.waitUntil(lambda: conn.status == "connected" and f":{server.port}/" in conn.url, timeout=timeout)


def test_apply_a_new_server_and_a_password_from_the_connection_panel(qtbot, qloop, redis_server, redis_url,  # noqa: F811
                                                                      tmp_path):  # fmt: skip
    """Apply in the connection panel reconnects the running app: the new server's services and incidents
    replace the old one's; a wrong password shows "failed" naming authentication (and never the
    password), a good URL recovers, the right password (kept in the secret store) connects, and so does
    an ACL user with its own password (the server lists the app's clients under that user)."""
    first = redis_server.client()
    second = RedisServer(tmp_path / "second")
    locked = RedisServer(tmp_path / "locked")
    app = None
    try:
        locked.client().config_set("requirepass", PASSWORD)  # (the fixture's readiness PING has no password)
        now = time.time()
        seed_service(first, "alpha-svc", now)
        old = raise_alert(first, "alpha-svc", 100)
        incidents.add_silence(first, "alpha-*", now + 3600, "first server's")
        seed_service(second.client(), "beta-svc", now)
        new = raise_alert(second.client(), "beta-svc", 200)
        incidents.add_silence(second.client(), "beta-*", now + 3600, "second server's")
        locked_client = locked.client(password=PASSWORD)
        seed_service(locked_client, "gamma-svc", now)

        app = open_app(qtbot, AppSettings(redis_url=redis_url))
        state, window, panel = app.state, app.window, app.window.connection
        wait_connected_to(qtbot, app, redis_server)
        qtbot.waitUntil(lambda: old["incident_id"] in window.incidents.model.ids, timeout=10_000)
        qtbot.waitUntil(lambda: state.services == ["alpha-svc"], timeout=10_000)
        assert panel.url.text() == redis_url

        panel.url.setText(second.url)
        panel.apply_button.click()
        wait_connected_to(qtbot, app, second)
        qtbot.waitUntil(lambda: new["incident_id"] in window.incidents.model.ids, timeout=10_000)
        qtbot.waitUntil(lambda: state.services == ["beta-svc"], timeout=10_000)
        assert app.settings.redis_url == second.url
        assert old["incident_id"] not in window.incidents.model.ids  # the old server's incident is gone
        qtbot.waitUntil(lambda: set(state.training.services) == {"beta-svc"}, timeout=10_000)  # its model states
        assert window.training.message.text() == ""  # no error from reading models while switching
        live_services = [window.live.service_box.itemText(i) for i in range(window.live.service_box.count())]
        assert live_services == ["beta-svc"]
        assert f":{second.port}/" in panel.status.text() and "connected" in panel.status.text()
        qtbot.waitUntil(lambda: "Redis 7" in panel.facts.text(), timeout=10_000)
        silences = window.incidents.silence_list  # re-read from the new server after the reconnect
        qtbot.waitUntil(lambda: silences.count() == 1 and "beta-*" in silences.item(0).text(), timeout=10_000)

        panel.url.setText(locked.url)
        panel.password.setText("not-the-password")
        panel.apply_button.click()
        qtbot.waitUntil(lambda: state.connection.status == "failed", timeout=30_000)
        assert "authentication" in state.connection.reason
        assert "authentication" in panel.reason.text()
        assert "not-the-password" not in panel.status.text() + panel.reason.text() + window.connection_status.text()
        assert panel.password.text() == ""  # saved to the secret store, not left in the form

        panel.url.setText(second.url)  # back to a good server: recovers
        panel.apply_button.click()
        wait_connected_to(qtbot, app, second)
        qtbot.waitUntil(lambda: new["incident_id"] in window.incidents.model.ids, timeout=10_000)

        panel.url.setText(locked.url)
        panel.password.setText(PASSWORD)
        panel.apply_button.click()
        wait_connected_to(qtbot, app, locked)
        qtbot.waitUntil(lambda: state.services == ["gamma-svc"], timeout=10_000)
        assert new["incident_id"] not in window.incidents.model.ids
        assert settings_mod.get_password(panel.account()) == PASSWORD

        locked_client.execute_command("ACL", "SETUSER", "alice", "on", ">al1ce-pw", "~*", "&*", "+@all")
        panel.user.setText("alice")  # an ACL user on the same server
        panel.password.setText("al1ce-pw")
        panel.apply_button.click()
        qtbot.waitUntil(lambda: state.connection.status == "connected"
                        and state.connection.url.startswith("redis://alice:***@"), timeout=30_000)  # fmt: skip
        qtbot.waitUntil(lambda: state.services == ["gamma-svc"], timeout=10_000)
        assert any(c.get("user") == "alice" for c in locked_client.client_list())
        settings_mod.save(app.settings)
        assert PASSWORD not in settings_mod.settings_path().read_text()  # the password is not in app.json
        locked_client.close()
    finally:
        if app is not None:
            close_app(qtbot, app)
        first.close()
        second.stop()
        locked.stop()


def test_tls_checkbox_connects_over_tls_and_round_trips_in_settings(qtbot, qloop, tmp_path):  # noqa: F811
    """With TLS ticked, the panel's URL is used as rediss:// against a TLS-only port (connected); without
    it the same port cannot be used; the flag is saved to the settings file and shown again on load."""
    from anomalydesk.app.model.state import AppState
    from anomalydesk.app.widgets.connection_panel import ConnectionPanel

    certs = tmp_path / "tls"
    certs.mkdir()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(certs / "ca.crt"))
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(certs / "server.crt"))
    cert.private_key_pem.write_to_path(str(certs / "server.key"))
    tls_port = free_port()
    server = RedisServer(certs, "--tls-port", str(tls_port), "--tls-cert-file", str(certs / "server.crt"),
                         "--tls-key-file", str(certs / "server.key"), "--tls-ca-cert-file", str(certs / "ca.crt"),
                         "--tls-auth-clients", "no")  # fmt: skip
    tls_url = f"redis://127.0.0.1:{tls_port}/0?ssl_ca_certs={certs / 'ca.crt'}"
    app = None
    try:
        app = open_app(qtbot, AppSettings(redis_url=server.url))
        wait_connected_to(qtbot, app, server)
        panel, conn = app.window.connection, app.state.connection
        assert not panel.tls.isChecked()

        panel.url.setText(tls_url)  # TLS options without TLS: refused in the form, the app stays where it is
        panel.apply_button.click()
        assert "need a rediss:// URL" in panel.form_error.text()
        panel.url.setText(f"http://127.0.0.1:{tls_port}/0")
        panel.apply_button.click()
        assert "unsupported scheme" in panel.form_error.text()
        assert app.settings.redis_url == server.url and conn.status == "connected" and f":{server.port}/" in conn.url

        panel.url.setText(f"redis://127.0.0.1:{tls_port}/0")  # the TLS port, TLS not ticked: no plain talk there
        panel.apply_button.click()
        qtbot.waitUntil(lambda: conn.status in ("reconnecting", "failed") and f":{tls_port}/" in conn.url,
                        timeout=30_000)  # fmt: skip
        assert conn.reason and panel.form_error.text() == ""

        panel.url.setText(tls_url)

        panel.tls.setChecked(True)
        panel.apply_button.click()
        qtbot.waitUntil(lambda: conn.status == "connected" and conn.url.startswith(f"rediss://127.0.0.1:{tls_port}/"),
                        timeout=30_000)  # fmt: skip
        assert app.settings.tls is True
        settings_mod.save(app.settings)
        loaded = settings_mod.load()
        assert loaded.tls is True and loaded.redis_url == tls_url
        again = ConnectionPanel(AppState(), loaded, lambda: None)
        qtbot.addWidget(again)
        assert again.tls.isChecked() and again.url.text() == tls_url
    finally:
        if app is not None:
            close_app(qtbot, app)
        server.stop()


def test_self_monitoring_warns_about_silent_services_and_no_detector(qtbot, qloop, redis_url, r):  # noqa: F811
    """The connection panel warns when services exist but no fingerprint arrived in the last N windows and
    when no detector holds the lease; each warning clears when fingerprints resume / a detector runs.

    "Fingerprints stopped" is produced with data, not by waiting: windows replayed ten minutes in the past
    (60-s windows, so N windows = 3 min), then current ones."""
    from anomalydesk.app.model.settings import SILENT_FINGERPRINT_WARN_WINDOWS

    silent = f"no fingerprints arrived in the last {SILENT_FINGERPRINT_WARN_WINDOWS} windows"
    no_detector = "no detector is alive"
    seed_service(r, "quiet-svc", time.time() - 600, window_seconds=60)
    app = open_app(qtbot, AppSettings(redis_url=redis_url))
    try:
        conn, panel = app.state.connection, app.window.connection
        qtbot.waitUntil(lambda: any(silent in w for w in conn.warnings), timeout=20_000)
        assert any(no_detector in w for w in conn.warnings)
        assert silent in panel.warnings.text() and no_detector in panel.warnings.text()
        assert silent in app.window.connection_status.text()

        seed_service(r, "quiet-svc", time.time(), window_seconds=60)  # fingerprints resume
        qtbot.waitUntil(lambda: not any(silent in w for w in conn.warnings), timeout=20_000)
        assert silent not in panel.warnings.text() and no_detector in panel.warnings.text()

        assert app.actions.start_detector()  # the in-process detector takes the free lease
        qtbot.waitUntil(lambda: not conn.warnings, timeout=30_000)
        assert conn.detector.startswith("app-") and panel.warnings.text() == ""
        app.actions.stop_detector()  # releases the lease: the warning is back
        qtbot.waitUntil(lambda: any(no_detector in w for w in conn.warnings), timeout=20_000)
    finally:
        close_app(qtbot, app)


def test_tray_menu_pause_click_to_open_and_quit(qtbot, qloop, redis_url, r):  # noqa: F811
    """The tray's own QActions and QSystemTrayIcon signals, on the real objects of a running app.

    Proven: show/hide toggles the window (menu action and a left click on the icon); "pause for 1 h"
    keeps the incident row but delivers no notification, and un-pausing delivers the next one; a pause
    saved in the settings shows as ticked on the next start; clicking the notification (messageClicked)
    selects its incident and shows its service in the live plot; Quit really closes the window (even
    with close-to-tray on) and the app shuts down with no thread or task left. Not proven here: that the
    desktop shows the icon, menu and message (offscreen has no tray: delivery goes to the banner) —
    tests/test_tray_e2e.py proves delivery to a real notification daemon under Xvfb.
    """
    from PySide6 import QtWidgets

    from anomalydesk.app.model.notifier import Notifier
    from anomalydesk.app.model.state import IncidentsState
    from anomalydesk.app.widgets.tray import Tray

    now = time.time()
    seed_service(r, "orders", now)
    seed_service(r, "payments", now)
    app = open_app(qtbot, AppSettings(redis_url=redis_url))
    try:
        tray, window = app.tray, app.window
        qtbot.waitUntil(app.session.caught_up.is_set, timeout=20_000)
        assert not tray.available and tray.icon is not None and not tray.icon.isVisible()

        assert window.isVisible()
        tray.show_action.trigger()
        assert not window.isVisible()
        tray.icon.activated.emit(QtWidgets.QSystemTrayIcon.ActivationReason.Trigger)  # left click
        assert window.isVisible()
        tray.icon.activated.emit(QtWidgets.QSystemTrayIcon.ActivationReason.Context)  # right click: the menu
        assert window.isVisible()

        tray.pause_action.trigger()
        assert tray.pause_action.isChecked() and app.notifier.paused
        muted = raise_alert(r, "payments", 5000)
        qtbot.waitUntil(lambda: muted["incident_id"] in window.incidents.model.ids, timeout=10_000)
        assert tray.delivered == [] and not window.banner.isVisible()

        # the window's File menu holds the same item (the only way to pause where there is no tray)
        assert tray.pause_action in window.file_menu.actions()
        next(a for a in window.file_menu.actions() if a is tray.pause_action).trigger()
        assert not tray.pause_action.isChecked() and not app.notifier.paused
        heard = raise_alert(r, "orders", 5001)
        qtbot.waitUntil(lambda: [n.incident_id for n in tray.delivered] == [heard["incident_id"]], timeout=10_000)
        assert window.banner.isVisible() and "orders" in window.banner.text

        window.live.select_service("payments")
        window.incidents.select_incident(muted["incident_id"])
        tray.icon.messageClicked.emit()  # the operator clicks the notification
        assert window.incidents.selected().incident_id == heard["incident_id"]
        assert window.live.service == "orders" and window.isVisible()

        tray.pause_action.trigger()  # paused when the app quits: remembered in the settings
        window.tray_available = True  # as on a desktop with a tray: closing the window only hides it
        window.close()
        assert not window.isVisible()
        window.show()
        with qtbot.waitSignal(window.closing, timeout=5_000):
            tray.quit_action.trigger()
        assert not window.isVisible()
    finally:
        close_app(qtbot, app)  # what `main` does once the window closes
    assert app.settings.notifications_paused_until > time.time()
    notifier = Notifier(lambda note: None)
    notifier.paused_until = app.settings.notifications_paused_until
    again = Tray(IncidentsState(), notifier, lambda note: None)
    assert again.pause_action.isChecked()  # the saved pause is shown as in force
    notifier.resume()
    again.menu.aboutToShow.emit()
    assert not again.pause_action.isChecked()  # the menu shows the pause as over
    again.close()


def test_a_popup_states_its_alerts_severity_and_score_and_names_the_incidents_peak_as_such(
        qtbot, qloop, redis_url, r):  # noqa: F811
    """A new user's popup said "CRITICAL … escalated (score 97)" for an alert of severity warning, score
    74.42: it showed the incident's peak as the alert's. An "escalated" alert that names a new reason
    (`incident_flow`: "now also shows") can score below the incident's peak; the popup states the alert's
    own severity, score and reason, and the peak beside them as the incident's."""
    import json
    from dataclasses import replace

    from anomalydesk.detect.incident_model import Alert, Incident
    from anomalydesk.store.keys import Keys
    from test_app_incidents import store_incident

    keys = Keys()
    now = time.time()
    seed_service(r, "payments", now)
    peak_reason = {"feature": "rate_5xx", "actual": 0.4, "expected": 0.004, "text": "5xx ratio 40% vs 0.4% normal"}
    new_reason = {"feature": "latency_p95_ms", "actual": 900.0, "expected": 150.0, "text": "p95 latency 900 ms"}
    window = int(now // 5)
    incident = replace(Incident.open("payments", "anomaly", window - 3, (window - 3) * 5.0), last_window=window,
                       windows=4, score=97.0, severity="critical", reasons=(peak_reason,))  # fmt: skip
    message = "payments: incident now also shows p95 latency 900 ms (score 74)"
    alert = Alert.about(incident, kind="escalated", window=window, window_start=window * 5.0, score=74.42,
                        severity="warning", reasons=[new_reason], model_version=1, message=message).to_json()
    app = open_app(qtbot, AppSettings(redis_url=redis_url))
    try:
        qtbot.waitUntil(app.session.caught_up.is_set, timeout=20_000)
        store_incident(r, incident, alert, keys)
        r.publish(keys.alerts_channel, json.dumps(alert))
        qtbot.waitUntil(lambda: len(app.tray.delivered) == 1, timeout=10_000)
        (note,) = app.tray.delivered
        assert note.title == "WARNING payments: escalated (score 74; incident peak 97, critical)"
        assert note.severity == "warning" and note.body == "p95 latency 900 ms"
        assert "WARNING" in app.window.banner.text and "score 74" in app.window.banner.text
    finally:
        close_app(qtbot, app)
