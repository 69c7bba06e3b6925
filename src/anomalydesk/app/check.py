"""`anomalydesk app --check SECONDS`: run the real window against the configured server and exercise it.

Everything the check writes lives under a unique temporary key prefix (`adcheck:<random>:`), which
is deleted at the end, so the operator's data is never touched and nothing is left behind. The
report is the DESIGN.md shape: {"ok": bool, "checks": {name: {"ok", "detail"}}, "duration_s": n}.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from anomalydesk import config

log = logging.getLogger(__name__)
CHECK_SERVICES = 2
CHECK_BACKFILL_SECONDS = 1_800  # 360 windows of 5 s: enough history to train
CHECK_TREES = 30


class CheckRun:
    """Runs named checks in order within a deadline and collects the report."""

    def __init__(self, seconds: float):
        self.started = time.monotonic()
        self.deadline = self.started + seconds
        self.checks: dict[str, dict[str, Any]] = {}

    def remaining(self) -> float:
        return max(0.5, self.deadline - time.monotonic())

    async def run(self, name: str, step: Callable[[], Awaitable[str]]) -> bool:
        """Run one check with what is left of the time; record ok/detail."""
        try:
            detail = await asyncio.wait_for(step(), timeout=self.remaining())
            self.checks[name] = {"ok": True, "detail": detail}
        except TimeoutError:
            self.checks[name] = {"ok": False, "detail": "timed out (raise SECONDS?)"}
        except Exception as err:  # the report says what failed; the check goes on
            self.checks[name] = {"ok": False, "detail": f"{type(err).__name__}: {err}"}
        return self.checks[name]["ok"]

    def report(self) -> dict[str, Any]:
        """The JSON report."""
        return {"ok": bool(self.checks) and all(c["ok"] for c in self.checks.values()),
                "checks": self.checks, "duration_s": round(time.monotonic() - self.started, 2)}  # fmt: skip


async def _until(condition: Callable[[], bool], what: str, interval: float = 0.05) -> None:
    while not condition():
        await asyncio.sleep(interval)


async def exercise(desktop: Any, run: CheckRun) -> None:
    """The checks themselves, on a started DesktopApp working under a private prefix."""
    from anomalydesk.app.application import DesktopApp

    assert isinstance(desktop, DesktopApp)
    state, actions, window = desktop.state, desktop.actions, desktop.window

    async def window_check() -> str:
        window.show()
        await _until(window.isVisible, "window")
        return f"main window with {len(window.docks)} panels ({', '.join(window.docks)})"

    async def connection() -> str:
        await desktop.session.connected.wait()
        c = state.connection
        return f"connected to {c.url}: Redis {c.server_version}, sketch backend {c.sketch_backend}"

    async def subscription() -> str:
        await desktop.session.caught_up.wait()
        return f"subscribed to {desktop.session.keys.alerts_channel}, alerts log read"

    async def demo() -> str:
        result = await actions.backfill(CHECK_BACKFILL_SECONDS, CHECK_SERVICES)
        await actions.start_demo(200, CHECK_SERVICES)
        await _until(lambda: state.demo.events_per_second > 0, "demo")
        return f"backfill: {result.get('summary', '')}; live demo traffic {state.demo.events_per_second:.0f} events/s"

    async def live() -> str:
        await _until(lambda: any(len(b) for b in state.live.buffers.values()), "fingerprints")
        service = next(s for s, b in state.live.buffers.items() if len(b))
        window.live.select_service(service)
        window.live.redraw(force=True)
        return f"{sum(len(b) for b in state.live.buffers.values())} fingerprints buffered; plotted {service}"

    async def sketches() -> str:
        overview = await actions.sketch_settings()
        service = next(iter(state.live.buffers))
        top = await actions.query("topk", service, [])
        return (f"configured={overview['configured']}, backend {overview['backend']}; "
                f"{service} top-K has {len(top)} endpoints")

    async def training() -> str:
        result = await actions.train(None, 17_280, CHECK_TREES, 0.01)
        if not result["trained"]:
            raise RuntimeError(result["summary"])
        if window.training.progress.value() != 100:
            raise RuntimeError(f"progress bar at {window.training.progress.value()}%, not 100%")
        return result["summary"]

    async def incidents_and_notification() -> str:
        from dataclasses import replace

        from anomalydesk.detect.incident_model import Alert, Incident, Severity

        session = desktop.session
        keys = session.keys
        record = replace(Incident.open("check", "anomaly", 1, time.time()), severity=Severity.WARNING, score=80.0)
        alert = Alert.about(record, kind="new", window=1, window_start=time.time(), score=80.0,
                            severity=Severity.WARNING, model_version=None, message="anomalydesk app --check test alert",
                            reasons=[{"feature": "rate_5xx", "actual": 0.2, "expected": 0.0,
                                      "text": "test notification from --check"}])  # fmt: skip
        client = session.core.aio  # as a detector would write it: record, log entry, PUBLISH
        await client.hset(keys.incidents, record.id, json.dumps(record.to_json()))
        await client.xadd(keys.alerts_log, {"alert": json.dumps(alert.to_json())})
        await client.publish(keys.alerts_channel, json.dumps(alert.to_json()))
        await _until(lambda: record.id in state.incidents.incidents, "alert")
        await _until(lambda: any(n.incident_id == record.id for n in desktop.tray.delivered), "notification")
        where = "system tray" if desktop.tray.available else "in-window banner (no system tray)"
        await actions.incident_action("ack", record.id)
        from PySide6 import QtGui

        sender = QtGui.QGuiApplication.applicationDisplayName()  # the name a desktop notification comes from
        return f"test alert received over pub/sub, notified as {sender} via {where}, acknowledged"

    for name, step in (("window", window_check), ("connection", connection), ("subscription", subscription),
                       ("demo", demo), ("live", live), ("sketches", sketches), ("training", training),
                       ("incidents_and_notification", incidents_and_notification)):  # fmt: skip
        ok = await run.run(name, step)
        if not ok and name == "connection":
            break


def cleanup(url: str, prefix: str) -> int:
    """Delete every key under the check's prefix; returns how many."""
    from anomalydesk.store import connection

    r = connection.connect(url)
    try:
        deleted = 0
        batch: list[bytes] = []
        for key in r.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += r.unlink(*batch)
                batch.clear()
        if batch:
            deleted += r.unlink(*batch)
        return deleted
    finally:
        r.close()


_SHUTDOWN_TIMEOUT_SECONDS = 15.0


def main(seconds: float, url: str | None) -> int:
    """Run the check; print the JSON report on stdout; 0 when every check passed, else 1."""
    import qasync
    from PySide6 import QtWidgets

    prefix = f"adcheck:{uuid.uuid4().hex[:12]}:"
    os.environ[config.ENV_PREFIX] = prefix  # anything reading the prefix from the environment agrees
    run = CheckRun(seconds)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    app.setApplicationName(config.APP_TITLE)  # its test notification came from "anomalydesk"
    app.setQuitOnLastWindowClosed(False)  # closing the window must not stop the loop before cleanup
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)

    async def go() -> None:
        from anomalydesk.app.application import DesktopApp
        from anomalydesk.app.model.settings import AppSettings, load
        from anomalydesk.store.keys import Keys

        settings = AppSettings(redis_url=load().redis_url, close_to_tray=False, offer_backfill=False)
        desktop = DesktopApp(settings, url, keys=Keys(prefix), run_detector=False)
        # every stage is bounded: an install check must answer, never hang (a stuck start or
        # shutdown is reported as a failed check)
        try:
            await asyncio.wait_for(desktop.start(), timeout=max(seconds, 10.0))
            await exercise(desktop, run)
        except TimeoutError:
            run.checks["start"] = {"ok": False, "detail": f"the app did not start within {max(seconds, 10.0):g} s"}
        finally:
            try:
                await asyncio.wait_for(desktop.shutdown(), timeout=_SHUTDOWN_TIMEOUT_SECONDS)
            except TimeoutError:
                run.checks["shutdown"] = {"ok": False,
                                          "detail": f"the app did not shut down within {_SHUTDOWN_TIMEOUT_SECONDS:g} s"}
            resolved = desktop.session.url
            desktop.dispose()
        if resolved:
            try:
                deleted = await asyncio.get_running_loop().run_in_executor(None, cleanup, resolved, prefix)
                run.checks["cleanup"] = {"ok": True, "detail": f"deleted {deleted} keys under {prefix}"}
            except Exception as err:
                run.checks["cleanup"] = {"ok": False, "detail": f"could not delete {prefix}*: {err}"}

    with loop:
        loop.run_until_complete(go())
    report = run.report()
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1
