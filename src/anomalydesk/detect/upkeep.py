"""The detector's periodic chores besides scoring: migration, sealing, pruning, scheduled retraining.

Each runs from the detector's step when it is due: the incident-key migration once per process
(data written before the incident slot), `seal_all` every half window (silent windows are sealed
too), `incidents.prune` every `config.INCIDENT_PRUNE_SECONDS`, and with `retrain_every` a retraining
of each owned service that activates the new model only when it is better (`detect.training_run`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis

from anomalydesk import config
from anomalydesk.detect import incidents as incidents_mod
from anomalydesk.store.admin import migrate_incident_keys
from anomalydesk.store.keys import Keys

log = logging.getLogger(__name__)


class Upkeep:
    """When each chore last ran, and running it when due."""

    def __init__(self, r: redis.Redis, keys: Keys, *, seal: bool, retrain_every: float | None,
                 clock: Callable[[], float]):
        self.r = r
        self.keys = keys
        self.seal = seal
        self.retrain_every = retrain_every
        self._migrated = False
        self._last_seal = 0.0
        self._last_prune = 0.0
        self._last_retrain = clock()

    def migrate_once(self) -> None:
        """Move incident data written before the incident slot (once per process)."""
        if not self._migrated:
            migrate_incident_keys(self.r, keys=self.keys)
            self._migrated = True

    def seal_if_due(self, now: float, window_s: float) -> None:
        """Seal every service's closed windows, every half window (when this detector seals)."""
        if self.seal and now - self._last_seal >= window_s / 2:
            from anomalydesk.store.sealing import seal_all

            self._last_seal = now
            try:
                seal_all(self.r, keys=self.keys)
            except redis.ResponseError as err:
                log.warning("detector: sealing failed (%s); is the server set up?", err)

    def prune_if_due(self, now: float) -> None:
        """Drop resolved incidents past their keep time."""
        if now - self._last_prune >= config.INCIDENT_PRUNE_SECONDS:
            self._last_prune = now
            incidents_mod.prune(self.r, keys=self.keys)

    def retrain_if_due(self, now: float, owned: list[str]) -> None:
        """Scheduled retraining of the owned services; a failure keeps the active model."""
        if not (self.retrain_every and now - self._last_retrain >= self.retrain_every):
            return
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
