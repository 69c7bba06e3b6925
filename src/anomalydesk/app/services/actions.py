"""What the panels can ask for (Qt-free): async methods that run core calls off the GUI thread.

Panels hold an `Actions` and await its methods from `@asyncSlot` handlers; each method awaits the
session's `CoreClient` (which runs blocking store/detect calls in its I/O pool, training in its job
executor), then updates the plain-Python state on the loop thread. Nothing here imports Qt, so the
same object drives the `--check` run and the tests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import subprocess
import threading
import time
from typing import Any

import numpy as np

from anomalydesk.app.model.settings import FAULT_KINDS, TRAIN_PROGRESS_MIN_INTERVAL
from anomalydesk.app.model.state import table_state
from anomalydesk.app.services.core_client import CoreClient, CoreError, JobCancelled, NewWindows
from anomalydesk.app.services.session import Session
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
        """Work on `session` (a new connection, its own core client and executors); call after `close()`."""
        self.session = session
        self.core: CoreClient = session.core
        self.state = session.state
        self._train_cancel: threading.Event | None = None
        self.demo: Any = None  # ingest.demo.DemoTraffic while demo traffic runs
        self._demo_task: asyncio.Task[None] | None = None
        self.detector_process: subprocess.Popen[bytes] | None = None  # the app's detector, a child process
        self.max_progress_stall = 0.0

    async def close(self) -> None:
        """Stop demo traffic, the training job and the detector (the session's close shuts the executors)."""
        if self._train_cancel is not None:
            self._train_cancel.set()
        await self.stop_demo()
        self.stop_detector()

    # --- incidents ----------------------------------------------------------------------------
    async def incident_action(self, action: str, incident_id: str, seconds: float = 0.0) -> str:
        """ack | snooze | resolve | false_positive | accept; the table shows the new state once Redis has it."""
        incident = await self.core.incident_action(action, incident_id, seconds)
        self.state.incidents.apply(incident)
        return table_state(incident)[0]

    async def silences(self) -> list[Silence]:
        """Stored silences (the detector applies them; the panel lists them)."""
        return await self.core.silences()

    async def add_silence(self, pattern: str, seconds: float, reason: str) -> Silence:
        """Mute notifications for services matching `pattern` for `seconds`."""
        return await self.core.add_silence(pattern, seconds, reason)

    async def remove_silence(self, silence_id: str) -> None:
        """Delete a silence."""
        await self.core.remove_silence(silence_id)

    async def fingerprint_window(self, service: str, start: float, end: float) -> np.ndarray:
        """Rows [start, features…] of a service between two times (for the details plot)."""
        return await self.core.fingerprint_window(service, start, end)

    async def normal_window(self, service: str, start: float, end: float) -> tuple[np.ndarray, np.ndarray]:
        """The rows of `fingerprint_window` and which of them are normal (outside incidents, but false positives)."""
        return await self.core.normal_window(service, start, end)

    async def fingerprints_after(self, service: str, after: float) -> NewWindows:
        """A service's live windows after a time, one chunk (the details plot of an open incident follows them)."""
        return await self.core.fingerprints_after(service, after)

    # --- sketches -----------------------------------------------------------------------------
    async def sketch_settings(self) -> dict[str, Any]:
        """The stored sketch settings and each service's sketch sizes."""
        found = await self.core.sketch_overview()
        self.state.sketches = found
        self.state.sketches_changed.emit()
        return found

    async def apply_sketch_settings(self, values: dict[str, Any], force: bool) -> dict[str, Any]:
        """Run `setup` with new sizes; without `force` a size change raises SketchConflict saying what resets."""
        result = await self.core.apply_setup(values, force)
        await self.sketch_settings()
        await self.session.follow_window_length()  # a new window length: models of the old one do not score
        return result

    async def query(self, kind: str, service: str, items: list[str]) -> Any:
        """Inspector: endpoint | status | interaction | topk."""
        return await self.core.sketch_query(kind, service, items)

    # --- demo ---------------------------------------------------------------------------------
    async def start_demo(self, rate: int, services: int) -> None:
        """Start live demo traffic at `rate` events/s over `services` services."""
        if self.demo is not None and self.demo.running:
            self.demo.set_rate(rate)
            self.state.demo.update(rate=rate)
            return
        self.demo = await self.core.start_demo(rate, services)
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
            await self.core.stop_demo(demo)
        self.state.demo.update(running=False, events_per_second=0.0, faults=[])

    async def inject(self, kind: str, seconds: float, service: str) -> None:
        """Inject a fault now into the running demo traffic."""
        if kind not in FAULT_KINDS:
            raise CoreError(f"unknown fault kind {kind!r} (one of {', '.join(FAULT_KINDS)})")
        if self.demo is None:
            raise CoreError("start demo traffic first: faults are injected into it")
        # a shift is a deploy that moved the service's level: it stays until the demo stops
        self.demo.inject(kind, math.inf if kind in PERMANENT_KINDS else seconds, service)
        self.state.demo.update(faults=[str(f) for f in self.demo.faults])

    async def backfill(self, seconds: float, services: int) -> dict[str, Any]:
        """Generate `seconds` of history in simulated time (`demo --fast`), so training can start now."""
        self.state.demo.update(backfill="running")
        try:
            result = await self.core.backfill(seconds, services)
        except JobCancelled as err:
            self.state.demo.update(backfill=str(err))
            raise
        except Exception as err:
            self.state.demo.update(backfill=f"failed: {err}")
            raise
        overview = await self.refresh_models()
        await self.session.reload_history()  # the plots show the history now too
        filled = {name: v for name, v in overview.items() if name in result.get("services", [])}
        counts = [int(v.get("windows") or 0) for v in filled.values()]
        learning = [name for name, v in filled.items() if v.get("needed")]  # too few windows
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
        """Train (one service or all) in a child process with throttled progress; then reload models."""
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

        services = [service] if service else list(self.state.services)
        training.update(running=True, progress=0.0, message="reading fingerprints …", result="")
        try:
            result = await self.core.train(
                services, {"windows": windows, "trees": trees, "false_alarm_rate": false_alarm_rate}, progress, cancel
            )
        except Exception as err:
            training.update(running=False, result=f"failed: {err}")
            raise
        finally:
            if self._train_cancel is cancel:
                self._train_cancel = None
        # 100 % only for a run that trained something: "trained 0 of 5" at a full bar reads as success
        full = 1.0 if result["trained"] else 0.0
        training.set_progress(training.progress if result["cancelled"] else full, result["summary"])
        try:
            for name in result["trained"]:  # the new models' thresholds (the detector scores from now on)
                await self.session.refresh_model(name)
            await self.refresh_models()
        finally:  # the result lands with the states it produced: the panel replaces it once they change
            training.update(running=False, result=result["summary"])
        return result

    def cancel_training(self) -> None:
        """Ask the running training to stop at its next progress step."""
        if self._train_cancel is not None:
            self._train_cancel.set()

    async def refresh_models(self) -> dict[str, dict[str, Any]]:
        """Each service's model state (learning / ready / stale) and versions."""
        return await self.session.read_model_states()

    async def activate(self, service: str, version: int) -> None:
        """Make `version` the service's active model."""
        await self.core.activate(service, version)
        await self.session.refresh_model(service)
        await self.refresh_models()

    async def rollback(self, service: str) -> None:
        """Go back to the previous model version."""
        await self.core.rollback(service)
        await self.session.refresh_model(service)
        await self.refresh_models()

    # --- the app's detector -------------------------------------------------------------------
    def start_detector(self) -> bool:
        """Run the app's detector in a child process; it works only while no other detector holds the lease."""
        if self.detector_process is not None and self.detector_process.poll() is None:
            return True
        try:
            self.detector_process = self.core.start_detector()
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
