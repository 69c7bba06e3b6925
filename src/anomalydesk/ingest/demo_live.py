"""Live demo traffic (`DemoTraffic`): paced in real time by a steady scheduler in a thread (one numpy
batch per service every `DEMO_TICK_SECONDS`), sealing every half window. The desktop app's demo panel
uses it: start, stop, set_rate, inject a fault now, measured events per second. A run that ends on
purpose (stop, or its duration) records so (`store.traffic_stops`): the silence after it is no gap. A
window length changed while it runs (`setup --window … --force`) is followed, as the detector follows it.

Why this module is long: the live run's one thread owns its whole life — start on the server's clock
after any history, the paced loop with its outage wait, faults injected now, the window-length follow,
and an end that completes the last window and records the stop so the silence after it is no gap —
and each of those shares the loop's state; split up, they would pass that state back and forth.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis

from anomalydesk import config
from anomalydesk.ingest.demo_fast import chunk_seconds, history_chunk, run_fast
from anomalydesk.ingest.demo_model import PERMANENT_KINDS, Fault, InjectSpec, Simulation, check_fault
from anomalydesk.ingest.demo_run import TruthRecorder, check_options, plan_faults, prepare, send
from anomalydesk.ingest.demo_services import load_factor, service_names
from anomalydesk.store import traffic_stops
from anomalydesk.store.admin import window_seconds
from anomalydesk.store.ingest_buffer import BufferFull, IngestSink
from anomalydesk.store.ingest_core import IngestResult
from anomalydesk.store.keys import Keys
from anomalydesk.store.sealing import seal_all

log = logging.getLogger(__name__)


@dataclass
class _Rate:
    """Events per second over a trailing span of monotonic time."""

    span: float
    samples: deque[tuple[float, int]]

    def add(self, at: float, n: int) -> None:
        self.samples.append((at, n))
        while self.samples and self.samples[0][0] < at - self.span:
            self.samples.popleft()

    def value(self, now: float) -> float:
        if len(self.samples) < 2:
            return 0.0
        first_at = self.samples[0][0]
        total = sum(n for at, n in self.samples if at > first_at)
        return total / max(now - first_at, 1e-9)


class DemoTraffic:
    """Live demo traffic in a background thread (thread-safe; no Qt): start, stop, set_rate, inject.

    `redis_client_or_url` is a redis client (used as is, not closed) or a URL (a client of our own,
    closed on stop). `duration` stops the traffic by itself after that many seconds; `injects`
    schedules faults relative to the start (recorded as ground truth when each begins). `since` is
    where history written just before ends (`run_fast`'s `end`, with the same `seed`): the traffic
    then starts there instead of at the start time, so the window it starts in is not left partly
    empty, and a window boundary the clock passed in between is first written as history.
    """

    def __init__(self, redis_client_or_url: redis.Redis | str, rate: float = config.DEMO_DEFAULT_RATE,
                 services: int = config.DEMO_DEFAULT_SERVICES, seed: int | None = None, *,
                 duration: float | None = None, injects: Sequence[InjectSpec] = (),
                 truth_path: Path | str | None = None, keys: Keys | None = None,
                 tick: float = config.DEMO_TICK_SECONDS, since: float | None = None):
        check_options(rate, services, duration)
        self.services = service_names(services)
        for spec in injects:
            check_fault(spec.kind, spec.service, self.services)
        self._url = redis_client_or_url if isinstance(redis_client_or_url, str) else None
        self._r = None if self._url is not None else redis_client_or_url
        self.keys = keys or Keys(config.key_prefix())
        self.seed = random.randrange(2**31) if seed is None else seed
        self.duration = duration
        self.tick = tick
        self._since = since
        self._from = 0.0  # epoch seconds the first step generates from
        self._specs = list(injects)
        self._truth_path = truth_path
        self._rate = float(rate)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # set by the thread as it ends; waited on instead of Thread.join, which on Python 3.11 takes a
        # thread interrupted mid-join (Ctrl-C) for finished while it still flushes (bpo-45274's handler)
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._scheduled: list[Fault] = []  # not begun yet
        self._faults: list[Fault] = []  # begun (active or over)
        self._truth: TruthRecorder | None = None
        self._measured = _Rate(config.DEMO_RATE_WINDOW_SECONDS, deque())
        self.events = 0  # request events handed to Redis
        self.scheduled = 0.0  # events the schedule asked for (rate × daily load × time), for comparison
        self.business_metrics = 0
        self.result = IngestResult()
        self.started_at: float | None = None  # epoch seconds, server clock
        self._mono0 = 0.0
        self.stopped_at: float | None = None
        self.error: BaseException | None = None  # why the thread stopped, when it failed
        self.outage = ""  # while Redis is unreachable: why (the thread waits and resumes)
        self.stop_pending = False  # stopped during an outage: the stop is recorded once Redis is back
        self._pending_stop: threading.Event | None = None  # set: that recording is no longer wanted
        # each change of the window length followed: {"at" (epoch seconds), "window_seconds", "was"}
        self.window_changes: list[dict[str, float]] = []

    # --- control ------------------------------------------------------------------------------
    def start(self) -> DemoTraffic:
        """Connect, make sure setup ran, and start the traffic thread."""
        if self._thread is not None:
            raise RuntimeError("demo traffic is already running")
        if self._pending_stop is not None:  # an earlier run's stop, stopped in an outage: traffic is back
            self._pending_stop.set()
        if self._r is None:
            from anomalydesk.store.connection import connect
            from anomalydesk.store.locate import resolve_url

            self._r = connect(resolve_url(self._url))
        self.window_s = prepare(self._r, self.keys)
        self._sim = Simulation(len(self.services), self.window_s)
        self._rng = np.random.default_rng(self.seed)
        self._truth = TruthRecorder(self._r, self.keys, self._truth_path)
        seconds, micros = self._r.time()  # the server's clock: live windows follow it
        self._mono0 = time.monotonic()
        self.started_at = seconds + micros / 1e6
        self._from = self._continue_history(self.started_at)
        traffic_stops.resume(self._r, self.services, self._from, keys=self.keys)  # (a stop of an earlier run)
        end = None if self.duration is None else self.started_at + self.duration
        self._scheduled = plan_faults(self._specs, self.started_at, end, self.services)
        self._stop.clear()
        self._done.clear()
        self._thread = threading.Thread(target=self._run, name="anomalydesk-demo", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the traffic, send what is buffered and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._done.wait(timeout)
            self._thread = None
        if self._url is not None and self._r is not None:
            self._r.close()
            self._r = None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the traffic stops by itself (duration over, or failed); False on timeout."""
        return self._thread is None or self._done.wait(timeout)

    def set_rate(self, eps: float) -> None:
        """Change the mean rate (events per second over all services)."""
        check_options(eps, len(self.services), None)
        with self._lock:
            self._rate = float(eps)

    def inject(self, kind: str, seconds: float = config.DEMO_INJECT_DEFAULT_SECONDS,
               service: str = config.DEMO_INJECT_DEFAULT_SERVICE) -> Fault:
        """Inject a fault now for `seconds` (a `shift` may last for ever: math.inf), recorded as ground
        truth; raises ValueError if impossible."""
        check_fault(kind, service, self.services)
        if not (seconds > 0 and (math.isfinite(seconds) or kind in PERMANENT_KINDS)):
            raise ValueError(f"a fault lasts more than 0 seconds, got {seconds}")
        if not self.running or self._truth is None:
            raise RuntimeError("demo traffic is not running: start it before injecting faults")
        now = self.clock()
        fault = Fault(kind, service, now, now + seconds)
        with self._lock:
            self._faults.append(fault)
            self._truth.record(fault)
        return fault

    # --- state --------------------------------------------------------------------------------
    def clock(self) -> float:
        """Now in epoch seconds by the Redis server's clock (read at start, then kept by monotonic time)."""
        if self.started_at is None:
            return time.time()
        return self.started_at + (time.monotonic() - self._mono0)

    @property
    def rate(self) -> float:
        """The requested mean rate, events per second."""
        return self._rate

    @property
    def running(self) -> bool:
        """True while the traffic thread runs."""
        return self._thread is not None and not self._done.is_set()

    @property
    def events_per_second(self) -> float:
        """Request events per second actually sent, over the last couple of seconds."""
        with self._lock:
            return self._measured.value(time.monotonic()) if self.running else 0.0

    @property
    def faults(self) -> list[Fault]:
        """The faults active now."""
        now = self.clock()
        with self._lock:
            return [f for f in self._faults if f.start <= now < f.end]

    @property
    def truth(self) -> list[dict[str, Any]]:
        """Every fault recorded as ground truth so far."""
        return list(self._truth.recorded) if self._truth is not None else []

    def _continue_history(self, now: float) -> float:
        """Where the first step starts: where the history before ends (see `since`), else the start of
        the current window, so the first live window is a whole one (a partial first window reads as
        a traffic drop to a model trained on whole ones) — unless a service already has data in it.

        Live events land in the window of the server clock when they arrive, so the first step, which
        generates everything from that start on at once, must arrive before the window ends: windows
        the clock passed (or is about to pass) go in as history first, and that is checked again after
        each piece of history and after the warm-up, which take time of their own."""
        assert self._r is not None
        if self._since is not None and self._since >= now:
            return now
        start, warmed = self._since, None
        while True:
            current = math.floor(now / self.window_s) * self.window_s
            if now - current > self.window_s - self._handover_margin():  # too close to the boundary
                time.sleep(current + self.window_s - now)
            elif start is None:
                if self._window_has_data(current):
                    return now
                start = current
            elif start < current:  # the clock passed a window boundary since the history ended
                run_fast(self._r, duration=current - start, end=current, rate=self._rate,
                         services=len(self.services), seed=self.seed, keys=self.keys)  # fmt: skip
                start = current
            else:
                if warmed == start:
                    return start
                if warmed is not None:  # the intervals of a service are generated in time order
                    self._sim = Simulation(len(self.services), self.window_s)
                self._warm_up(start)
                warmed = start
            now = self.clock()

    def _handover_margin(self) -> float:
        """How long before a window boundary the first live step may still start: the time its
        generation and write take, at most a quarter of the window."""
        return min(config.DEMO_HANDOVER_SECONDS, self.window_s / 4)

    def _warm_up(self, start: float) -> None:
        """Run (without sending) the simulation over the window before `start`: a KPI reported over a
        trailing window (orders per window) then counts that window's part of the first live one, which
        a fresh simulation would leave out (no report: kpi_level 0, an anomaly at the handover)."""
        chunk_s = chunk_seconds(self._rate, self.window_s)
        for chunk in range(math.floor((start - self.window_s) / chunk_s), math.ceil(start / chunk_s)):
            for svc in range(len(self.services)):
                history_chunk(self._sim, svc, chunk, chunk_s, self._rate, self.seed)

    def _window_has_data(self, window_start: float) -> bool:
        """Whether any demo service already has events in the window starting at `window_start`."""
        assert self._r is not None
        pipe = self._r.pipeline(transaction=False)
        for service in self.services:
            pipe.zscore(self.keys.open_windows(service), int(window_start // self.window_s))
        return any(score is not None for score in pipe.execute())

    # --- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        assert self._r is not None and self._truth is not None and self.started_at is not None
        # one attempt per flush: an outage is waited out by this loop, which stays responsive to stop()
        sink = IngestSink(self._r, replay=False, max_batch=2**62,
                          max_buffered=int(max(self._rate * 30, config.SINK_MAX_BUFFERED_EVENTS)),
                          retry_attempts=1, keys=self.keys)  # fmt: skip
        mono0 = self._mono0
        epoch0 = self.started_at
        end = None if self.duration is None else epoch0 + self.duration
        last, last_seal, last_read, deadline = self._from, epoch0, epoch0, mono0
        backoff = 0.0
        try:
            while not self._stop.is_set():
                now = epoch0 + (time.monotonic() - mono0)
                if end is not None:
                    now = min(now, end)
                try:
                    if now - last_read >= config.DEMO_WINDOW_REFRESH_SECONDS:
                        self._follow_window_length(last)
                        last_read = now
                    self._step(sink, last, now)
                    if now - last_seal >= self.window_s / 2:
                        seal_all(self._r, keys=self.keys)
                        last_seal = now
                except (redis.ConnectionError, redis.TimeoutError, BufferFull) as err:
                    # Redis is down: wait and carry on (what was generated meanwhile stays in the bounded
                    # buffer and is written once Redis is back; beyond the buffer it is dropped, as a
                    # real service's failed requests would be)
                    backoff = self._wait_out(err, backoff)
                    last, deadline = now, time.monotonic()
                    continue
                if self.outage:
                    log.warning("Redis is reachable again: demo traffic resumes")
                    self.outage, backoff = "", 0.0
                last = now
                if end is not None and now >= end:
                    break
                deadline += self.tick
                pause = deadline - time.monotonic()
                if pause < -1.0:
                    deadline = time.monotonic()  # far behind: do not try to catch up in a burst
                elif pause > 0:
                    self._stop.wait(pause)
            ended = last
            if self.outage:
                # stopped while Redis is away: what is buffered cannot be written, and a stop is no error;
                # it is recorded once Redis answers again, so the silence after it is no gap then either
                self._record_stop_when_back(ended)
                return
            whole = end is None
            if whole:
                self._follow_window_length(last)  # (a change of the last second: the stop begins at a boundary)
                # stopped by stop(): the rest of the current window at once, so the last window is whole
                # too (a partial one reads as a traffic drop on every service: a reconnect in the app)
                ended = math.ceil(last / self.window_s) * self.window_s
            # ended on purpose (stop(), or the duration asked for): the silence that follows is no gap.
            # Recorded before the last events are sent: the first silent window may be sealed (and
            # judged) as soon as it ends, while this thread waits for the GIL in a busy app
            traffic_stops.record(self._r, self.services, ended, keys=self.keys)
            if whole:
                self._step(sink, last, ended)
            self.result = self.result + sink.close()
            seal_all(self._r, keys=self.keys)
            self._stop_after_the_last_events(ended)
        except Exception as err:  # the owner reads `error`; the thread must not die silently
            self.error = err
            log.exception("demo traffic stopped")
        finally:
            self.stopped_at = self.clock()
            try:
                self._truth.close()
            finally:
                self._done.set()

    def _stop_after_the_last_events(self, ended: float) -> None:
        """Live events take the window of the server's clock when they arrive: sent once it had passed
        `ended`, the last ones landed in the stop's first window, whose traffic would end the stop (and the
        silence after it would read as a gap). The stop then begins at the window after the one they
        landed in; that window has not ended yet, so the detector has not judged it."""
        assert self._r is not None
        seconds, micros = self._r.time()
        now = seconds + micros / 1e6
        first = math.ceil(ended / self.window_s) * self.window_s  # the stop's first window (`ended` may be mid-window)
        # (it holds events only if they came late; past its end it may be sealed already)
        if now >= first and (now >= first + self.window_s or self._window_has_data(first)):
            since = (math.floor(now / self.window_s) + 1) * self.window_s
            traffic_stops.record(self._r, self.services, since, cut=ended, keys=self.keys)

    def _record_stop_when_back(self, since: float) -> None:
        """Record the stop at `since` (when Stop ended the traffic; the outage before it was no stop, and
        its silence stays what it was) as soon as Redis answers, trying for
        `config.DEMO_STOP_RECORD_PATIENCE_SECONDS` from a daemon thread with a client of its own (the
        demo's thread ends now: Stop must not wait for the outage). `stop_pending` is True until it is
        recorded; starting the demo again cancels it (its start resumes the traffic anyway)."""
        log.warning("demo traffic stopped while Redis is unreachable: its stop is recorded once Redis is back")
        self.stop_pending = True
        cancelled = self._pending_stop = threading.Event()
        assert self._r is not None
        client = self._r if self._url is None else None  # (stop() closes a connection it made)

        def record() -> None:
            from anomalydesk.store.connection import connect
            from anomalydesk.store.locate import resolve_url

            r, recorded = client, False
            deadline = time.monotonic() + config.DEMO_STOP_RECORD_PATIENCE_SECONDS
            wait = config.DEMO_OUTAGE_RETRY_SECONDS
            try:
                while not cancelled.is_set() and time.monotonic() < deadline:
                    try:
                        r = r or connect(resolve_url(self._url))
                        traffic_stops.record(r, self.services, since, keys=self.keys)
                        recorded = True
                        log.info("Redis is back: the demo's stop is recorded")
                        return
                    except (redis.ConnectionError, redis.TimeoutError):
                        cancelled.wait(wait)
                        wait = min(wait * 2, config.DEMO_OUTAGE_RETRY_MAX_SECONDS)
                if not cancelled.is_set():
                    log.warning("Redis stayed unreachable: the demo's stop was not recorded, and its silence "
                                "may open a gap incident")  # fmt: skip
            finally:
                if recorded or cancelled.is_set():
                    self.stop_pending = False
                if client is None and r is not None:
                    r.close()

        threading.Thread(target=record, name="demo-stop-record", daemon=True).start()

    def _follow_window_length(self, at: float) -> None:
        """Re-read the window length, as the detector does each refresh (`setup --window … --force`
        changes it while traffic runs): from `at` on, windows of the new length are generated (the
        orders KPI counts over them) and sealed, and the summary reports it."""
        assert self._r is not None
        window_s = window_seconds(self._r, self.keys)
        if window_s == self.window_s:
            return
        log.info("window length changed from %d s to %d s: demo traffic follows it", self.window_s, window_s)
        self._sim.set_window(window_s, at)
        with self._lock:
            self.window_changes.append({"at": at, "window_seconds": window_s, "was": self.window_s})
            self.window_s = window_s

    def _wait_out(self, err: Exception, backoff: float) -> float:
        """One wait of an outage (exponential, capped); the first logs why."""
        if not self.outage:
            log.warning("Redis unreachable (%s): demo traffic waits and resumes when it is back", err)
        self.outage = str(err) or type(err).__name__
        backoff = min(max(backoff * 2, config.DEMO_OUTAGE_RETRY_SECONDS), config.DEMO_OUTAGE_RETRY_MAX_SECONDS)
        self._stop.wait(backoff)
        return backoff

    def _step(self, sink: IngestSink, t0: float, t1: float) -> None:
        if t1 <= t0:
            return
        with self._lock:
            rate = self._rate
            begun = [f for f in self._scheduled if f.start < t1]
            for fault in begun:
                self._scheduled.remove(fault)
                self._faults.append(fault)
                assert self._truth is not None
                self._truth.record(fault)
            faults = [f for f in self._faults if f.overlaps(t0, t1)]
        with self._lock:
            self.scheduled += rate * float(load_factor((t0 + t1) / 2)) * (t1 - t0)
        for svc in range(len(self.services)):
            traffic = self._sim.generate(svc, t0, t1, rate, self._rng, faults)
            kpis = send(sink, traffic, replay=False)
            with self._lock:
                self.events += len(traffic)
                self.business_metrics += kpis
                self._measured.add(time.monotonic(), len(traffic))
        self.result = self.result + sink.flush()

    def summary(self) -> dict[str, Any]:
        """What `demo --json` prints for a live run."""
        began = self.started_at or time.time()
        elapsed = (self.stopped_at or self.clock()) - began
        return {
            "mode": "live", "services": self.services, "rate": self._rate, "seed": self.seed,
            "window_seconds": getattr(self, "window_s", None), "window_changes": list(self.window_changes),
            "start": began, "end": began + elapsed,
            "duration_s": round(elapsed, 3), "events": self.events, "business_metrics": self.business_metrics,
            "accepted": self.result.accepted, "late": self.result.late,
            "events_per_s": round(self.events / elapsed, 1) if elapsed > 0 else None,
            "scheduled_events_per_s": round(self.scheduled / elapsed, 1) if elapsed > 0 else None,
            "faults": self.truth, "error": None if self.error is None else str(self.error),
        }  # fmt: skip
