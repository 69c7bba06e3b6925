"""Per-service detection state (learning / ready / stale) and the glue from registry to scorer.

- `decode_model(blob)`, `load_model(r, service)`: from `detect.stored_models` (the registry's blobs as
  models), which training imports without this module (this one imports training's window count).
- `score_window(model, history, fp)`: the live detector's scorer (context = the service's previous
  fingerprints, oldest first).
- `service_states(r)`: "learning" (no model yet, or one of another window length, with the windows
  still needed, counted as training counts them: `training_run.windows_needed`), "ready" (an active
  model of today's fingerprint schema), "stale" (its model is of an older schema: retrain), or "retired".
- `model_state(meta, window_s)`: what an active model is to the detector at today's window length —
  the one place that says a model is "not used" (`status`, the app's states and thresholds ask it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import redis

from anomalydesk import config
from anomalydesk.detect.incident_flow import Verdict
from anomalydesk.detect.model import Model
from anomalydesk.detect.score import score
from anomalydesk.detect.stored_models import decode_model, load_model
from anomalydesk.detect.training_run import windows_needed
from anomalydesk.fingerprint import SCHEMA_VERSION, Fingerprint, matrix
from anomalydesk.store import admin
from anomalydesk.store import models as registry
from anomalydesk.store.keys import Keys

__all__ = ["decode_model", "load_model", "model_state", "score_window", "service_states"]


def score_window(model: Model, history: list[Fingerprint], fp: Fingerprint,
                 level: np.ndarray | None = None) -> Verdict:
    """Score one fingerprint with the service's previous fingerprints as context (and, format 2, the
    service's baseline `level`, detect/drift.py)."""
    context = [h for h in history if not h.no_data][-(model.context_rows - 1):] if model.context_rows > 1 else []
    rows = [*context, fp]
    result = score(model, matrix(rows), np.array([x.start for x in rows], dtype=np.float64), level)
    return Verdict(score=result.score, severity=result.severity, reasons=list(result.reasons),
                   anomalous=bool(result.anomalous))  # fmt: skip


def model_state(meta: registry.ModelInfo, window_s: int) -> tuple[str, str | None]:
    """An active model at window length `window_s`: ("ready", None) it scores; ("stale", None) it is of an
    older fingerprint schema (retrain); ("learning", why) it counts windows of another length, so the
    detector does not score with it (`detect.window_handler`) and the service learns again."""
    if meta.window_seconds not in (None, window_s):
        return "learning", (f"its model v{meta.version} counts {meta.window_seconds}-s windows, the windows are "
                            f"{window_s} s now: train it again")
    return ("stale" if meta.schema != SCHEMA_VERSION else "ready"), None


def service_states(r: redis.Redis, *, keys: Keys | None = None) -> dict[str, dict[str, Any]]:
    """service → {"state": learning|ready|stale|retired, "model_version", "windows" (stored, live and
    history), "needed" (while learning: the windows training still needs, by the windows it would use),
    "reason" (an active model the detector does not use: why, `model_state`)}."""
    keys = keys or Keys(config.key_prefix())
    pipe = r.pipeline(transaction=False)
    pipe.smembers(keys.services)
    pipe.smembers(keys.retired)
    known, retired = pipe.execute()
    names = sorted(s.decode() if isinstance(s, bytes) else s for s in known)
    retired_names = {s.decode() if isinstance(s, bytes) else s for s in retired}
    active = registry.active_versions(r, keys=keys)
    window_s = admin.window_seconds(r, keys)
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.xlen(keys.fingerprints(name))
        pipe.xlen(keys.history(name, window_s))
    counts = pipe.execute()
    states: dict[str, dict[str, Any]] = {}
    for name, live, history in zip(names, counts[0::2], counts[1::2], strict=True):
        length = int(live) + int(history)
        entry: dict[str, Any] = {"model_version": active.get(name), "windows": length}

        def learning(reason: str | None = None, entry: dict[str, Any] = entry, name: str = name,
                     length: int = length) -> None:  # fmt: skip
            entry["state"] = "learning"
            # Fewer stored windows than training needs: it needs at least the rest (the windows it uses
            # are some of those stored), and nothing else is read. Enough stored: the windows training
            # would use are counted (gaps and more left out) — the stored count said "ready to train" to
            # a training that then refused; reading them costs ~0.2 s per day of 5-s windows, so only then.
            short = config.MIN_TRAINING_WINDOWS - length
            entry["needed"] = short if short > 0 else windows_needed(r, name, keys=keys)
            if reason:
                entry["reason"] = reason

        if name in retired_names:
            entry["state"] = "retired"
        elif name not in active:
            learning()
        else:
            try:
                meta = registry.info(r, name, active[name], keys=keys)
            except registry.ModelNotFound:
                learning()
            else:
                state, reason = model_state(meta, window_s)
                if state == "learning":
                    learning(reason)
                else:
                    entry["state"] = state
        states[name] = entry
    return states
