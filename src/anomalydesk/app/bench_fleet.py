"""`bench app`'s fleet case: the desktop app watching 100 services at W = 5 s with live demo traffic and
the app's detector on (the default; a child process the app owns), every service with a model, so
all of them are scored at each window boundary (all services close their windows at the same moment).

Set-up, in child processes so that none of it is counted against the app: `setup --window 5`, demo
traffic with `--backfill` (history for training, then live traffic continuing it with no gap),
`train` of every service; the detectors' consumer group created at the newest window, so the
app's detector starts with the live windows (its catch-up of the history is not measured here).
The live traffic keeps running in its own process (the producer is not
the app's work; a real fleet sends from elsewhere too). Then, in this process:

- `max_stall_ms` / `p99_stall_ms`: the longest (and 99th-percentile) time the GUI loop did not
  service a 5 ms timer over `windows` live windows, with the app reading 100 fingerprint and score
  streams, its detector scoring every window, alerts arriving;
- `redraw_ms` / `redraw_p95_ms` / `redraw_max_ms`: each live-panel redraw that drew new data during
  that stretch (8 feature curves and the score curve of one service): `setData` plus every paint
  of the plots until the next redraw tick (`loop_monitor.PaintTimer`);
- `idle_max_stall_ms` / `idle_p99_stall_ms`: the ceiling — the same meter, same window, over an
  equally long stretch right after, with the traffic and the detector stopped; `stall_ratio` is
  `max_stall_ms / idle_max_stall_ms`;
- `scored_windows`: windows the detector stored a score for during the measured stretch (100 per
  window when it keeps up), `alerts`: alerts the app received meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import time
from typing import Any

import numpy as np

from anomalydesk import config

SERVICES, WINDOW_S = 100, 5
RATE = 5_000  # events/s over all services: 50 per service and second, 250 per window


def _cli(url: str, prefix: str, *args: str, timeout: float = 1800) -> dict[str, Any]:
    from anomalydesk.app.services.jobs import self_command

    done = subprocess.run([*self_command(), "--json", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, config.ENV_REDIS_URL: url, config.ENV_PREFIX: prefix})  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"anomalydesk {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout) if done.stdout.strip() else {}


def _scored_since(r: Any, keys: Any, services: list[str], start: float) -> int:
    pipe = r.pipeline(transaction=False)
    for service in services:
        pipe.xrevrange(keys.scores(service), count=400)
    from anomalydesk.detect.window_scores import parse_entries

    return sum(1 for entries in pipe.execute() for s in parse_entries(entries) if s.start >= start)


async def fleet(url: str, prefix: str, quick: bool) -> dict[str, Any]:
    """Measure the fleet case (see the module docstring); returns the `fleet` block of `bench app`."""
    from anomalydesk.app.application import DesktopApp
    from anomalydesk.app.model.settings import AppSettings
    from anomalydesk.app.services.jobs import self_command
    from anomalydesk.app.widgets.loop_monitor import PaintTimer, StallMeter
    from anomalydesk.fingerprint import FEATURE_NAMES
    from anomalydesk.store import connection
    from anomalydesk.store.keys import Keys

    keys = Keys(prefix)
    windows = 6 if quick else 24
    history_s = 1_500 if quick else 3_600  # ≥ 256 windows per service: enough to train
    out: dict[str, Any] = {"services": SERVICES, "window_seconds": WINDOW_S, "rate_eps": RATE, "windows": windows}
    _cli(url, prefix, "setup", "--window", str(WINDOW_S))
    env = {**os.environ, config.ENV_REDIS_URL: url, config.ENV_PREFIX: prefix}
    producer = subprocess.Popen([*self_command(), "demo", "--backfill", str(history_s), "--rate", str(RATE),
                                 "--services", str(SERVICES), "--seed", "7"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    r = connection.connect(url)
    desktop = None
    try:
        began = time.perf_counter()
        live_after = time.time() + 5  # windows sealed from here on are live ones
        while True:
            if producer.poll() is not None:
                raise RuntimeError(f"demo traffic ended: {producer.stderr.read().decode()[-500:]}")  # type: ignore[union-attr]
            names = [n.decode() for n in r.smembers(keys.services)]
            newest = [r.xrevrange(keys.fingerprints(n), count=1) for n in names]
            if len(names) >= SERVICES and all(e and float(e[0][1][b"start"]) >= live_after for e in newest):
                break
            await asyncio.sleep(1.0)
        out["history_s"] = round(time.perf_counter() - began, 1)
        began = time.perf_counter()
        trained = _cli(url, prefix, "train", "--trees", "100")
        out["train_s"] = round(time.perf_counter() - began, 1)
        out["models"] = len(trained.get("trained", []))

        # the detector starts at the live windows: catching up on the history (up to
        # DETECTOR_CATCHUP_WINDOWS per service, minutes of scoring for 100 services) is not this case
        for name in [n.decode() for n in r.smembers(keys.services)]:
            r.xgroup_create(keys.fingerprints(name), config.DETECTOR_GROUP, id="$", mkstream=True)

        settings = AppSettings(close_to_tray=False, live_features=list(FEATURE_NAMES[:8]), live_service="gateway")
        paints = PaintTimer()  # before the window is built (see PaintTimer)
        desktop = DesktopApp(settings, url, keys=keys, run_detector=True)
        desktop.notifier.burst_max = 10**6
        desktop.window.resize(1280, 900)
        desktop.window.show()
        await desktop.start()
        await desktop.session.connected.wait()
        await desktop.session.caught_up.wait()
        services = sorted(n.decode() for n in r.smembers(keys.services))
        # ready: every service buffered, and the detector caught up (a score for a window of the last ~2)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            buffered = len(desktop.state.live.buffers)
            recent = _scored_since(r, keys, services, time.time() - 3 * WINDOW_S)
            if buffered >= SERVICES and recent >= SERVICES:
                break
            await asyncio.sleep(1.0)
        else:
            raise RuntimeError(f"not ready after 5 minutes: {buffered} services buffered, {recent} windows of the "
                               f"last 3 scored, {out['models']} models, detector {desktop.state.connection.detector!r}")

        panel = desktop.window.live
        panel.select_service("gateway")
        redraws: list[float] = []
        paints.watch(panel.graphics)
        pending: list[float] = []  # setData time of the last redraw, whose paints are still being added up

        def timed_redraw() -> None:
            if pending:  # the previous redraw's paints happened between the two ticks
                redraws.append(pending.pop() + paints.ms)
            t0 = time.perf_counter()
            drew = panel.redraw()
            paints.ms = 0.0
            if drew:
                pending.append((time.perf_counter() - t0) * 1000)

        panel.timer.timeout.disconnect()
        panel.timer.timeout.connect(timed_redraw)
        alerts_before = desktop.session.alerts_received
        meter = StallMeter()
        start = time.time()
        meter.start()
        await asyncio.sleep(windows * WINDOW_S)
        out["max_stall_ms"] = round(meter.stop(), 1)
        paints.close()
        out["p99_stall_ms"] = round(meter.p99_stall_ms, 1)
        measured_s = time.time() - start
        out["alerts"] = desktop.session.alerts_received - alerts_before
        if redraws:
            out["redraw_ms"] = round(statistics.median(redraws), 2)
            out["redraw_p95_ms"] = round(float(np.percentile(redraws, 95)), 2)
            out["redraw_max_ms"] = round(max(redraws), 2)
        out["redraws"] = len(redraws)
        await asyncio.sleep(2 * WINDOW_S)  # the last measured windows scored
        out["scored_windows"] = _scored_since(r, keys, services, start)
        out["scored_per_window"] = round(out["scored_windows"] / (measured_s / WINDOW_S), 1)

        producer.terminate()
        producer.wait(timeout=30)
        desktop.actions.stop_detector()
        await asyncio.sleep(2.0)
        meter.start()
        await asyncio.sleep(measured_s)
        out["idle_max_stall_ms"] = round(meter.stop(), 1)
        out["idle_p99_stall_ms"] = round(meter.p99_stall_ms, 1)
        out["stall_ratio"] = round(out["max_stall_ms"] / max(out["idle_max_stall_ms"], 0.1), 2)
    finally:
        if producer.poll() is None:
            producer.terminate()
            producer.wait(timeout=30)
        if desktop is not None:
            await desktop.shutdown()
            desktop.dispose()
        r.close()
    return out
