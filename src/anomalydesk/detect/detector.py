"""The detector: reads fingerprints through consumer groups, scores them, keeps incidents and alerts.

Work sharing: every fingerprint stream has the consumer group `config.DETECTOR_GROUP`; a detector
scores a service only while it holds that service's owner lease (`Keys.detector_owner`, SET NX PX,
renewed every step), so one service's windows are handled in order by one detector at a time while
several detectors split the services between them. A detector that takes a service over first
claims (XAUTOCLAIM) whatever the previous owner left pending, then reads new entries.

Exactly-once effect: a window's incident changes, alerts, score (`detect.window_scores`, what the
app plots) and the service's detector state are written by one Lua script over the incident slot,
then the entry is XACKed (`incident_flow.Committer`);
a window delivered again after a crash finds its state already written and is only acknowledged, so
no fingerprint is lost and no alert is written twice.

Redis Cluster: the fingerprint streams are read one per service (a read across slots is refused),
leases are renewed one call per service, and the commit touches one slot (the alert log's) plus the
service's stream for the XACK; see docs/cluster.md.

The global lease `Keys.detector_lease` says "a detector runs": standalone detectors (`anomalydesk
detect`) set it every step; the desktop app's in-process detector (`respect_lease=True`) runs only
while nobody else holds it. The detector also drives the periodic `seal_all` and, with
`retrain_every`, scheduled retraining (see `detect.training_run`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from anomalydesk import config
from anomalydesk.detect import drift, system_gap
from anomalydesk.detect import incidents as incidents_mod
from anomalydesk.detect.incident_flow import CONFLICT, Committer, Confirmation, Verdict, advance, finite
from anomalydesk.detect.incident_model import Alert, Incident, Silence
from anomalydesk.fingerprint import SCHEMA_VERSION, Fingerprint, from_stream_entry
from anomalydesk.store import models as registry
from anomalydesk.store.admin import migrate_incident_keys
from anomalydesk.store.cluster import is_cluster
from anomalydesk.store.keys import Keys

log = logging.getLogger(__name__)

# a server down, or a cluster in the middle of a failover (slots without a primary for a moment)
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError,
               redis.exceptions.TryAgainError, redis.exceptions.SlotNotCoveredError)
Scorer = Callable[[Any, list[Fingerprint], Fingerprint], Verdict]
Decoder = Callable[[bytes], Any]
_RELEASE_LUA = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_RENEW_LUA = """
local v = redis.call('GET', KEYS[1])
if v == false then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""


@dataclass
class StepResult:
    """What one step did."""

    active: bool = True  # False: another detector holds the lease (app detector waits)
    processed: int = 0  # fingerprints handled (scored or not) and acknowledged
    alerts: list[Alert] = field(default_factory=list)
    services: list[str] = field(default_factory=list)  # services this detector owns now


@dataclass
class _Service:
    model_version: int | None = None
    model: Any = None
    stale: bool = False
    model_window: int | None = None  # the window length the model was trained at (None: not recorded)
    history: deque[Fingerprint] = field(default_factory=lambda: deque(maxlen=config.DETECTOR_HISTORY_WINDOWS))
    history_loaded: bool = False
    needs_recovery: bool = True
    baseline: Any = None  # format-2 models: the service's baseline (detect/drift.py), None until read


def default_consumer_name() -> str:
    """Unique per process: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Detector:
    """Scores fingerprints of every live service and turns anomalies into incidents and alerts."""

    def __init__(
        self,
        r: redis.Redis,
        *,
        keys: Keys | None = None,
        name: str | None = None,
        respect_lease: bool = False,
        scorer: Scorer | None = None,
        decode: Decoder | None = None,
        confirmation: Confirmation | None = None,
        seal: bool = True,
        retrain_every: float | None = None,
        block_ms: int = config.DETECTOR_BLOCK_MS,
        lease_ms: int = config.DETECTOR_LEASE_MS,
        service_lease_ms: int = config.DETECTOR_SERVICE_LEASE_MS,
        clock: Callable[[], float] = time.time,
        on_alert: Callable[[Alert], None] | None = None,
    ):
        if scorer is None or decode is None:
            from anomalydesk.detect import service_state

            scorer = scorer or service_state.score_window
            decode = decode or service_state.decode_model
        self.r = r
        self.keys = keys or Keys(config.key_prefix())
        self.name = name or default_consumer_name()
        self.respect_lease = respect_lease
        self.scorer = scorer
        self.decode = decode
        self.confirmation = confirmation or Confirmation()
        self.seal = seal
        self.retrain_every = retrain_every
        self.block_ms = block_ms
        self.lease_ms = lease_ms
        self.service_lease_ms = service_lease_ms
        self.clock = clock
        self.on_alert = on_alert
        self._committer = Committer(r, self.keys)
        self._cluster = is_cluster(r)
        self._migrated = False
        self._renew = r.register_script(_RENEW_LUA)
        self._release = r.register_script(_RELEASE_LUA)
        self._services: dict[str, _Service] = {}
        self._groups: set[str] = set()
        self._last_seal = 0.0
        self._last_refresh = 0.0
        self._last_prune = 0.0
        self._owned: list[str] | None = None
        self._last_retrain = clock()
        self._window_seconds: float | None = None
        self._live: list[str] = []

    # --- leases ---------------------------------------------------------------------------------
    def _hold_global_lease(self) -> bool:
        if self.respect_lease:
            return bool(self._renew(keys=[self.keys.detector_lease], args=[self.name, self.lease_ms]))
        self.r.set(self.keys.detector_lease, self.name, px=self.lease_ms)
        return True

    def _own(self, services: list[str]) -> list[str]:
        args = [self.name, self.service_lease_ms]
        if self._cluster:  # redis-py refuses scripts in a cluster pipeline: one call per service
            held = [self._renew(keys=[self.keys.detector_owner(s)], args=args) for s in services]
        else:
            pipe = self.r.pipeline(transaction=False)
            for service in services:
                self._renew(keys=[self.keys.detector_owner(service)], args=args, client=pipe)
            held = pipe.execute()
        owned = [s for s, ok in zip(services, held, strict=True) if ok]
        for service in list(self._services):
            if service not in owned:
                del self._services[service]  # lost (or gave up) the lease: forget cached state
        return owned

    def release(self) -> None:
        """Give up every lease this detector holds (another detector takes over at once)."""
        for service in list(self._services):
            self._release(keys=[self.keys.detector_owner(service)], args=[self.name])
        self._services.clear()
        self._owned = None
        self._release(keys=[self.keys.detector_lease], args=[self.name])

    # --- services -------------------------------------------------------------------------------
    def live_services(self) -> list[str]:
        """Known services minus retired ones."""
        return live_services(self.r, keys=self.keys)

    def _window_s(self) -> float:
        if self._window_seconds is None:
            raw, retention = self.r.hmget(self.keys.config, ["window_seconds", "retention"])
            self._window_seconds = float(raw) if raw else float(config.DEFAULT_WINDOW_SECONDS)
            # the scores stream keeps as many windows as the fingerprint streams
            self._committer.score_maxlen = int(retention) if retention else config.DEFAULT_RETENTION_WINDOWS
        return self._window_seconds

    def _ensure_group(self, service: str) -> None:
        if service in self._groups:
            return
        stream = self.keys.fingerprints(service)
        back = self.r.xrevrange(stream, count=config.DETECTOR_CATCHUP_WINDOWS)
        start = _text(back[-1][0]) if back else "0"
        start = _before(start)
        try:
            self.r.xgroup_create(stream, config.DETECTOR_GROUP, id=start, mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise
        self._groups.add(service)

    def _refresh_models(self, owned: list[str]) -> None:
        active = registry.active_versions(self.r, keys=self.keys)
        for service in owned:
            state = self._services.setdefault(service, _Service())
            version = active.get(service)
            if version == state.model_version:
                continue
            state.model_version, state.model, state.stale = version, None, False
            state.baseline = None
            if version is None:
                continue
            try:
                meta, model = registry.load(self.r, service, self.decode, version, keys=self.keys)
            except (registry.ModelLoadError, registry.ModelNotFound) as err:
                log.error("%s: %s; the service is not scored until a good model is active", service, err)
                continue
            state.stale = meta.schema != SCHEMA_VERSION
            state.model = None if state.stale else model
            state.model_window = meta.window_seconds
            if state.stale:
                log.warning("%s: model v%s is of fingerprint schema %s (now %s): retrain", service,
                            version, meta.schema, SCHEMA_VERSION)  # fmt: skip

    # --- the loop -------------------------------------------------------------------------------
    def step(self) -> StepResult:
        """One round: leases, sealing, recovery of pending entries, one blocking read, handling."""
        now = self.clock()
        refresh = min(config.DETECTOR_REFRESH_SECONDS, self.service_lease_ms / 3000, self.lease_ms / 3000)
        stale = self._owned is None or now - self._last_refresh >= refresh
        if stale and not self._refresh(now):
            return StepResult(active=False)
        owned = self._owned or []
        result = StepResult(services=list(owned))
        recovering = [s for s in owned if self._services[s].needs_recovery]
        if recovering:
            silences = self._read_silences()
            for service in recovering:
                self._recover(service, silences, result)
        if owned:
            by_stream = {self.keys.fingerprints(s): s for s in owned}
            read = [(stream, entries) for stream, entries in self._read(list(by_stream), idle=result.processed == 0)
                    if entries]  # fmt: skip
            if read:
                silences = self._read_silences()
                for stream, entries in read:
                    self._handle_all(by_stream[_text(stream)], entries, silences, result)
        if self.retrain_every and now - self._last_retrain >= self.retrain_every:
            self._last_retrain = now
            from anomalydesk.detect import training_run

            for service in owned:
                try:
                    outcome = training_run.retrain_if_better(self.r, service, keys=self.keys)
                except Exception:
                    log.exception("%s: scheduled retraining failed; the active model stays", service)
                    continue
                log.info("%s: scheduled retraining: %s", service,
                         outcome.skipped or f"model v{outcome.version} activated")
        return result

    def _refresh(self, now: float) -> bool:
        """Leases, sealing, services, groups and models (at most every refresh interval)."""
        self._last_refresh = now
        if not self._hold_global_lease():
            if self._services:
                self.release()
            self._owned = None
            return False
        if not self._migrated:
            migrate_incident_keys(self.r, keys=self.keys)  # data written before the incident slot
            self._migrated = True
        window_s = self._window_s()  # also reads the retention the scores stream is trimmed to
        if self.seal and now - self._last_seal >= window_s / 2:
            from anomalydesk.store.sink import seal_all

            self._last_seal = now
            try:
                seal_all(self.r, keys=self.keys)
            except redis.ResponseError as err:
                log.warning("detector: sealing failed (%s); is the server set up?", err)
        self._live = self.live_services()
        self._owned = self._own(self._live)
        for service in self._owned:
            self._ensure_group(service)
        self._refresh_models(self._owned)
        if now - self._last_prune >= config.INCIDENT_PRUNE_SECONDS:
            self._last_prune = now
            incidents_mod.prune(self.r, keys=self.keys)
        return True

    def _read_silences(self) -> list[Silence]:
        """The silences as they are now: read before every batch of windows, so that a silence an
        operator adds covers every window handled after it, with no refresh delay."""
        return incidents_mod.list_silences(self.r, keys=self.keys)

    def _read(self, streams: list[str], *, idle: bool) -> list:
        """New entries of the owned streams: one blocking XREADGROUP, or on a cluster one per stream.

        A cluster refuses a read across slots, so there each stream is read without blocking (one
        pipeline, grouped per node) and an empty round waits `block_ms` as the blocking read would.
        """
        if not self._cluster:
            return self.r.xreadgroup(config.DETECTOR_GROUP, self.name, dict.fromkeys(streams, ">"),
                                     count=config.DETECTOR_READ_COUNT, block=self.block_ms) or []  # fmt: skip
        pipe = self.r.pipeline(transaction=False)
        for stream in streams:
            pipe.xreadgroup(config.DETECTOR_GROUP, self.name, {stream: ">"}, count=config.DETECTOR_READ_COUNT)
        replies = [reply for found in pipe.execute() for reply in found or []]
        if idle and not any(entries for _, entries in replies):
            time.sleep(self.block_ms / 1000)
        return replies

    def _recover(self, service: str, silences: list[Silence], result: StepResult) -> None:
        stream, cursor = self.keys.fingerprints(service), "0-0"
        while True:
            reply = self.r.xautoclaim(stream, config.DETECTOR_GROUP, self.name, min_idle_time=0,
                                      start_id=cursor, count=config.DETECTOR_READ_COUNT)  # fmt: skip
            cursor, entries = _text(reply[0]), reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:
                self.r.xack(stream, config.DETECTOR_GROUP, *deleted)
            self._handle_all(service, [e for e in entries if e and e[1]], silences, result)
            if cursor == "0-0":
                break
        self._services[service].needs_recovery = False

    def _handle_all(self, service: str, entries: list, silences: list[Silence], result: StepResult) -> None:
        for entry_id, fields in entries:
            try:
                self._handle(service, entry_id, fields, silences, result)
            except redis.ConnectionError:
                # Redis went away mid-window: the entry stays pending and is handled again, before
                # any newer one, once the connection is back (else a later window's state would
                # mark it done unhandled)
                self._retry_pending(service)
                raise
            except Exception:
                # left pending: recovered (and retried) on the next step, never silently dropped
                log.exception("%s: handling fingerprint %s failed", service, _text(entry_id))
                self._retry_pending(service)
                return

    def _retry_pending(self, service: str) -> None:
        state = self._services[service]
        state.needs_recovery = True
        state.baseline = None  # read again from the stored state
        state.history.clear()  # reloaded from the stream before the retry
        state.history_loaded = False

    def _baseline(self, service: str, svc: _Service) -> Any:
        """The service's baseline for its model: in memory, else from its detector state, else the model's."""
        if svc.baseline is None:
            stored = json.loads(self.r.hget(self.keys.detector_states, service) or "{}").get(drift.STATE_FIELD)
            svc.baseline = drift.restore(svc.model, svc.model_version, stored)
        return svc.baseline

    def _history(self, service: str, entry_id: bytes | str) -> deque[Fingerprint]:
        state = self._services[service]
        if not state.history_loaded:
            back = self.r.xrevrange(self.keys.fingerprints(service), max=f"({_text(entry_id)}",
                                    count=config.DETECTOR_HISTORY_WINDOWS - 1)  # fmt: skip
            gaps = set(json.loads(self.r.hget(self.keys.detector_states, service) or "{}").get("gap_windows", []))
            for _, fields in reversed(back):
                fp = from_stream_entry(service, fields)
                if not (fp.silent and fp.window in gaps):  # a system gap is no scoring context
                    state.history.append(fp)
            state.history_loaded = True
        return state.history

    def _handle(self, service: str, entry_id: bytes | str, fields: dict, silences: list[Silence],
                result: StepResult) -> None:  # fmt: skip
        svc = self._services[service]
        fp = from_stream_entry(service, fields)
        gap = system_gap.is_system_silent(self.r, self.keys, fp, self._live, _text(entry_id))
        history = self._history(service, entry_id)
        verdict = None
        baseline = None
        # a model of another window length does not score (the service learns again after a change)
        same_length = svc.model_window is None or fp.window_seconds in (None, svc.model_window)
        if svc.model is not None and not fp.no_data and same_length and not gap:
            context = [h for h in history if h.window_seconds == fp.window_seconds]
            if drift.tracked(svc.model):
                baseline = self._baseline(service, svc)
                verdict = self.scorer(svc.model, context, fp, level=baseline.level())
                baseline = drift.advance(svc.model, baseline, fp)
            else:
                verdict = self.scorer(svc.model, context, fp)
            if not finite(verdict.score):
                log.error("%s: window %s scored %r; not alerting on it", service, fp.window, verdict.score)
                verdict, baseline = None, None
        if not fp.no_data and not gap:
            history.append(fp)
        ranges = _json_field(fields, "kpi_ranges")
        muted = incidents_mod.silenced(silences, service, fp.start)
        muted_system = incidents_mod.silenced(silences, system_gap.SYSTEM, fp.start)
        for _ in range(10):
            state = json.loads(self.r.hget(self.keys.detector_states, service) or "{}")
            incident = _load(self.r, self.keys, state.get("incident"))
            rule_incident = _load(self.r, self.keys, state.get("rule_incident"))
            shift_incident = _load(self.r, self.keys, state.get("shift_incident"))
            moved = baseline
            if moved is not None and shift_incident is not None and shift_incident.accepted is not None:
                # the operator took the new level as normal: re-baseline the features that moved there
                moved = moved.accept(*svc.model.shift_limits)
            shift = drift.shift_of(svc.model, moved, fp) if moved is not None else None
            plan = advance(state, fp, verdict, incident=incident, rule_incident=rule_incident,
                           model_version=svc.model_version, silenced=muted, now=self.clock(),
                           window_seconds=fp.window_seconds or self._window_s(), kpi_ranges=ranges,
                           confirmation=self.confirmation, gap=gap, shift=shift,
                           shift_incident=shift_incident)  # fmt: skip
            if moved is not None:
                plan.state[drift.STATE_FIELD] = drift.stored(moved, svc.model_version)
            system = system_gap.system_incident(self.r, self.keys, fp.window, gap) if gap or not fp.silent else None
            if gap or system is not None:
                writes, alerts = system_gap.gap_plan(system, fp, gap, len(self._live), muted_system)
                plan.incidents += writes
                plan.alerts += alerts
            if gap:
                recent = [*state.get("gap_windows", []), fp.window]
                plan.state["gap_windows"] = recent[-config.DETECTOR_HISTORY_WINDOWS:]
            outcome = self._committer.commit(service, entry_id, fp.window, plan)
            if outcome != CONFLICT:
                break
        else:
            raise RuntimeError(f"{service}: incident kept changing while window {fp.window} was handled")
        result.processed += 1
        # committed: the baseline moved on; handled before: the stored one is the truth (read it again)
        svc.baseline = moved if outcome == 1 else None
        if outcome == 1:
            result.alerts.extend(plan.alerts)
            if self.on_alert:
                for alert in plan.alerts:
                    self.on_alert(alert)

    def run(self, stop_event: threading.Event) -> None:
        """Step until `stop_event` is set (for a thread); releases its leases on the way out."""
        try:
            while not stop_event.is_set():
                try:
                    result = self.step()
                except UNAVAILABLE as err:
                    log.warning("detector: Redis unavailable (%s); retrying", err)
                    stop_event.wait(1.0)
                    continue
                if not result.active or not result.services:
                    stop_event.wait(self.block_ms / 1000)
        finally:
            try:
                self.release()
            except redis.RedisError:
                pass


def live_services(r: redis.Redis, *, keys: Keys | None = None) -> list[str]:
    """Known services minus retired ones, sorted."""
    keys = keys or Keys(config.key_prefix())
    pipe = r.pipeline(transaction=False)
    pipe.smembers(keys.services)
    pipe.smembers(keys.retired)
    known, retired = pipe.execute()
    return sorted(_text(s) for s in known - retired)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _before(entry_id: str) -> str:
    """The id just before `entry_id` (so a group created there delivers `entry_id` itself)."""
    ms, _, seq = entry_id.partition("-")
    if seq and int(seq) > 0:
        return f"{ms}-{int(seq) - 1}"
    return f"{int(ms) - 1}-18446744073709551615" if int(ms) > 0 else "0"


def _json_field(fields: dict, name: str) -> Any:
    raw = fields.get(name.encode(), fields.get(name)) if isinstance(fields, dict) else None
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _load(r: redis.Redis, keys: Keys, incident_id: str | None) -> Incident | None:
    if not incident_id:
        return None
    raw = r.hget(keys.incidents, incident_id)
    return Incident.from_json(raw) if raw else None
