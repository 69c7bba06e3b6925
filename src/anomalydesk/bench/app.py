"""Desktop-app benchmark: live-plot redraw, event-loop stalls while training, PUBLISH → notification.

- `redraw_ms`: median time of one live-panel redraw with 8 feature curves × 3,600 points each (plus
  the score curve): `setData` on every curve and a synchronous repaint of the plot widget, offscreen
  when there is no display. `redraw_p95_ms` beside it.
- `max_stall_ms`: the longest time the GUI event loop did not service a 5 ms timer while the app
  trained every service (Train → `detect.training_run.train_service` in the training executor) on
  backfilled demo history (quick: 2 services × 2 h; full: 5 services × 24 h). The in-process
  detector is off so the figure is the training's own cost. It depends on machine load: the docs
  give the load average of each reported run.
- `notify_p99_ms`: time from just before a PUBLISH (another thread, its own client) to the
  notification call (the tray's `deliver`, i.e. `QSystemTrayIcon.showMessage` or the banner) for a
  new incident's alert; quick 100, full 500 alerts, 20 ms apart. `notify_p50_ms` beside it.
- `rss_mb_after_1h_demo` (full run only): the app process's resident memory after the live panel
  read one hour of demo traffic at 1,000 events/s (5 services, simulated time), and
  `rss_mb_after_6h_demo` after six: the ring buffers are bounded (3,600 windows per service), so the
  second figure stays close to the first.

Everything is written under a private key prefix that is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import threading
import time
import uuid
from typing import Any

import numpy as np

REDRAW_CURVES, REDRAW_POINTS = 8, 3_600


def _qt_app() -> Any:
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6 import QtWidgets

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    app.setQuitOnLastWindowClosed(False)
    return app


def measure_redraw(repeats: int) -> dict[str, float]:
    """Median and p95 of redraw + repaint with 8 curves × 3,600 points."""
    from anomalydesk.app.live_panel import LivePanel
    from anomalydesk.app.settings import AppSettings
    from anomalydesk.app.state import AppState
    from anomalydesk.fingerprint import FEATURE_NAMES, N_FEATURES

    app = _qt_app()
    state = AppState(live_capacity=REDRAW_POINTS)
    panel = LivePanel(state, AppSettings(live_features=list(FEATURE_NAMES[:REDRAW_CURVES])))
    panel.timer.stop()
    panel.resize(1280, 900)
    panel.show()
    rng = np.random.default_rng(1)
    rows = np.empty((REDRAW_POINTS, 2 + N_FEATURES))
    rows[:, 0] = 1.79e9 + 5 * np.arange(REDRAW_POINTS)
    rows[:, 1] = rng.uniform(0, 100, REDRAW_POINTS)
    rows[:, 2:] = rng.lognormal(3, 1, (REDRAW_POINTS, N_FEATURES))
    state.live.buffer("bench").extend(rows)
    state.set_services(["bench"])
    app.processEvents()
    times = []
    for i in range(repeats + 3):
        state.live.buffer("bench").append(rows[i % REDRAW_POINTS])  # new data each time, as live
        t0 = time.perf_counter()
        panel.redraw()
        panel.graphics.repaint()
        elapsed = (time.perf_counter() - t0) * 1000
        if i >= 3:  # the first paints build caches
            times.append(elapsed)
    panel.close()
    panel.deleteLater()
    app.processEvents()
    return {"redraw_ms": round(statistics.median(times), 2),
            "redraw_p95_ms": round(float(np.percentile(times, 95)), 2)}  # fmt: skip


async def _stall_and_notify(url: str, prefix: str, quick: bool) -> dict[str, Any]:
    from anomalydesk.app.application import DesktopApp
    from anomalydesk.app.loop_monitor import StallMeter
    from anomalydesk.app.settings import AppSettings
    from anomalydesk.detect import incidents
    from anomalydesk.store import connection
    from anomalydesk.store.keys import Keys

    keys = Keys(prefix)
    desktop = DesktopApp(AppSettings(close_to_tray=False), url, keys=keys, run_detector=False)
    desktop.notifier.burst_max = 10**6  # measure every notification, not the burst limit
    result: dict[str, Any] = {}
    try:
        desktop.window.show()
        await desktop.start()
        await desktop.session.connected.wait()
        await desktop.session.caught_up.wait()
        services = 2 if quick else 5
        await desktop.actions.backfill((2 if quick else 24) * 3600, services)
        while len(desktop.state.services) < services:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # let the live panel finish reading the history
        meter = StallMeter()
        meter.start()
        outcome = await desktop.actions.train(None, 17_280, 100, 0.01)
        result["max_stall_ms"] = round(meter.stop(), 1)
        result["train_summary"] = outcome["summary"]

        published: dict[str, float] = {}
        latencies: list[float] = []
        desktop.tray.notification_shown.connect(
            lambda note: latencies.append((time.perf_counter() - published[note.incident_id]) * 1000)
            if note.incident_id in published else None)  # fmt: skip
        n = 100 if quick else 500

        def publisher() -> None:
            r = connection.connect(url)
            try:
                for i in range(n):
                    record = incidents.new_incident(f"bench-{i % 50}", "anomaly", 10_000 + i, time.time())
                    alert = incidents.make_alert(kind="new", incident=record, window=10_000 + i,
                                                 window_start=time.time(), score=95.0, severity="critical",
                                                 reasons=[], model_version=None, message="bench")  # fmt: skip
                    payload = json.dumps(alert)
                    published[record["id"]] = time.perf_counter()
                    r.publish(keys.alerts_channel, payload)
                    time.sleep(0.02)
            finally:
                r.close()

        thread = threading.Thread(target=publisher, name="ad-bench-publisher")
        thread.start()
        deadline = time.monotonic() + 60
        while (thread.is_alive() or len(latencies) < n) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        thread.join()
        result["notify_p99_ms"] = round(float(np.percentile(latencies, 99)), 2) if latencies else None
        result["notify_p50_ms"] = round(float(np.percentile(latencies, 50)), 2) if latencies else None
        result["notifications"] = f"{len(latencies)} of {n}"
    finally:
        await desktop.shutdown()
        desktop.dispose()
    return result


async def _memory(url: str, prefix: str) -> dict[str, Any]:
    import psutil

    from anomalydesk.app.application import DesktopApp
    from anomalydesk.app.settings import AppSettings
    from anomalydesk.ingest.demo import run_fast
    from anomalydesk.store import connection
    from anomalydesk.store.keys import Keys

    keys = Keys(prefix)
    desktop = DesktopApp(AppSettings(close_to_tray=False), url, keys=keys, run_detector=False)
    proc = psutil.Process()
    out: dict[str, Any] = {}
    try:
        desktop.window.show()
        await desktop.start()
        await desktop.session.connected.wait()
        out["rss_mb_start"] = round(proc.memory_info().rss / 2**20, 1)
        loop = asyncio.get_running_loop()
        end = time.time() - 7 * 3600
        for hour in range(1, 7):
            end += 3600

            def one_hour(end: float = end) -> None:
                r = connection.connect(url)
                try:
                    run_fast(r, duration=3600, rate=1000, services=5, end=end, keys=keys)
                finally:
                    r.close()

            await loop.run_in_executor(None, one_hour)
            target = hour * 720 * 5  # windows the live panel should have read by now (bounded below)
            deadline = time.monotonic() + 60
            while (sum(len(b) for b in desktop.state.live.buffers.values()) < min(target, 5 * 3600)
                   and time.monotonic() < deadline):  # fmt: skip
                await asyncio.sleep(0.1)
            if hour in (1, 6):
                out[f"rss_mb_after_{hour}h_demo"] = round(proc.memory_info().rss / 2**20, 1)
                out[f"live_buffer_mb_after_{hour}h"] = round(desktop.state.live.nbytes() / 2**20, 2)
    finally:
        await desktop.shutdown()
        desktop.dispose()
    return out


def _cleanup(url: str, prefix: str) -> None:
    from anomalydesk.app.check import cleanup

    cleanup(url, prefix)


def run(quick: bool, redis_url: str | None) -> dict[str, Any]:
    """Measure and return {redraw_ms, max_stall_ms, notify_p99_ms, …} (see the module docstring)."""
    from anomalydesk.bench.server import throwaway

    with throwaway(redis_url) as url:
        return _run(quick, url)


def _run(quick: bool, redis_url: str) -> dict[str, Any]:
    import qasync

    from anomalydesk.app.application import preload_core

    app = _qt_app()
    preload_core()
    result: dict[str, Any] = measure_redraw(30 if quick else 100)
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    prefix = f"adbench-app:{uuid.uuid4().hex[:8]}:"
    try:
        with loop:
            result.update(loop.run_until_complete(_stall_and_notify(redis_url, prefix, quick)))
            if not quick:
                _cleanup(redis_url, prefix)
                result.update(loop.run_until_complete(_memory(redis_url, prefix + "mem:")))
    finally:
        _cleanup(redis_url, prefix)
    try:
        result["load_average_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return result
