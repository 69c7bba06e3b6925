"""What a detector keeps in memory for each service it owns: the active model, recent windows, the baseline.

`refresh_models` follows the registry's active versions (a model of an older fingerprint schema is
kept out of scoring until it is retrained); `history` and `baseline` are read from Redis the first
time a window needs them and after a failed window (`forget`), so a detector that takes a service
over continues where the last one stopped.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from anomalydesk import config
from anomalydesk.detect import drift
from anomalydesk.fingerprint import SCHEMA_VERSION, Fingerprint, from_stream_entry
from anomalydesk.store import models as registry
from anomalydesk.store.keys import Keys

log = logging.getLogger(__name__)
Decoder = Callable[[bytes], Any]


@dataclass
class OwnedService:
    """One owned service's detector memory."""

    model_version: int | None = None
    model: Any = None
    stale: bool = False
    model_window: int | None = None  # the window length the model was trained at (None: not recorded)
    history: deque[Fingerprint] = field(default_factory=lambda: deque(maxlen=config.DETECTOR_HISTORY_WINDOWS))
    history_loaded: bool = False
    needs_recovery: bool = True
    baseline: Any = None  # format-2 models: the service's baseline (detect/drift.py), None until read

    def forget(self) -> None:
        """After a failed window: recover pending entries, and read the baseline and history again."""
        self.needs_recovery = True
        self.baseline = None  # read again from the stored state
        self.history.clear()  # reloaded from the stream before the retry
        self.history_loaded = False


def refresh_models(r: redis.Redis, keys: Keys, decode: Decoder, services: dict[str, OwnedService],
                   owned: list[str]) -> None:
    """Load the active model of each owned service whose active version changed."""
    active = registry.active_versions(r, keys=keys)
    for service in owned:
        state = services.setdefault(service, OwnedService())
        version = active.get(service)
        if version == state.model_version:
            continue
        state.model_version, state.model, state.stale = version, None, False
        state.baseline = None
        state.history.clear()  # read again with the new model: history may have landed since (a backfill)
        state.history_loaded = False
        if version is None:
            continue
        try:
            meta, model = registry.load(r, service, decode, version, keys=keys)
        except (registry.ModelLoadError, registry.ModelNotFound) as err:
            log.error("%s: %s; the service is not scored until a good model is active", service, err)
            continue
        state.stale = meta.schema != SCHEMA_VERSION
        state.model = None if state.stale else model
        state.model_window = meta.window_seconds
        if state.stale:
            log.warning("%s: model v%s is of fingerprint schema %s (now %s): retrain", service,
                        version, meta.schema, SCHEMA_VERSION)  # fmt: skip


def baseline(r: redis.Redis, keys: Keys, service: str, svc: OwnedService) -> Any:
    """The service's baseline for its model: in memory, else from its detector state, else the model's."""
    if svc.baseline is None:
        stored = json.loads(r.hget(keys.detector_states, service) or "{}").get(drift.STATE_FIELD)
        svc.baseline = drift.restore(svc.model, svc.model_version, stored)
    return svc.baseline


def history(r: redis.Redis, keys: Keys, service: str, svc: OwnedService, entry_id: str,
            before: Fingerprint | None = None, window_s: float | None = None) -> deque[Fingerprint]:
    """The windows before `entry_id` that give scoring context (system gaps left out). When the live
    stream holds fewer than that (the first windows after a backfill: live traffic goes on after the
    history it waited for), the newest sealed history windows before them fill the context, so the
    first live windows are not scored on a context of one or two windows ("p50 latency unusually
    steady … over the last 3 windows" right after the README journey's backfill)."""
    if not svc.history_loaded:
        want = config.DETECTOR_HISTORY_WINDOWS - 1
        back = r.xrevrange(keys.fingerprints(service), max=f"({entry_id}", count=want)
        gaps = set(json.loads(r.hget(keys.detector_states, service) or "{}").get("gap_windows", []))
        live = [from_stream_entry(service, fields) for _, fields in reversed(back)]
        first = live[0] if live else before
        length = (first.window_seconds if first is not None else None) or window_s
        if len(live) < want and first is not None and length:
            # entry ids are the window's start in ms (gears/anomalydesk.lua entry_ms): the windows just before
            # `first`, none older than the context could reach (a backfill that ended hours before is no context)
            step = int(length) * 1000
            older = r.xrevrange(keys.history(service, int(length)), max=f"({first.window * step}-1",
                                min=f"{(first.window - want) * step}-0", count=want - len(live))  # fmt: skip
            for _, fields in reversed(older):
                svc.history.append(from_stream_entry(service, fields))
        for fp in live:
            if not (fp.silent and fp.window in gaps):  # a system gap is no scoring context
                svc.history.append(fp)
        svc.history_loaded = True
    return svc.history
