"""`bench app`'s fleet case alone, optionally with every long GUI-thread event timed (docs/benchmarks.md).

    PYTHONPATH=src python scripts/fleet_gui_events.py            # the `fleet` block, as `bench app --quick`
    PYTHONPATH=src python scripts/fleet_gui_events.py --events   # + each Qt event over 8 ms on the GUI thread

With `--events`, every top-level Qt event the GUI thread handles while the stall meter runs is timed
(a `QApplication.notify` override): wall time, the GUI thread's CPU time and the CPU time of the
process's other threads during it, with the asyncio callbacks it ran named. An event with far more
wall time than CPU time, while the other threads used none, waited for a core (the OS scheduler).
Prints one JSON object: the fleet block, the load average before and after, and the events.
"""

from __future__ import annotations

import argparse
import asyncio
import asyncio.events
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6 import QtWidgets

EVENT_MIN_MS = 8.0
CALLBACK_MIN_MS = 3.0


class Recorder:
    """The long events of the GUI thread while `measuring`."""

    def __init__(self) -> None:
        self.measuring = False
        self.events: list[dict[str, Any]] = []
        self.callbacks: list[str] = []


def timing_app(rec: Recorder) -> QtWidgets.QApplication:
    """A QApplication whose notify() times each top-level event while `rec.measuring`."""

    class App(QtWidgets.QApplication):
        depth = 0

        def notify(self, receiver: Any, event: Any) -> bool:
            if App.depth or not rec.measuring:
                App.depth += 1
                try:
                    return super().notify(receiver, event)
                finally:
                    App.depth -= 1
            App.depth += 1
            rec.callbacks = []
            t0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
            try:
                return super().notify(receiver, event)
            finally:
                App.depth -= 1
                wall = (time.perf_counter() - t0) * 1000
                if wall > EVENT_MIN_MS:
                    cpu = (time.thread_time() - c0) * 1000
                    rec.events.append({"wall_ms": round(wall, 1), "gui_cpu_ms": round(cpu, 1),
                                       "other_threads_cpu_ms": round((time.process_time() - p0) * 1000 - cpu, 1),
                                       "event": f"{event.type().name} {type(receiver).__name__}",
                                       "callbacks": rec.callbacks})  # fmt: skip

    app = App(sys.argv[:1])
    app.setQuitOnLastWindowClosed(False)
    original_run = asyncio.events.Handle._run

    def run(handle: asyncio.events.Handle) -> None:
        if not rec.measuring:
            return original_run(handle)
        t0 = time.perf_counter()
        try:
            return original_run(handle)
        finally:
            ms = (time.perf_counter() - t0) * 1000
            if ms > CALLBACK_MIN_MS:
                task = getattr(getattr(handle, "_callback", None), "__self__", None)
                name = task.get_coro().__qualname__ if isinstance(task, asyncio.Task) else repr(handle)[:80]
                rec.callbacks.append(f"{name} {ms:.0f} ms")

    asyncio.events.Handle._run = run  # type: ignore[method-assign]
    return app


def load_average() -> str:
    """/proc/loadavg, where there is one."""
    path = Path("/proc/loadavg")
    return path.read_text().strip() if path.exists() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", action="store_true", help="time every long GUI-thread event")
    parser.add_argument("--full", action="store_true", help="24 measured windows instead of 6")
    args = parser.parse_args()
    rec = Recorder()
    if args.events:
        from anomalydesk.app.widgets import loop_monitor

        timing_app(rec)
        start, stop = loop_monitor.StallMeter.start, loop_monitor.StallMeter.stop

        def start_measuring(meter: Any) -> None:
            start(meter)
            rec.measuring = True

        def stop_measuring(meter: Any) -> float:
            rec.measuring = False
            return stop(meter)

        loop_monitor.StallMeter.start = start_measuring  # type: ignore[method-assign]
        loop_monitor.StallMeter.stop = stop_measuring  # type: ignore[method-assign]

    import qasync

    from anomalydesk.app.application import preload_core
    from anomalydesk.app.bench import _cleanup, _qt_app
    from anomalydesk.app.bench_fleet import fleet
    from anomalydesk.bench.server import throwaway

    before = load_average()
    app = _qt_app()
    preload_core()
    with throwaway(None) as url:
        loop = qasync.QEventLoop(app)
        asyncio.set_event_loop(loop)
        prefix = f"adbench-app:{uuid.uuid4().hex[:8]}:fleet:"
        with loop:
            out = loop.run_until_complete(fleet(url, prefix, not args.full))
        _cleanup(url, prefix)
    after = load_average()
    events = sorted(rec.events, key=lambda e: -e["wall_ms"])[:40]
    print(json.dumps({"fleet": out, "loadavg_before": before, "loadavg_after": after, "events": events}, indent=1))


if __name__ == "__main__":
    main()
