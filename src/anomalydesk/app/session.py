"""The app's connection to Redis and the loops that read it (Qt-free, asyncio on the qasync loop).

One long-lived `redis.asyncio` client per process, opened here and closed in `close()`; its retry
policy, timeouts and health checks come from `store.connection`. A supervisor keeps it connected
with capped exponential backoff and, once connected, runs three readers side by side:

* alerts: SUBSCRIBE to `Keys.alerts_channel` first, then catch up from `Keys.alerts_log` since the
  last entry seen, then read pub/sub — so an alert published while the app was away or reconnecting
  is not lost (duplicates are dropped by alert id). An alert says which incident changed: the app
  reads that incident's record from `Keys.incidents` (the detector wrote it in the same script that
  logged and published the alert) and shows the record, not a copy rebuilt from alerts;
* fingerprints: XREAD on every service's fingerprint stream and on the stream of the scores the
  detector stored for its windows (`detect.window_scores`), into the live ring buffers: the plot shows
  the scores the alerts used, and the app scores nothing itself;
* status: server facts, `status` counters, and self-monitoring warnings.

Calls into the synchronous store/detect APIs (setup, models, incidents, sketches) run in a small I/O
thread pool on a second client (`self.sync`); nothing here touches a widget.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import redis
import redis.asyncio
from redis.exceptions import RedisError

from anomalydesk import config
from anomalydesk.app import backend
from anomalydesk.app.notifier import Notifier
from anomalydesk.app.settings import (
    CATCHUP_MAX_ALERTS,
    FINGERPRINT_BLOCK_MS,
    RECONNECT_BASE_SECONDS,
    RECONNECT_CAP_SECONDS,
    SILENT_FINGERPRINT_WARN_WINDOWS,
    STATUS_POLL_SECONDS,
)
from anomalydesk.app.state import AppState
from anomalydesk.detect.incident_model import Alert, Incident
from anomalydesk.detect.window_scores import WindowScore, parse_entries
from anomalydesk.fingerprint import Fingerprint, from_stream_entry
from anomalydesk.store.keys import Keys

log = logging.getLogger(__name__)
T = TypeVar("T")
_FATAL_WORDS = ("authentication", "WRONGPASS", "NOAUTH", "too old", "NOPERM")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


CLOSE_TIMEOUT_SECONDS = 3.0
INCIDENT_READ_CHUNK = 500  # incident ids per HMGET when alerts name many (the catch-up at start-up)
HISTORY_CHUNK = 500  # stream entries per read when filling the live buffers (keeps each parse short)


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
    """Owns the async client and the reader tasks; publishes into `state`; exposes actions."""

    def __init__(self, state: AppState, url: str | None, *, keys: Keys | None = None,
                 notifier: Notifier | None = None, first_run_setup: bool = True) -> None:  # fmt: skip
        self.state = state
        self.requested_url = url
        self.keys = keys or Keys(backend.prefix())
        self.notifier = notifier
        self.first_run_setup = first_run_setup
        self.url = ""
        self.client: redis.asyncio.Redis | None = None
        self.sync: redis.Redis | None = None
        self.io = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="ad-io")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._fp_last: dict[str, bytes | str] = {}
        self._score_last: dict[str, bytes | str] = {}  # newest entry read of each service's scores stream
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
        self.url = await self.call(backend.resolve_url, self.requested_url)
        self.state.connection.update(url=backend.redact(self.url))
        # both may probe whether the server is a cluster (a blocking round trip): off the GUI thread
        self.client = await self.call(backend.connect_async, self.url)
        self.sync = await self.call(backend.connect_sync, self.url)
        self._task = asyncio.ensure_future(self._supervise())

    async def close(self) -> None:
        """Stop the readers, close both clients and the thread pool."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            try:  # bounded: a reader stuck in a half-closed connection must not hold the app open
                await asyncio.wait_for(self._task, timeout=CLOSE_TIMEOUT_SECONDS)
            except (asyncio.CancelledError, Exception):
                pass
        if self.client is not None:
            try:
                await asyncio.wait_for(self.client.aclose(), timeout=CLOSE_TIMEOUT_SECONDS)
            except (TimeoutError, RedisError, OSError) as err:
                log.warning("closing the Redis client: %s", backend.describe(err) if str(err) else "timed out")
        self.io.shutdown(wait=True, cancel_futures=True)
        if self.sync is not None:
            self.sync.close()
        self.state.connection.update(status="disconnected")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking store/detect call in the I/O pool."""
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    # --- supervisor ---------------------------------------------------------------------------
    async def _supervise(self) -> None:
        attempt = 0
        while not self._closing:
            try:
                assert self.client is not None and self.sync is not None
                await self.client.ping()
                facts = await self.call(backend.prepare, self.sync, self.keys, self.first_run_setup)
                self.state.connection.update(
                    status="connected", reason="", attempts=0, next_retry_s=0.0,
                    server_version=facts["server_version"], sketch_backend=facts["sketch_backend"],
                )  # fmt: skip
                self.connected.set()
                attempt = 0
                await self._run_readers()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a reader failed: reconnect and run them again, never end silently
                if not isinstance(err, RedisError | OSError | backend.BackendError):
                    log.exception("a Redis reader failed unexpectedly")
                self.connected.clear()
                self.caught_up.clear()
                attempt += 1
                reason = backend.describe(err)
                fatal = any(word in reason for word in _FATAL_WORDS)
                delay = RECONNECT_CAP_SECONDS if fatal else min(
                    RECONNECT_CAP_SECONDS, RECONNECT_BASE_SECONDS * 2 ** (attempt - 1)
                )
                log.warning("Redis %s: %s (retry in %.1f s)", backend.redact(self.url), reason, delay)
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
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    # --- alerts -------------------------------------------------------------------------------
    async def _alerts_loop(self) -> None:
        assert self.client is not None
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(self.keys.alerts_channel)
            await self._catch_up()  # after SUBSCRIBE: nothing published in between is missed
            self.caught_up.set()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # redis-py's read timeout can swallow a cancel
                    raise asyncio.CancelledError
                if message is None or message.get("type") != "message":
                    continue
                try:
                    alert = Alert.from_json(message["data"])
                except (ValueError, TypeError):
                    log.warning("ignoring a message on %s that is not an alert", self.keys.alerts_channel)
                    continue
                await self.take_alerts([alert], notify=True)
        finally:
            try:
                await asyncio.wait_for(pubsub.aclose(), timeout=CLOSE_TIMEOUT_SECONDS)
            except (TimeoutError, RedisError, OSError):
                pass

    async def _catch_up(self) -> None:
        """Read the alerts log: the newest entries at start-up, everything since the last seen after."""
        assert self.client is not None
        incidents = self.state.incidents
        if not self._initial_catchup_done:
            entries = list(reversed(await self.client.xrevrange(self.keys.alerts_log, count=CATCHUP_MAX_ALERTS)))
        else:
            entries = await self.client.xrange(
                self.keys.alerts_log, min=f"({incidents.last_log_id}", count=CATCHUP_MAX_ALERTS
            )
        raw_window = await self.client.hget(self.keys.config, "window_seconds")
        incidents.window_seconds = float(raw_window) if raw_window else float(config.DEFAULT_WINDOW_SECONDS)
        alerts = []
        for entry_id, fields in entries:
            incidents.last_log_id = _text(entry_id)
            alert = Alert.from_entry(fields)
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
        records = await self._read_incidents(sorted({a.incident_id for a in fresh}))
        for alert in fresh:
            row, first = incidents.apply_alert(alert, records.get(alert.incident_id))
            if row is None:
                continue
            self.alerts_received += 1
            if notify and self.notifier is not None:
                self.notifier.on_alert(alert, row, first)
            for hook in list(self.on_alert_hooks):
                hook(alert)

    async def _read_incidents(self, ids: list[str]) -> dict[str, Incident]:
        """The stored records of these incident ids (ids with no readable record are left out)."""
        assert self.client is not None
        found: dict[str, Incident] = {}
        for at in range(0, len(ids), INCIDENT_READ_CHUNK):
            chunk = ids[at : at + INCIDENT_READ_CHUNK]
            for incident_id, raw in zip(chunk, await self.client.hmget(self.keys.incidents, chunk), strict=True):
                if raw is None:
                    continue
                try:
                    found[incident_id] = Incident.from_json(raw)
                except (ValueError, TypeError) as err:
                    log.warning("skipping the unreadable incident record %s: %s", incident_id, err)
        return found

    # --- fingerprints -------------------------------------------------------------------------
    async def _fingerprints_loop(self) -> None:
        assert self.client is not None
        while True:
            services = sorted(_text(s) for s in await self.client.smembers(self.keys.services))
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
            for stream, entries in await self._read_streams(streams):
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
            windows, scores = await self.call(_parse_batch, fresh, scored)
            # fingerprints first: a window's score is never written before its fingerprint, so its row
            # is in the buffer by the time the score is applied
            for service, fps in windows:
                for fp in fps:
                    self._add_fingerprint(service, fp)
            for service, stored in scores:
                self.state.live.apply_scores(service, stored)

    async def _read_streams(self, streams: dict[str, Any]) -> list[Any]:
        """New entries of every stream: one blocking XREAD, or on a cluster (streams in different slots,
        which one XREAD cannot span) a non-blocking read per stream in one pipeline and a pause when empty."""
        assert self.client is not None
        if not isinstance(self.client, redis.asyncio.RedisCluster):
            return await self.client.xread(streams, count=1000, block=FINGERPRINT_BLOCK_MS) or []
        pipe = self.client.pipeline(transaction=False)
        for stream, last in streams.items():
            pipe.xread({stream: last}, count=1000)
        found = [pair for reply in await pipe.execute() for pair in reply or []]
        if not any(entries for _stream, entries in found):
            await asyncio.sleep(FINGERPRINT_BLOCK_MS / 1000)
        return found

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
            await self._load_history(service)

    async def _load_history(self, service: str) -> None:
        """Fill the service's ring buffer from its stream and, before it, its history (a backfill sent
        after live traffic, docs/engine.md), with the scores the detector stored for those windows:
        read in chunks, parse in the I/O pool."""
        assert self.client is not None
        raw_window = await self.client.hget(self.keys.config, "window_seconds")
        window_s = int(raw_window) if raw_window else config.DEFAULT_WINDOW_SECONDS
        # the scores first: one stored after this read arrives through XREAD, its window by then buffered
        score_entries = await self.client.xrevrange(self.keys.scores(service), count=self.state.live.capacity)
        self._score_last[service] = score_entries[0][0] if score_entries else "0-0"
        remaining = self.state.live.capacity
        chunks: list[list[Fingerprint]] = []
        newest: Any = None
        for stream in (self.keys.fingerprints(service), self.keys.history(service, window_s)):
            upper = "+"
            while remaining > 0:
                entries = await self.client.xrevrange(stream, max=upper, count=min(HISTORY_CHUNK, remaining))
                if not entries:
                    break
                if stream == self.keys.fingerprints(service):
                    newest = newest or entries[0][0]
                chunks.append(await self.call(_parse_entries, service, entries[::-1]))
                remaining -= len(entries)
                upper = f"({_text(entries[-1][0])}"
        self._fp_last[service] = newest or "0-0"
        fps = [fp for chunk in reversed(chunks) for fp in chunk]
        self._set_threshold(service, await self.call(backend.load_model, self.sync, self.keys, service))
        if fps:
            rows = np.empty((len(fps), 2 + len(fps[0].vector)))
            rows[:, 0] = [fp.start for fp in fps]
            rows[:, 1] = np.nan  # not scored, unless the detector stored a score for the window
            rows[:, 2:] = np.vstack([fp.vector for fp in fps])
            # live windows may have arrived while this was read: merged in time order, not appended after
            self.state.live.buffer(service).merge(rows)
            self._note_arrival(fps[-1].start)
        scores: list[WindowScore] = await self.call(parse_entries, score_entries[::-1])
        self.state.live.apply_scores(service, scores)

    def _note_arrival(self, start: float) -> None:
        self.state.connection.last_fingerprint_at = max(self.state.connection.last_fingerprint_at, start)

    def _add_fingerprint(self, service: str, fp: Fingerprint) -> None:
        """A new window on the plot, without a score until the detector's stored score for it arrives."""
        self.state.live.append(service, fp.start, fp.vector, None)
        self._note_arrival(fp.start)

    def _set_threshold(self, service: str, model: Any) -> None:
        if model is None:
            self.state.live.thresholds.pop(service, None)
        else:
            self.state.live.thresholds[service] = float(model.threshold)

    async def refresh_model(self, service: str) -> None:
        """Read the service's active model's threshold again (after training, activation or rollback).

        The plot's scores are the detector's: windows scored before keep their scores, the new model's
        start with the first window it scores (marked on the plot as its activation)."""
        self._set_threshold(service, await self.call(backend.load_model, self.sync, self.keys, service))

    # --- status and self-monitoring -----------------------------------------------------------
    async def _status_loop(self) -> None:
        assert self.client is not None
        while True:
            info = await self.client.info("memory")
            status = await self.call(backend.status, self.sync, self.keys)
            detector = await self.call(backend.detector_holder, self.sync, self.keys)
            warnings = []
            window = float(status.get("window_seconds") or 5)
            last = self.state.connection.last_fingerprint_at  # newest window start seen
            if status.get("services") and time.time() - last > (SILENT_FINGERPRINT_WARN_WINDOWS + 1) * window:
                warnings.append(f"no fingerprints arrived in the last {SILENT_FINGERPRINT_WARN_WINDOWS} windows")
            if not detector:
                warnings.append("no detector is alive: nothing is being scored or alerted")
            self.state.connection.update(
                used_memory=int(info.get("used_memory", 0)), status_json=status, warnings=warnings,
                detector=detector,
            )  # fmt: skip
            if self._initial_catchup_done:  # incidents follow their records (extended without alerts)
                incidents = self.state.incidents
                incidents.window_seconds = window
                for record in await self.call(backend.live_incident_records, self.sync, self.keys,
                                              incidents.tracked()):  # fmt: skip
                    incidents.apply(record)
            await asyncio.sleep(STATUS_POLL_SECONDS)
