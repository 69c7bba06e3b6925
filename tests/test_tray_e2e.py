"""End to end on a real desktop stack: Xvfb + D-Bus session + StatusNotifier watcher + dunst.

The app runs on xcb with a real system tray; a fault injected from the demo panel opens an incident
and the app's notification must really reach the notification daemon: dunst's rule script logs it
and dbus-monitor sees the `Notify` call. Screenshots of the window and the whole screen are written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gui
TOOLS = ("Xvfb", "dbus-run-session", "status-notifier-watcher", "dunst", "dbus-monitor", "import", "xdpyinfo")


def test_notification_reaches_dunst_and_screenshots_are_written(redis_url, tmp_path):
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"desktop test tools missing: {missing} (apt-get install xvfb dbus-x11 dunst libnotify-bin "
                    "imagemagick haskell-status-notifier-item-utils x11-utils)")  # fmt: skip
    from conftest import free_port

    display = f":{200 + free_port() % 300}"
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb"}
    env.pop("DISPLAY", None)
    done = subprocess.run(
        ["dbus-run-session", "--", sys.executable, str(Path(__file__).with_name("tray_e2e_session.py")),
         "--redis", redis_url, "--out", str(tmp_path), "--display", display],
        capture_output=True, text=True, timeout=280, env=env,
    )  # fmt: skip
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, (summary, done.stderr[-3000:])
    assert summary["tray_available"] is True  # the watcher makes QSystemTrayIcon a StatusNotifierItem
    title = summary["notification"]["title"]
    assert "orders" in title
    log = (tmp_path / "dunst.log").read_text()
    assert any(line.split("|")[1] == title for line in log.splitlines())  # appname|summary|body|urgency
    assert summary["dbus_notify_calls"] >= 1
    assert summary["incident_selected"] is True  # the notification's incident, selected in the open window
    from tray_e2e_session import shot_names

    for name in shot_names():
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000, name
