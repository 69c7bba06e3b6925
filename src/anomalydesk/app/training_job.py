"""The training job the app runs in its training executor, and model-registry reads (Qt-free).

`run` is a plain function: it opens its own client and, per service, calls
`detect.training_run.train_service` (the same window selection as `anomalydesk train`: confirmed
incidents left out, false positives put back; the pure `detect.train.train` with a progress callback
and a cancel flag; the model stored and activated in the registry). Progress is reported as one
fraction over all services; the caller throttles it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import redis

from anomalydesk import config
from anomalydesk.store.keys import Keys


def run(url: str, keys: Keys, services: list[str], params: dict[str, Any],
        progress: Callable[[float, str], None], cancel: threading.Event) -> dict[str, Any]:  # fmt: skip
    """Train each service; returns {"trained": [...], "skipped": {service: reason}, "cancelled", "summary"}."""
    from anomalydesk.detect.train import TrainingCancelled, TrainParams
    from anomalydesk.detect.training_run import train_service
    from anomalydesk.store import connection

    trained: list[str] = []
    skipped: dict[str, str] = {}
    cancelled = False
    r = connection.connect(url)
    try:
        n = max(1, len(services))
        for i, service in enumerate(services):
            if cancel.is_set():
                cancelled = True
                break
            progress(i / n, f"{service}: reading fingerprints")
            train_params = TrainParams(trees=int(params["trees"]), false_alarm_rate=float(params["false_alarm_rate"]))

            def report(fraction: float, i: int = i, service: str = service) -> None:
                progress((i + fraction) / n, f"{service}: growing the forest ({fraction:.0%})")

            try:
                outcome = train_service(r, service, windows=int(params["windows"]), params=train_params,
                                        progress=report, cancel=cancel.is_set, keys=keys)  # fmt: skip
            except TrainingCancelled:
                cancelled = True
                break
            if outcome.skipped:
                skipped[service] = outcome.skipped
                continue
            trained.append(service)
    finally:
        r.close()
    if cancelled:
        summary = f"cancelled; trained {len(trained)} of {len(services)} service(s)"
    else:
        summary = f"trained {len(trained)} of {len(services)} service(s)"
    if skipped:
        summary += "; " + "; ".join(f"{s} {why}" for s, why in sorted(skipped.items()))
    if not cancelled:
        progress(1.0, summary)
    return {"trained": trained, "skipped": skipped, "cancelled": cancelled, "summary": summary}


def model_overview(r: redis.Redis, keys: Keys, services: list[str]) -> dict[str, dict[str, Any]]:
    """service → {state, active, needed, versions: [ModelInfo as dict + threshold]}."""
    from anomalydesk.detect.service_state import service_states
    from anomalydesk.store import models as registry

    states = service_states(r, keys=keys)
    overview: dict[str, dict[str, Any]] = {}
    for service in sorted(set(services) | set(states)):
        entry = states.get(service, {"state": "learning", "needed": config.MIN_TRAINING_WINDOWS})
        versions = []
        for m in registry.list_models(r, service, keys=keys):
            d = m.as_dict()
            d["threshold"] = config.SEVERITY_WARNING  # scores are calibrated: the threshold maps here
            versions.append(d)
        state = entry.get("state", "learning")
        if state == "learning" and entry.get("needed"):
            state = f"learning ({entry['needed']} windows to go)"
        overview[service] = {"state": state, "active": entry.get("model_version"), "versions": versions}
    return overview


def activate(r: redis.Redis, keys: Keys, service: str, version: int) -> None:
    """Make a kept version active."""
    from anomalydesk.store import models as registry

    registry.activate(r, service, version, keys=keys)


def rollback(r: redis.Redis, keys: Keys, service: str) -> None:
    """Activate the version before the active one."""
    from anomalydesk.store import models as registry

    registry.rollback(r, service, keys=keys)
