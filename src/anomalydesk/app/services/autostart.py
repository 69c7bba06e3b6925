"""Start at login (Qt-free): an XDG autostart .desktop file on Linux, a LaunchAgent on macOS,
a Startup-folder shortcut script on Windows. Only the Linux form is exercised by our tests."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

DESKTOP_NAME = "anomalydesk.desktop"


def autostart_path() -> Path:
    """Where the login item lives on this platform."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "LaunchAgents" / "io.anomalydesk.app.plist"
    if sys.platform.startswith("win"):
        appdata = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
        return appdata / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup" / "anomalydesk.cmd"
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "autostart" / DESKTOP_NAME


def command() -> list[str]:
    """The command a login starts: this interpreter running the app (a packaged app: its own executable)."""
    if getattr(sys, "frozen", False):  # PyInstaller build: sys.executable is the app, it takes no -m
        return [sys.executable, "app"]
    return [sys.executable, "-m", "anomalydesk.cli", "app"]


def _content() -> str:
    cmd = command()
    if sys.platform == "darwin":
        args = "".join(f"<string>{a}</string>" for a in cmd)
        return ('<?xml version="1.0" encoding="UTF-8"?>\n<plist version="1.0"><dict>'
                "<key>Label</key><string>io.anomalydesk.app</string>"
                f"<key>ProgramArguments</key><array>{args}</array>"
                "<key>RunAtLoad</key><true/></dict></plist>\n")  # fmt: skip
    if sys.platform.startswith("win"):
        return "@echo off\r\nstart \"\" " + " ".join(f'"{a}"' for a in cmd) + "\r\n"
    return ("[Desktop Entry]\nType=Application\nName=AnomalyDesk\n"
            "Comment=Anomaly monitoring for microservices\n"
            f"Exec={shlex.join(cmd)}\nX-GNOME-Autostart-enabled=true\nTerminal=false\n")  # fmt: skip


def is_enabled() -> bool:
    """True when the login item exists."""
    return autostart_path().exists()


def set_enabled(enabled: bool) -> Path:
    """Create or remove the login item; returns its path."""
    path = autostart_path()
    if enabled:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_content(), encoding="utf-8")
    elif path.exists():
        path.unlink()
    return path
