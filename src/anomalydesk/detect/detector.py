"""The detector: reads fingerprints through consumer groups, scores them, keeps incidents and alerts.

Work sharing: every fingerprint stream has the consumer group `config.DETECTOR_GROUP`; a detector
scores a service only while it holds that service's owner lease (`Keys.detector_owner`, SET NX PX,
renewed every step), so one service's windows are handled in order by one detector at a time while
several detectors split the services between them. A detector that takes a service over first
claims (XAUTOCLAIM) whatever the previous owner left pending, then reads new entries.

Exactly-once effect: a window's incident changes, alerts, score (`detect.window_scores`, what the
app plots) and the service's detector state are written by one Lua script over the incident slot,
then the entry is XACKed (`incident_commit.Committer`);
a window delivered again after a crash finds its state already written and is only acknowledged, so
no fingerprint is lost and no alert is written twice.

Redis Cluster: the fingerprint streams are read one per service (a read across slots is refused),
leases are renewed one call per service, and the commit touches one slot (the alert log's) plus the
service's stream for the XACK; see docs/cluster.md.

The global lease `Keys.detector_lease` says "a detector runs": standalone detectors (`anomalydesk
detect`) set it every step; the desktop app's in-process detector (`respect_lease=True`) runs only
while nobody else holds it. The detector also drives the periodic `seal_all` and, with
`retrain_every`, scheduled retraining (see `detect.training_run`).

This module is the loop; its jobs live beside it: `detect.leases` (global and owner leases),
`detect.stream_reader` (consumer groups, reads, claims), `detect.owned_services` (models, history
and baseline per owned service), `detect.window_handler` (score, plan, commit one window) and
`detect.upkeep` (migration, sealing, pruning, scheduled retraining).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from anomalydesk import config
from anomalydesk.detect import incidents as incidents_mod
from anomalydesk.detect.incident_commit import Committer
from anomalydesk.detect.incident_flow import Confirmation
from anomalydesk.detect.incident_model import Alert, Silence, score_text
from anomalydesk.detect.leases import Leases
from anomalydesk.detect.owned_services import Decoder, OwnedService, refresh_models
from anomalydesk.detect.stream_reader import StreamReader, live_services, text
from anomalydesk.detect.upkeep import Upkeep
from anomalydesk.detect.window_handler import Scorer, WindowHandler
from anomalydesk.store.cluster import is_cluster
from anomalydesk.store.keys import Keys

__all__ = ["UNAVAILABLE", "Decoder", "Detector", "Scorer", "StepResult", "default_consumer_name", "live_services"]

log = logging.getLogger(__name__)

# a server down, or a cluster in the middle of a failover (slots without a primary for a moment)
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError,
               redis.exceptions.TryAgainError, redis.exceptions.SlotNotCoveredError)


@dataclass
class StepResult:
    """What one step did."""

    active: bool = True  # False: another detector holds the lease (app detector waits)
    processed: int = 0  # fingerprints handled (scored or not) and acknowledged
    alerts: list[Alert] = field(default_factory=list)
    services: list[str] = field(default_factory=list)  # services this detector owns now


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
        self.block_ms = block_ms
        self.lease_ms = lease_ms
        self.service_lease_ms = service_lease_ms
        self.clock = clock
        self.on_alert = on_alert
        self._committer = Committer(r, self.keys)
        cluster = is_cluster(r)
        self._leases = Leases(r, self.keys, self.name, respect_lease=respect_lease, lease_ms=lease_ms,
                              service_lease_ms=service_lease_ms, cluster=cluster)  # fmt: skip
        self._reader = StreamReader(r, self.keys, self.name, block_ms=block_ms, cluster=cluster)
        self._handler = WindowHandler(r, self.keys, self._committer, scorer=scorer,
                                      confirmation=self.confirmation, clock=clock)  # fmt: skip
        self._upkeep = Upkeep(r, self.keys, seal=seal, retrain_every=retrain_every, clock=clock)
        self._services: dict[str, OwnedService] = {}
        self._last_refresh = 0.0
        self._owned: list[str] | None = None
        self._window_seconds: float | None = None
        self._live: list[str] = []

    def release(self) -> None:
        """Give up every lease this detector holds (another detector takes over at once)."""
        self._leases.release(list(self._services))
        self._services.clear()
        self._owned = None

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
            read = [(stream, entries) for stream, entries in self._reader.read(list(by_stream),
                                                                               idle=result.processed == 0)
                    if entries]  # fmt: skip
            if read:
                silences = self._read_silences()
                for stream, entries in read:
                    self._handle_all(by_stream[text(stream)], entries, silences, result)
        self._upkeep.retrain_if_due(now, owned)
        return result

    def _refresh(self, now: float) -> bool:
        """Leases, sealing, services, groups and models (at most every refresh interval)."""
        self._last_refresh = now
        if not self._leases.hold_global():
            if self._services:
                self.release()
            self._owned = None
            return False
        self._upkeep.migrate_once()
        self._window_seconds = None  # read again: `setup --window … --force` may have changed it
        window_s = self._window_s()  # also reads the retention the scores stream is trimmed to
        self._upkeep.seal_if_due(now, window_s)
        self._live = self.live_services()
        self._owned = self._leases.own(self._live)
        for service in list(self._services):
            if service not in self._owned:
                del self._services[service]  # lost (or gave up) the lease: forget cached state
        for service in self._owned:
            self._reader.ensure_group(service)
        refresh_models(self.r, self.keys, self.decode, self._services, self._owned)
        self._upkeep.prune_if_due(now)
        return True

    def _read_silences(self) -> list[Silence]:
        """The silences as they are now: read before every batch of windows, so that a silence an
        operator adds covers every window handled after it, with no refresh delay."""
        return incidents_mod.list_silences(self.r, keys=self.keys)

    def _recover(self, service: str, silences: list[Silence], result: StepResult) -> None:
        for entries in self._reader.claim_pending(service):
            self._handle_all(service, entries, silences, result)
        self._services[service].needs_recovery = False

    def _handle_all(self, service: str, entries: list, silences: list[Silence], result: StepResult) -> None:
        for entry_id, fields in entries:
            try:
                self._handle(service, entry_id, fields, silences, result)
            except redis.ConnectionError:
                # Redis went away mid-window: the entry stays pending and is handled again, before
                # any newer one, once the connection is back (else a later window's state would
                # mark it done unhandled)
                self._services[service].forget()
                raise
            except Exception:
                # left pending: recovered (and retried) on the next step, never silently dropped
                log.exception("%s: handling fingerprint %s failed", service, text(entry_id))
                self._services[service].forget()
                return

    def _handle(self, service: str, entry_id: bytes | str, fields: dict, silences: list[Silence],
                result: StepResult) -> None:  # fmt: skip
        handled = self._handler.handle(service, self._services[service], entry_id, fields, silences,
                                       self._live, self._window_s())  # fmt: skip
        result.processed += 1
        if handled.committed:
            result.alerts.extend(handled.alerts)
            for alert in handled.alerts:  # the log file (`anomalydesk diagnose`) says what went out
                log.info("%s: %s %s alert %s, score %s%s: %s", alert.service, alert.severity, alert.kind, alert.id,
                         score_text(alert.score), " (silenced)" if alert.silenced else "", alert.message)
            if self.on_alert:
                for alert in handled.alerts:
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
