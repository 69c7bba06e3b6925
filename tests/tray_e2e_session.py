"""Run inside `dbus-run-session`: Xvfb + StatusNotifier watcher + dunst, then the real app on xcb.

Used by tests/test_tray_e2e.py and scripts/screenshots.sh. Starts the desktop pieces, opens the app
against --redis, starts demo traffic, backfills demo history while it runs, trains with the training
panel's Train button and injects a fault from the demo panel, waits until the app's notification for the
incident reaches dunst (its rule script's log) and dbus-monitor, and writes screenshots — the main
window, the incident's details, the service overview (Training panel) and the sketches inspector, at
each of `SIZES` — and the whole screen with the notification. Prints a JSON summary on stdout; exit 0
when the notification reached dunst.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = ((1280, 800), (1920, 1080))  # the window sizes of the screenshots (the screen is the larger)
SHOTS = ("main-window", "incident-details", "service-overview", "sketches-inspector")


def shot_names() -> list[str]:
    """Every screenshot file a run writes."""
    return [f"{name}-{w}x{h}.png" for w, h in SIZES for name in SHOTS] + ["main-window-dark-1280x800.png",
                                                                         "desktop.png"]  # fmt: skip


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _bus_has(name: str) -> bool:
    out = subprocess.run(["dbus-send", "--session", "--print-reply", "--dest=org.freedesktop.DBus",
                          "/org/freedesktop/DBus", "org.freedesktop.DBus.ListNames"],
                         capture_output=True, text=True, timeout=5).stdout  # fmt: skip
    return f'"{name}"' in out


def start_desktop(out: Path, display: str) -> list[subprocess.Popen]:
    """Xvfb, the StatusNotifier watcher, dunst (logging every notification) and dbus-monitor."""
    procs = []
    width, height = max(SIZES)
    procs.append(subprocess.Popen(["Xvfb", display, "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
    os.environ["DISPLAY"] = display
    _wait(lambda: subprocess.run(["xdpyinfo"], capture_output=True).returncode == 0, 20, "Xvfb")
    procs.append(subprocess.Popen(["status-notifier-watcher"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    _wait(lambda: _bus_has("org.kde.StatusNotifierWatcher"), 20, "status-notifier-watcher")
    log_script = out / "dunst-log.sh"
    log_script.write_text(f'#!/bin/sh\nprintf "%s|%s|%s|%s\\n" "$1" "$2" "$3" "$5" >> {out / "dunst.log"}\n')
    log_script.chmod(0o755)
    rc = out / "dunstrc"
    rc.write_text(f'[global]\n    font = Monospace 9\n    geometry = "420x5-10+30"\n\n'
                  f'[log_everything]\n    summary = "*"\n    script = {log_script}\n')  # fmt: skip
    procs.append(subprocess.Popen(["dunst", "-config", str(rc)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    _wait(lambda: _bus_has("org.freedesktop.Notifications"), 20, "dunst")
    monitor_log = open(out / "dbus-monitor.log", "w")  # noqa: SIM115 (closed when the process ends)
    procs.append(subprocess.Popen(["dbus-monitor", "--session", "interface='org.freedesktop.Notifications'"],
                                  stdout=monitor_log, stderr=subprocess.DEVNULL))  # fmt: skip
    return procs


async def shot(widget, path: Path) -> None:
    """Grab a widget outside any task step: QWidget.grab() delivers posted events, which would run
    other asyncio tasks re-entrantly ("Cannot enter into task") if called inside a coroutine."""
    from qasync import asyncWrap

    saved = await asyncWrap(lambda: widget.grab().save(str(path)))
    if not saved:
        raise OSError(f"could not write {path}")


def _scroll_to(widget) -> None:
    """Scroll the dock's scroll area (`main_window._scrolled`) so that `widget` is in view."""
    from PySide6 import QtWidgets

    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QtWidgets.QScrollArea):
        parent = parent.parentWidget()
    if parent is not None:
        parent.ensureWidgetVisible(widget, 0, 0)


async def shots_at(desktop, out: Path, size: tuple[int, int], service: str) -> None:
    """The README's screenshots with the window at `size`: the main window and the incident's details as
    the operator finds them, then the service overview (Training panel) and the sketches inspector with
    the Incidents dock out of the way (as an operator drags it: the side panels get the window's height)."""
    window = desktop.window
    window.move(0, 0)
    window.resize(*size)
    suffix = f"{size[0]}x{size[1]}"
    window.docks["demo"].raise_()
    await asyncio.sleep(2.5)  # the layout settles and the live plot redraws a few times
    await shot(window, out / f"main-window-{suffix}.png")
    await shot(window.docks["incidents"], out / f"incident-details-{suffix}.png")
    window.docks["incidents"].hide()
    try:
        window.docks["training"].raise_()
        table = window.training.services_table
        rows = [r for r in range(table.rowCount()) if table.item(r, 0) and table.item(r, 0).text() == service]
        if rows:
            table.selectRow(rows[0])  # its model versions below
        await asyncio.sleep(1.0)
        _scroll_to(window.training.versions_table)
        await asyncio.sleep(0.3)
        await shot(window, out / f"service-overview-{suffix}.png")
        window.docks["sketches"].raise_()
        await desktop.actions.sketch_settings()
        window.sketches.q_service.setCurrentText(service)
        window.sketches.q_kind.setCurrentText("topk")
        window.sketches.run_query()
        await asyncio.sleep(1.0)
        _scroll_to(window.sketches.q_table)
        await asyncio.sleep(0.3)
        await shot(window, out / f"sketches-inspector-{suffix}.png")
    finally:
        window.docks["incidents"].show()


async def dark_shot(desktop, out: Path) -> None:
    """The main window as a desktop in its dark scheme shows it (`app.theme`), at 1280×800."""
    from PySide6 import QtCore, QtWidgets

    from anomalydesk.app.widgets import theme

    app = QtWidgets.QApplication.instance()
    window = desktop.window
    window.resize(1280, 800)
    window.docks["demo"].raise_()
    theme.apply_scheme(app, QtCore.Qt.ColorScheme.Dark)
    try:
        await asyncio.sleep(2.5)
        await shot(window, out / "main-window-dark-1280x800.png")
    finally:
        theme.apply_scheme(app, QtCore.Qt.ColorScheme.Light)


async def drive_app(url: str, out: Path, fault_service: str) -> dict:
    """The operator's path through the real window, on xcb with a real tray."""
    from anomalydesk.app.application import DesktopApp
    from anomalydesk.app.model.settings import AppSettings

    summary: dict = {}
    settings = AppSettings(demo_rate=200, demo_services=3, train_trees=60, close_to_tray=True)
    desktop = DesktopApp(settings, url, run_detector=True)
    window = desktop.window
    summary["tray_available"] = desktop.tray.available
    try:
        window.resize(*SIZES[0])
        window.show()
        await desktop.start()
        await desktop.session.connected.wait()
        await desktop.session.caught_up.wait()
        window.docks["demo"].raise_()
        window.demo.start_button.click()  # a new user's order: live demo traffic first, then history
        while not desktop.state.demo.running or len(desktop.state.services) < 3:
            await asyncio.sleep(0.05)
        summary["backfill"] = (await desktop.actions.backfill(2 * 3600, 3))["ready"]
        window.docks["training"].raise_()
        window.training.trees.setValue(60)
        window.training.train_button.click()
        while not desktop.state.training.running:
            await asyncio.sleep(0.02)
        while desktop.state.training.running:
            await asyncio.sleep(0.05)
        summary["training"] = desktop.state.training.result
        # the whole screen for desktop.png, arranged before the alert: with no window manager, raising the
        # window (open_incident → bring_to_front) after dunst mapped its popup put the window over it
        window.move(0, 0)
        window.resize(*max(SIZES))
        window.bring_to_front()
        window.live.select_service(fault_service)
        window.live.set_features(["requests", "rate_5xx", "latency_p95_ms"])
        window.docks["demo"].raise_()
        window.demo.fault_service.setCurrentText(fault_service)
        window.demo.fault_seconds.setValue(120)
        window.demo.fault_buttons["errors"].click()
        deadline = time.monotonic() + 120
        note = None
        while note is None and time.monotonic() < deadline:
            note = next((n for n in desktop.tray.delivered if n.title.split(":")[0].endswith(fault_service)), None)
            await asyncio.sleep(0.1)
        if note is None:
            raise TimeoutError(f"no notification for {fault_service} within 120 s")
        summary["notification"] = {"title": note.title, "body": note.body, "incident_id": note.incident_id}
        log = out / "dunst.log"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (log.exists() and note.title in log.read_text()):
            await asyncio.sleep(0.1)
        summary["dunst_log"] = log.read_text() if log.exists() else ""
        window.show_panel("incidents")  # what the notification's click opens, without raising the window
        summary["incident_selected"] = window.incidents.select_incident(note.incident_id)
        window.docks["demo"].raise_()
        await asyncio.sleep(2.0)
        subprocess.run(["import", "-window", "root", str(out / "desktop.png")], timeout=30, check=False)
        for size in SIZES:
            await shots_at(desktop, out, size, fault_service)
        await dark_shot(desktop, out)
    finally:
        await desktop.actions.stop_demo()
        await desktop.shutdown()
        desktop.dispose()
    return summary


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--display", default=":97")
    parser.add_argument("--service", default="orders")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not all(shutil.which(t) for t in ("Xvfb", "status-notifier-watcher", "dunst", "dbus-monitor", "import")):
        print(json.dumps({"error": "missing desktop tools"}))
        return 3
    procs = start_desktop(args.out, args.display)
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    summary: dict = {}
    try:
        import qasync
        from PySide6 import QtWidgets

        app = QtWidgets.QApplication(sys.argv[:1])
        app.setQuitOnLastWindowClosed(False)
        loop = qasync.QEventLoop(app)
        asyncio.set_event_loop(loop)
        with loop:
            summary = loop.run_until_complete(drive_app(args.redis, args.out, args.service))
    except Exception as err:
        summary["error"] = f"{type(err).__name__}: {err}"
    finally:
        time.sleep(0.5)
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    summary["dbus_notify_calls"] = (args.out / "dbus-monitor.log").read_text().count("member=Notify")
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()
    ok = "error" not in summary and summary.get("notification", {}).get("title", "\0") in summary.get("dunst_log", "")
    os._exit(0 if ok else 1)  # PySide6 can abort in interpreter finalisation; everything is closed already


if __name__ == "__main__":
    sys.exit(main())
