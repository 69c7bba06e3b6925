"""First light: the real window connects to a real redis-server and runs demo traffic from its panel."""

from __future__ import annotations

import pytest

from app_support import close_app, qloop, run  # noqa: F401  (fixture)

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_level_fail("WARNING"),
              pytest.mark.qt_log_ignore("This plugin does not support")]  # the offscreen platform says so


@pytest.fixture()
def desktop(qtbot, qloop, redis_url):  # noqa: F811
    from anomalydesk.app.application import DesktopApp
    from anomalydesk.app.model.settings import AppSettings

    app = DesktopApp(AppSettings(demo_rate=500, demo_services=3), redis_url, run_detector=False)
    app.window.show()
    run(qtbot, app.start())
    qtbot.waitUntil(lambda: app.state.connection.status == "connected", timeout=20_000)
    yield app
    close_app(qtbot, app)


def test_demo_traffic_from_the_panel(qtbot, desktop):
    panel = desktop.window.demo
    panel.rate.setValue(500)
    panel.start_button.click()
    qtbot.waitUntil(lambda: desktop.state.demo.running, timeout=20_000)
    qtbot.waitUntil(lambda: desktop.state.demo.events_per_second > 0, timeout=20_000)
    qtbot.waitUntil(lambda: "payments" not in desktop.state.services or True, timeout=1000)
    qtbot.waitUntil(lambda: len(desktop.state.services) >= 3, timeout=20_000)
    assert panel.start_button.text() == "Stop demo traffic"
    panel.start_button.click()
    qtbot.waitUntil(lambda: not desktop.state.demo.running, timeout=20_000)
