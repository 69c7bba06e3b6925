"""The live detector's side of drift-aware scoring: each service's baseline, kept in its detector state.

A format-2 model measures level inputs against the service's moving baseline (detect/baseline.py).
The detector keeps one `Baseline` per service in the service's detector state (`Keys.detector_states`,
field "baseline", with the model version it belongs to), written by the same compare-and-set script
as the window's incidents and alerts (`incident_commit.Committer`): it survives restarts, a detector
taking a service over continues where the last one stopped, and a window delivered twice does not
move it twice. A state of another model version (a new model was activated) starts again from the
new model's end-of-training baseline: the two live in different spaces (log scale, daily profile).

- `restore(model, version, stored)`: the service's baseline for this model;
- `advance(model, baseline, fp)`: the baseline after the window (its row added);
- `shift_of(model, baseline)`: the level shift it shows, as an incident reason, or None;
- `stored(baseline, version)`: what goes into the detector state.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from anomalydesk.detect.baseline import Baseline
from anomalydesk.detect.model import Model
from anomalydesk.detect.score import level_shift_reason
from anomalydesk.fingerprint import Fingerprint

log = logging.getLogger(__name__)
STATE_FIELD = "baseline"


def tracked(model: Any) -> bool:
    """True for a model whose level inputs follow a baseline (format 2)."""
    return isinstance(model, Model) and model.baseline is not None


def restore(model: Model, version: int | None, stored: Any) -> Baseline:
    """The service's stored baseline when it belongs to this model version, else the model's own."""
    assert model.baseline is not None
    if isinstance(stored, dict) and stored.get("model_version") == version and version is not None:
        try:
            return Baseline.from_dict(stored, model.n_features)
        except ValueError as err:
            log.error("baseline of model v%s unreadable (%s): starting again from the model's", version, err)
    return model.baseline


def advance(model: Model, baseline: Baseline, fp: Fingerprint) -> Baseline:
    """The baseline with the window's (adjusted) row added."""
    row = np.asarray(fp.vector, dtype=np.float64)[None, :]
    stamp = np.array([fp.start], dtype=np.float64)
    _, after, _ = baseline.walk(model.adjusted(row, stamp), stamp)
    return after


def shift_of(model: Model, baseline: Baseline, fp: Fingerprint) -> dict[str, Any] | None:
    """The level shift `baseline` shows against its reference, in an operator's words, or None
    (levels shown at the evidence of window `fp`)."""
    found = baseline.shift(*model.shift_limits)
    if found is None:
        return None
    weights = model.evidence(np.asarray(fp.vector, dtype=np.float64)[None, :])
    weight = 1.0 if weights is None else float(weights[0, found.feature])
    return level_shift_reason(model, found, weight)


def stored(baseline: Baseline, version: int | None) -> dict[str, Any]:
    """The detector state's "baseline" field."""
    return {"model_version": version, **baseline.to_dict()}
