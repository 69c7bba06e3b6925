"""The app's connection to the core and the loops that read it (Qt-free, asyncio on the qasync loop).

A `CoreClient` (the process's two Redis clients, one sync and one asyncio; their retry policy,
timeouts and health checks come from `store.connection`) is opened in `start()` and closed in
`close()`. A supervisor keeps it connected with capped exponential backoff and, once connected, runs
three readers side by side:

* alerts: SUBSCRIBE to `Keys.alerts_channel` first, then catch up from `Keys.alerts_log` since the
  last entry seen, then read pub/sub — so an alert published while the app was away or reconnecting
  is not lost (duplicates are dropped by alert id). An alert says which incident changed: the app
  reads that incident's record from `Keys.incidents` (the detector wrote it in the same script that
  logged and published the alert) and shows the record, not a copy rebuilt from alerts;
* fingerprints: XREAD on every service's fingerprint stream and on the stream of the scores the
  detector stored for its windows (`detect.window_scores`), into the live ring buffers: the plot shows
  the scores the alerts used, and the app scores nothing itself;
* status: server facts, `status` counters, and self-monitoring warnings; when the window length
  changed (`setup --window … --force`, the Sketches panel), each service's threshold and model state
  are read again — a model of another window length does not score (`service_state.model_state`).

Every Redis call goes through `self.core`; nothing here touches a widget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from redis.exceptions import RedisError

from anomalydesk import config
from anomalydesk.app.model.notifier import Notifier
from anomalydesk.app.model.settings import (
    CATCHUP_MAX_ALERTS,
    FINGERPRINT_BLOCK_MS,
    FINGERPRINT_READ_INTERVAL_S,
    RECONNECT_BASE_SECONDS,
    RECONNECT_CAP_SECONDS,
    SILENT_FINGERPRINT_WARN_WINDOWS,
    STATUS_POLL_SECONDS,
)
from anomalydesk.app.model.state import AppState
from anomalydesk.app.services.core_client import CoreClient, CoreError, describe, redact
from anomalydesk.detect.incident_model import Alert
from anomalydesk.detect.window_scores import WindowScore, parse_entries
from anomalydesk.fingerprint import Fingerprint, from_stream_entry
from anomalydesk.store.keys import Keys

log = logging.getLogger(__name__)
_FATAL_WORDS = ("authentication", "WRONGPASS", "NOAUTH", "too old", "NOPERM")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


CLOSE_TIMEOUT_SECONDS = 3.0
HISTORY_CHUNK = 500  # stream entries per read when filling the live buffers (keeps each parse short)
CANCEL_AGAIN_SECONDS = 0.5  # a reader still running this long after its cancel is cancelled again …
CANCEL_ATTEMPTS = 10  # … up to this many times; then it is left, with a warning


def _raise_if_cancelling() -> None:
    """End the current task if it was asked to: redis-py can swallow a cancel that lands in a read and
    return as if the read had timed out (about 1 blocking XREAD in 200 cancelled at a random moment, on
    redis-py 8.1 and 8.2 alike), and a reader loop would go on reading."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _stopped(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel the tasks and wait until each has ended, cancelling again one that a swallowed cancel left
    running (see `_raise_if_cancelling`): the app's close waited for such a reader until Redis went away.
    (A reader closing its connection in its `finally` takes a repeated cancel there as the end.)"""
    pending = set(tasks)
    try:
        for _attempt in range(CANCEL_ATTEMPTS):
            for task in pending:
                task.cancel()
            _done, pending = await asyncio.wait(pending, timeout=CANCEL_AGAIN_SECONDS)
            if not pending:
                return
    finally:  # cancelled meanwhile (the session's close gives up waiting): no reader is left uncancelled
        for task in pending:
            task.cancel()
    log.warning("%d Redis reader(s) did not stop after %d cancels; left running", len(pending), CANCEL_ATTEMPTS)


def _parse_entries(service: str, entries: list[Any]) -> list[Fingerprint]:
    """Parse stream entries (oldest first), skipping unreadable ones with a warning."""
    found = []
    for _entry_id, fields in entries:
        try:
            found.append(from_stream_entry(service, fields))
        except (KeyError, ValueError) as err:
            log.warning("skipping an unreadable fingerprint of %s: %s", service, err)
    return found


def _parse_batch(fresh: list[tuple[str, list[Any]]], scored: list[tuple[str, list[Any]]],
                 ) -> tuple[list[tuple[str, list[Fingerprint]]], list[tuple[str, list[WindowScore]]]]:  # fmt: skip
    """New fingerprint and score entries, per service, parsed (unreadable ones skipped)."""
    return ([(service, _parse_entries(service, entries)) for service, entries in fresh],
            [(service, parse_entries(entries)) for service, entries in scored])  # fmt: skip


class Session:
    """Owns the core client and the reader tasks; publishes into `state`."""

    def __init__(self, state: AppState, url: str | None, *, keys: Keys | None = None,
                 notifier: Notifier | None = None, first_run_setup: bool = True) -> None:  # fmt: skip
        self.state = state
        self.requested_url = url
        self.core = CoreClient(keys)
        self.keys: Keys = self.core.keys
        self.notifier = notifier
        self.first_run_setup = first_run_setup
        self.url = ""
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._fp_last: dict[str, bytes | str] = {}
        self._score_last: dict[str, bytes | str] = {}  # newest entry read of each service's scores stream
        self._window_s: int | None = None  # the window length the thresholds and model states were read at
        self._initial_catchup_done = False
        self.connected = asyncio.Event()
        self.caught_up = asyncio.Event()  # subscribed and the alerts log read, on this connection
        self.history_loaded = asyncio.Event()  # every known service's buffer filled from its streams
        self.alerts_received = 0
        self.on_alert_hooks: list[Callable[[Alert], None]] = []

    # --- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Resolve the URL (may start the embedded server) and start the supervisor."""
        self.state.connection.update(status="connecting", reason="")
        self.url = await self.core.open(self.requested_url)
        self.state.connection.update(url=redact(self.url))
        self._task = asyncio.ensure_future(self._supervise())

    async def close(self) -> None:
        """Stop the readers, close the core client (both Redis clients and its executors)."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            try:  # bounded: a reader stuck in a half-closed connection must not hold the app open
                await asyncio.wait_for(self._task, timeout=CLOSE_TIMEOUT_SECONDS)
            except (asyncio.CancelledError, Exception):
                pass
        await self.core.close()
        self.state.connection.update(status="disconnected")

    # --- supervisor ---------------------------------------------------------------------------
    async def _supervise(self) -> None:
        attempt = 0
        while not self._closing:
            try:
                await self.core.ping()
                facts = await self.core.prepare(self.first_run_setup)
                self.state.connection.update(
                    status="connected", reason="", attempts=0, next_retry_s=0.0,
                    server_version=facts.server_version, sketch_backend=facts.sketch_backend,
                )  # fmt: skip
                if self._window_s is None:  # before anything is read at it (a change after is followed)
                    self._window_s = await self.core.window_seconds()
                self.connected.set()
                attempt = 0
                await self._run_readers()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a reader failed: reconnect and run them again, never end silently
                if not isinstance(err, RedisError | OSError | CoreError):
                    log.exception("a Redis reader failed unexpectedly")
                self.connected.clear()
                self.caught_up.clear()
                attempt += 1
                reason = describe(err)
                fatal = any(word in reason for word in _FATAL_WORDS)
                delay = RECONNECT_CAP_SECONDS if fatal else min(
                    RECONNECT_CAP_SECONDS, RECONNECT_BASE_SECONDS * 2 ** (attempt - 1)
                )
                log.warning("Redis %s: %s (retry in %.1f s)", redact(self.url), reason, delay)
                self.state.connection.update(
                    status="failed" if fatal else "reconnecting", reason=reason, attempts=attempt,
                    next_retry_s=delay,
                )  # fmt: skip
                await asyncio.sleep(delay)

    async def _run_readers(self) -> None:
        """Run the three readers until one fails; then stop the others and re-raise (a reconnect follows)."""
        readers = (self._alerts_loop(), self._fingerprints_loop(), self._status_loop())
        tasks = [asyncio.ensure_future(c) for c in readers]
        try:
            done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            await _stopped(tasks)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    # --- alerts -------------------------------------------------------------------------------
    async def _alerts_loop(self) -> None:
        pubsub = self.core.subscribe_alerts()
        try:
            await pubsub.subscribe(self.keys.alerts_channel)
            await self._catch_up()  # after SUBSCRIBE: nothing published in between is missed
            self.caught_up.set()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                _raise_if_cancelling()
                if message is None or message.get("type") != "message":
                    continue
                try:
                    alert = Alert.from_json(message["data"])
                except (ValueError, TypeError):
                    log.warning("ignoring a message on %s that is not an alert", self.keys.alerts_channel)
                    continue
                await self.take_alerts([alert], notify=True)
        finally:
            try:  # a cancel repeated meanwhile (`_stopped`) ends the close: the task is ending anyway
                await asyncio.wait_for(pubsub.aclose(), timeout=CLOSE_TIMEOUT_SECONDS)
            except (TimeoutError, RedisError, OSError, asyncio.CancelledError):
                pass

    async def _catch_up(self) -> None:
        """Read the alerts log: the newest entries at start-up, everything since the last seen after."""
        incidents = self.state.incidents
        after = incidents.last_log_id if self._initial_catchup_done else None
        entries = await self.core.alert_log(after, CATCHUP_MAX_ALERTS)
        incidents.window_seconds = float(await self.core.window_seconds())
        alerts = []
        for entry_id, alert in entries:
            incidents.last_log_id = entry_id
            if alert is not None:
                alerts.append(alert)
        # alerts missed while reconnecting still notify; the history at start-up does not
        await self.take_alerts(alerts, notify=self._initial_catchup_done)
        self._initial_catchup_done = True

    async def take_alerts(self, alerts: list[Alert], notify: bool = True) -> None:
        """Read the incidents these alerts name, show them, and pass each new alert to the notifier."""
        incidents = self.state.incidents
        fresh = [a for a in alerts if not incidents.seen(a)]
        if not fresh:
            return
        records = await self.core.read_incidents(sorted({a.incident_id for a in fresh}))
        for alert in fresh:
            row, first = incidents.apply_alert(alert, records.get(alert.incident_id))
            if row is None:
                continue
            self.alerts_received += 1
            if notify and self.notifier is not None:
                self.notifier.on_alert(alert, row, first)
            for hook in list(self.on_alert_hooks):
                hook(alert)

    # --- fingerprints -------------------------------------------------------------------------
    async def _fingerprints_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_read = 0.0
        while True:
            pause = next_read - loop.time()
            if pause > 0:  # what arrives meanwhile is read in one go (see FINGERPRINT_READ_INTERVAL_S)
                await asyncio.sleep(pause)
            next_read = loop.time() + FINGERPRINT_READ_INTERVAL_S
            services = await self.core.services()
            self.state.set_services(services)
            for service in services:
                if service not in self._fp_last:
                    await self._load_history(service)
            self.history_loaded.set()
            if not services:
                await asyncio.sleep(FINGERPRINT_BLOCK_MS / 1000)
                continue
            streams = {self.keys.fingerprints(s): self._fp_last[s] for s in services}
            streams.update({self.keys.scores(s): self._score_last[s] for s in services})
            fresh, scored = [], []
            found = await self.core.read_streams(streams, FINGERPRINT_BLOCK_MS)
            _raise_if_cancelling()
            for stream, entries in found:
                service, kind = self._stream_of(_text(stream))
                if not entries:
                    continue
                if kind == "scores":
                    self._score_last[service] = entries[-1][0]
                    scored.append((service, entries))
                else:
                    self._fp_last[service] = entries[-1][0]
                    fresh.append((service, entries))
            if not fresh and not scored:
                continue
            # parsed in the I/O pool: at a window boundary every service's window arrives at once
            windows, scores = await self.core.run(_parse_batch, fresh, scored)
            # fingerprints first: a window's score is never written before its fingerprint, so its row
            # is in the buffer by the time the score is applied
            for service, fps in windows:
                for fp in fps:
                    self._add_fingerprint(service, fp)
            for service, stored in scores:
                self.state.live.apply_scores(service, stored)

    def _stream_of(self, stream: str) -> tuple[str, str]:
        """(service, "fingerprints" | "scores") of a stream this reader follows."""
        scores = self.keys.scores("")
        if stream.startswith(scores):
            return stream[len(scores) :], "scores"
        return stream[stream.index("{") + 1 : stream.rindex("}")], "fingerprints"

    async def reload_history(self) -> None:
        """Fill every service's ring buffer from its streams again (after a backfill wrote history)."""
        # every service the fingerprint reader follows, also those whose buffer is still empty
        for service in sorted(set(self.state.live.buffers) | set(self._fp_last)):
            self.state.live.buffer(service).clear()
            self.state.live.forget_scores(service)
            self.state.live.traffic.forget(service)
            await self._load_history(service)

    async def _load_history(self, service: str) -> None:
        """Fill the service's ring buffer from its stream and, before it, its history (a backfill sent
        after live traffic, docs/engine.md), with the scores the detector stored for those windows:
        read in chunks, parse in the I/O pool."""
        window_s = await self.core.window_seconds()
        # the scores first: one stored after this read arrives through XREAD, its window by then buffered
        score_entries = await self.core.newest_entries(self.keys.scores(service), self.state.live.capacity)
        self._score_last[service] = score_entries[0][0] if score_entries else "0-0"
        remaining = self.state.live.capacity
        chunks: list[list[Fingerprint]] = []
        newest: Any = None
        for stream in (self.keys.fingerprints(service), self.keys.history(service, window_s)):
            upper = "+"
            while remaining > 0:
                entries = await self.core.newest_entries(stream, min(HISTORY_CHUNK, remaining), upper)
                if not entries:
                    break
                if stream == self.keys.fingerprints(service):
                    newest = newest or entries[0][0]
                chunks.append(await self.core.run(_parse_entries, service, entries[::-1]))
                remaining -= len(entries)
                upper = f"({_text(entries[-1][0])}"
        self._fp_last[service] = newest or "0-0"
        fps = [fp for chunk in reversed(chunks) for fp in chunk]
        self._set_threshold(service, await self.core.model_threshold(service))
        # parsed before the windows are merged: windows and scores land with no await between them, so
        # no redraw shows a scored window as a gap (and a test waiting for the windows sees their scores)
        scores: list[WindowScore] = await self.core.run(parse_entries, score_entries[::-1])
        if fps:
            rows = np.empty((len(fps), 2 + len(fps[0].vector)))
            rows[:, 0] = [fp.start for fp in fps]
            rows[:, 1] = np.nan  # not scored, unless the detector stored a score for the window
            rows[:, 2:] = np.vstack([fp.vector for fp in fps])
            self.state.live.note_lengths(service, [(fp.start, fp.window_seconds) for fp in fps])
            # live windows may have arrived while this was read: merged in time order, not appended after
            self.state.live.buffer(service).merge(rows)
            self._note_arrival(fps[-1].start)
            for fp in fps:
                self._note_traffic(service, fp)
        self.state.live.apply_scores(service, scores)

    def _note_arrival(self, start: float) -> None:
        self.state.connection.last_fingerprint_at = max(self.state.connection.last_fingerprint_at, start)

    def _add_fingerprint(self, service: str, fp: Fingerprint) -> None:
        """A new window on the plot, without a score until the detector's stored score for it arrives."""
        self.state.live.note_lengths(service, [(fp.start, fp.window_seconds)])
        self.state.live.append(service, fp.start, fp.vector, None)
        self._note_arrival(fp.start)
        self._note_traffic(service, fp)

    def _note_traffic(self, service: str, fp: Fingerprint) -> None:
        """Whether the window had events (the Live panel says "no traffic since …" after a run without)."""
        if not fp.no_data:  # a sparse source's window between two reports: no news either way
            self.state.live.traffic.window(service, fp.start, fp.silent)

    def _set_threshold(self, service: str, threshold: float | None) -> None:
        if threshold is None:
            self.state.live.thresholds.pop(service, None)
        else:
            self.state.live.thresholds[service] = threshold

    async def refresh_model(self, service: str) -> None:
        """Read the service's active model's threshold again (after training, activation or rollback).

        The plot's scores are the detector's: windows scored before keep their scores, the new model's
        start with the first window it scores (marked on the plot as its activation)."""
        self._set_threshold(service, await self.core.model_threshold(service))

    async def read_model_states(self) -> dict[str, dict[str, Any]]:
        """Each service's model state (learning / ready / stale) and versions, into `state.training`."""
        found = await self.core.model_overview(list(self.state.services))
        self.state.training.update(services=found)
        return found

    async def follow_window_length(self, window_s: int | None = None) -> None:
        """After a change of the window length (`window_s`, else read now): each service's threshold and
        model state again — a model trained for the old length no longer scores, and its service learns
        (the app went on showing "normal", "ready v1" and that model's threshold)."""
        window_s = int(window_s if window_s is not None else await self.core.window_seconds())
        if self._window_s is not None and window_s != self._window_s:
            for service in sorted(set(self._fp_last) | set(self.state.live.thresholds)):
                await self.refresh_model(service)
            await self.read_model_states()
        self._window_s = window_s  # (after the re-reads: one that failed is tried again at the next poll)

    # --- status and self-monitoring -----------------------------------------------------------
    async def _status_loop(self) -> None:
        while True:
            used_memory = await self.core.used_memory()
            status = await self.core.status()
            detector = await self.core.detector_holder()
            self.state.live.traffic.stops = await self.core.traffic_stops()  # (read by the Live panel's clock)
            warnings = []
            window = float(status.get("window_seconds") or config.DEFAULT_WINDOW_SECONDS)
            await self.follow_window_length(int(window))
            last = self.state.connection.last_fingerprint_at  # newest window start seen
            if status.get("services") and time.time() - last > (SILENT_FINGERPRINT_WARN_WINDOWS + 1) * window:
                warnings.append(f"no fingerprints arrived in the last {SILENT_FINGERPRINT_WARN_WINDOWS} windows")
            if not detector:
                warnings.append("no detector is alive: nothing is being scored or alerted")
            self.state.connection.update(
                used_memory=used_memory, status_json=status, warnings=warnings,
                detector=detector,
            )  # fmt: skip
            if self._initial_catchup_done:  # incidents follow their records (extended without alerts)
                incidents = self.state.incidents
                incidents.window_seconds = window
                for record in await self.core.live_incidents(incidents.tracked()):
                    incidents.apply(record)
            await asyncio.sleep(STATUS_POLL_SECONDS)
