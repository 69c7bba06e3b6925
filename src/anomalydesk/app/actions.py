"""What the panels can ask for (Qt-free): async methods that run core calls off the GUI thread.

Panels hold an `Actions` and await its methods from `@asyncSlot` handlers; each method runs the
blocking store/detect call in the session's I/O pool (or the training executor), then updates the
plain-Python state on the loop thread. Nothing here imports Qt, so the same object drives the
`--check` run and the tests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import subprocess
import threading
import time
from typing import Any

import numpy as np

from anomalydesk.app import backend, training_job
from anomalydesk.app.session import Session
from anomalydesk.app.settings import FAULT_KINDS, TRAIN_PROGRESS_MIN_INTERVAL
from anomalydesk.app.state import table_state
from anomalydesk.detect.incident_model import Silence
from anomalydesk.ingest.demo_model import PERMANENT_KINDS

log = logging.getLogger(__name__)
OUTAGE_NOTE = "Redis unreachable, demo traffic waiting"
DETECTOR_STOP_SECONDS = 15.0


class Actions:
    """The app's operations on Redis, for panels, the tray and `--check`."""

    def __init__(self, session: Session):
        self.rebind(session)

    def rebind(self, session: Session) -> None:
        """Work on `session` (a new connection) with fresh executors; call after `close()`."""
        self.session = session
        self.state = session.state
        self.train_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ad-train")
        self._train_cancel: threading.Event | None = None
        self.demo: Any = None  # ingest.demo.DemoTraffic while demo traffic runs
        self._demo_task: asyncio.Task[None] | None = None
        self.detector_process: subprocess.Popen[bytes] | None = None  # the app's detector, a child process
        self.max_progress_stall = 0.0

    async def close(self) -> None:
        """Stop demo traffic, the training job and the detector; shut the executors down."""
        if self._train_cancel is not None:
            self._train_cancel.set()
        await self.stop_demo()
        self.stop_detector()
        self.train_executor.shutdown(wait=True, cancel_futures=True)

    # --- incidents ----------------------------------------------------------------------------
    async def incident_action(self, action: str, incident_id: str, seconds: float = 0.0) -> str:
        """ack | snooze | resolve | false_positive | accept; the table shows the new state once Redis has it."""
        s = self.session
        incident = await s.call(backend.incident_action, s.sync, s.keys, action, incident_id, seconds)
        self.state.incidents.apply(incident)
        return table_state(incident)[0]

    async def silences(self) -> list[Silence]:
        """Stored silences (the detector applies them; the panel lists them)."""
        s = self.session
        return await s.call(backend.silences, s.sync, s.keys)

    async def add_silence(self, pattern: str, seconds: float, reason: str) -> Silence:
        """Mute notifications for services matching `pattern` for `seconds`."""
        s = self.session
        return await s.call(backend.add_silence, s.sync, s.keys, pattern, seconds, reason)

    async def remove_silence(self, silence_id: str) -> None:
        """Delete a silence."""
        s = self.session
        await s.call(backend.remove_silence, s.sync, s.keys, silence_id)

    async def fingerprint_window(self, service: str, start: float, end: float) -> np.ndarray:
        """Rows [start, features…] of a service between two times (for the details plot)."""
        s = self.session
        return await s.call(backend.fingerprint_window, s.sync, s.keys, service, start, end)

    # --- sketches -----------------------------------------------------------------------------
    async def sketch_settings(self) -> dict[str, Any]:
        """The stored sketch settings and each service's sketch sizes."""
        s = self.session
        found = await s.call(backend.sketch_overview, s.sync, s.keys)
        self.state.sketches = found
        self.state.sketches_changed.emit()
        return found

    async def apply_sketch_settings(self, values: dict[str, Any], force: bool) -> dict[str, Any]:
        """Run `setup` with new sizes; without `force` a size change raises BackendError saying what resets."""
        s = self.session
        result = await s.call(backend.apply_setup, s.sync, s.keys, values, force)
        await self.sketch_settings()
        return result

    async def query(self, kind: str, service: str, items: list[str]) -> Any:
        """Inspector: endpoint | status | interaction | topk."""
        s = self.session
        return await s.call(backend.sketch_query, s.sync, s.keys, kind, service, items)

    # --- demo ---------------------------------------------------------------------------------
    async def start_demo(self, rate: int, services: int) -> None:
        """Start live demo traffic at `rate` events/s over `services` services."""
        if self.demo is not None and self.demo.running:
            self.demo.set_rate(rate)
            self.state.demo.update(rate=rate)
            return
        s = self.session
        self.demo = await s.call(backend.start_demo, s.url, s.keys, rate, services)
        self.state.demo.update(running=True, rate=rate, services=list(self.demo.services), error="")
        self._demo_task = asyncio.ensure_future(self._watch_demo())

    async def _watch_demo(self) -> None:
        while self.demo is not None:
            error = self.state.demo.error
            if self.demo.outage:
                error = f"{OUTAGE_NOTE}: {self.demo.outage}"
            elif error.startswith(OUTAGE_NOTE):
                error = ""
            self.state.demo.update(
                running=bool(self.demo.running), events_per_second=float(self.demo.events_per_second),
                faults=[str(f) for f in self.demo.faults], error=error,
            )  # fmt: skip
            await asyncio.sleep(1.0)

    async def set_demo_rate(self, rate: int) -> None:
        """Change the running demo's rate."""
        if self.demo is not None:
            self.demo.set_rate(rate)
        self.state.demo.update(rate=rate)

    async def stop_demo(self) -> None:
        """Stop demo traffic (no-op when it is not running)."""
        demo, self.demo = self.demo, None
        if self._demo_task is not None:
            self._demo_task.cancel()
            self._demo_task = None
        if demo is not None:
            await self.session.call(demo.stop)
        self.state.demo.update(running=False, events_per_second=0.0, faults=[])

    async def inject(self, kind: str, seconds: float, service: str) -> None:
        """Inject a fault now into the running demo traffic."""
        if kind not in FAULT_KINDS:
            raise backend.BackendError(f"unknown fault kind {kind!r} (one of {', '.join(FAULT_KINDS)})")
        if self.demo is None:
            raise backend.BackendError("start demo traffic first: faults are injected into it")
        # a shift is a deploy that moved the service's level: it stays until the demo stops
        self.demo.inject(kind, math.inf if kind in PERMANENT_KINDS else seconds, service)
        self.state.demo.update(faults=[str(f) for f in self.demo.faults])

    async def backfill(self, seconds: float, services: int) -> dict[str, Any]:
        """Generate `seconds` of history in simulated time (`demo --fast`), so training can start now."""
        s = self.session
        self.state.demo.update(backfill="running")
        try:
            result = await s.call(backend.backfill, s.url, s.keys, seconds, services)
        except Exception as err:
            self.state.demo.update(backfill=f"failed: {err}")
            raise
        overview = await self.refresh_models()
        await s.reload_history()  # the plots show the history now too
        filled = {name: v for name, v in overview.items() if name in result.get("services", [])}
        counts = [int(v.get("windows") or 0) for v in filled.values()]
        learning = [name for name, v in filled.items() if "to go" in str(v.get("state", ""))]  # too few windows
        if counts and not learning:
            ready = f"{min(counts):,} windows of history per service — you can train now"
        elif counts:
            ready = f"{min(counts):,}–{max(counts):,} windows per service; still learning: {', '.join(learning)}"
        else:
            ready = "no service received history"
        result["ready"] = ready
        self.state.demo.update(backfill=f"done: {ready} ({result.get('summary', '')})")
        return result

    # --- training and models ------------------------------------------------------------------
    async def train(self, service: str | None, windows: int, trees: int, false_alarm_rate: float) -> dict[str, Any]:
        """Train (one service or all) in the training executor with throttled progress; then reload models."""
        if self._train_cancel is not None:
            self._train_cancel.set()  # a new run cancels the old one
        cancel = self._train_cancel = threading.Event()
        loop = asyncio.get_running_loop()
        training = self.state.training
        last = [0.0]

        def progress(fraction: float, message: str) -> None:  # worker thread
            now = time.monotonic()
            if fraction >= 1.0 or now - last[0] >= TRAIN_PROGRESS_MIN_INTERVAL:
                last[0] = now
                loop.call_soon_threadsafe(training.set_progress, fraction, message)

        s = self.session
        services = [service] if service else list(self.state.services)
        training.update(running=True, progress=0.0, message="reading fingerprints …", result="")
        try:
            result = await loop.run_in_executor(
                self.train_executor, training_job.run, s.url, s.keys, services,
                {"windows": windows, "trees": trees, "false_alarm_rate": false_alarm_rate}, progress, cancel,
            )  # fmt: skip
        except Exception as err:
            training.update(running=False, result=f"failed: {err}")
            raise
        finally:
            if self._train_cancel is cancel:
                self._train_cancel = None
        # 100 % only for a run that trained something: "trained 0 of 5" at a full bar reads as success
        full = 1.0 if result["trained"] else 0.0
        training.set_progress(training.progress if result["cancelled"] else full, result["summary"])
        training.update(running=False, result=result["summary"])
        for name in result["trained"]:  # the new models' thresholds (the detector scores from now on)
            await s.refresh_model(name)
        await self.refresh_models()
        return result

    def cancel_training(self) -> None:
        """Ask the running training to stop at its next progress step."""
        if self._train_cancel is not None:
            self._train_cancel.set()

    async def refresh_models(self) -> dict[str, dict[str, Any]]:
        """Each service's model state (learning / ready / stale) and versions."""
        s = self.session
        found = await s.call(training_job.model_overview, s.sync, s.keys, list(self.state.services))
        self.state.training.update(services=found)
        return found

    async def activate(self, service: str, version: int) -> None:
        """Make `version` the service's active model."""
        s = self.session
        await s.call(training_job.activate, s.sync, s.keys, service, version)
        await s.refresh_model(service)
        await self.refresh_models()

    async def rollback(self, service: str) -> None:
        """Go back to the previous model version."""
        s = self.session
        await s.call(training_job.rollback, s.sync, s.keys, service)
        await s.refresh_model(service)
        await self.refresh_models()

    # --- the app's detector -------------------------------------------------------------------
    def start_detector(self) -> bool:
        """Run the app's detector in a child process; it works only while no other detector holds the lease."""
        if self.detector_process is not None and self.detector_process.poll() is None:
            return True
        try:
            self.detector_process = backend.start_detector_process(self.session.url, self.session.keys)
        except OSError as err:
            log.warning("the app's detector did not start: %s", err)
            self.detector_process = None
            return False
        return True

    def stop_detector(self) -> None:
        """Stop the app's detector (its stdin closed: it releases its leases and exits) and wait for it."""
        proc, self.detector_process = self.detector_process, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=DETECTOR_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            log.warning("the app's detector did not stop in %s s; terminating it", DETECTOR_STOP_SECONDS)
            proc.terminate()
            proc.wait(timeout=DETECTOR_STOP_SECONDS)
