"""The training job the app runs in its training executor, and model-registry reads (Qt-free).

`run` is a plain function: it opens its own client, reads each service's recent fingerprints
(leaving out windows inside confirmed incidents, keeping false positives), calls the pure
`detect.train.train` with a progress callback and a cancel flag, and stores each model in the
registry. Progress is reported as one fraction over all services; the caller throttles it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import redis

from anomalydesk import config
from anomalydesk.fingerprint import FEATURE_NAMES
from anomalydesk.store.keys import Keys


def _training_matrix(r: redis.Redis, keys: Keys, service: str, windows: int) -> tuple[np.ndarray, np.ndarray]:
    """(X, timestamps) of the service's last `windows` scoreable windows, confirmed incidents left out."""
    from anomalydesk.detect import incidents
    from anomalydesk.store import fingerprints

    fps = [fp for fp in fingerprints.latest(r, service, windows, keys=keys) if not fp.no_data]
    excluded, _included = incidents.training_windows(r, service, keys=keys)
    if excluded:
        fps = [fp for fp in fps if not any(a <= fp.window <= b for a, b in excluded)]
    X = np.vstack([fp.vector for fp in fps]) if fps else np.empty((0, len(FEATURE_NAMES)))
    return X, np.array([fp.start for fp in fps], dtype=np.float64)


def run(url: str, keys: Keys, services: list[str], params: dict[str, Any],
        progress: Callable[[float, str], None], cancel: threading.Event) -> dict[str, Any]:  # fmt: skip
    """Train each service; returns {"trained": [...], "skipped": {service: reason}, "cancelled", "summary"}."""
    from anomalydesk.detect.train import InsufficientHistory, TrainingCancelled, TrainParams, train
    from anomalydesk.store import connection
    from anomalydesk.store import models as registry

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
            X, timestamps = _training_matrix(r, keys, service, int(params["windows"]))
            train_params = TrainParams(trees=int(params["trees"]), false_alarm_rate=float(params["false_alarm_rate"]),
                                       extra={"service": service, "trained_by": "app"})  # fmt: skip

            def report(fraction: float, i: int = i, service: str = service) -> None:
                progress((i + fraction) / n, f"{service}: growing the forest ({fraction:.0%})")

            try:
                model = train(X, train_params, report, cancel.is_set, timestamps)
            except InsufficientHistory as err:
                skipped[service] = f"learning: {err}"
                continue
            except TrainingCancelled:
                cancelled = True
                break
            meta = model.metadata
            registry.save(r, service, model.to_json(), {
                "windows": int(meta.get("windows", len(X))), "params": meta.get("params", {}),
                "quantiles": meta.get("score_quantiles", {}),
                "metrics": {"training_flag_rate": meta.get("training_flag_rate"),
                            "daily_cycle": meta.get("daily_cycle")},
                "threshold": meta.get("threshold"), "note": meta.get("note", ""),
            }, keys=keys)  # fmt: skip
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
            d["threshold"] = m.extra.get("threshold", "")
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
