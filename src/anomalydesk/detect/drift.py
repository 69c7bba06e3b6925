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
- `stored(baseline, version)`: what goes into the detector state;
- `followers(…)`, `pending(…)`, `take_along(…)`: what an acceptance takes along (below).

**One change, one decision.** A deploy moves several features, and its move can show in steps: a
feature whose move weak evidence hid (p99 latency at night, few requests a window) crossed its
threshold after the acceptance, and an accepted one moved on as the morning's traffic made each window
stronger evidence (values are shrunk towards the median by their evidence, so a night's level shows
less of a shift than a day's). Each opened a second "new normal?" incident for the change the operator
had accepted (the demo's `shift` on other days' traffic: p99 49 minutes after, p50 3.6 hours after).
Now the acceptance records every feature that had moved at least `config.LEVEL_SHIFT_FOLLOW_SHARE` of
its threshold: to which side, from where, and how far (`followers`, in the detector state). Within
`config.LEVEL_SHIFT_FOLLOW_SECONDS` (a day) after the acceptance, and under the same model, a level
shift of one of them to the side it had moved to, ending no farther from where it started than
`LEVEL_SHIFT_FOLLOW_GROWTH` times its move at the acceptance (at least `LEVEL_SHIFT_FOLLOW_ALLOWANCE`
thresholds), is that change: it alone is re-baselined, quietly, and recorded on the accepted incident
(`take_along`). A feature that had not moved, moves to the other side or farther (a second, larger
change), or moves after a day or a retraining opens its own incident as before.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from anomalydesk import config
from anomalydesk.detect.baseline import Baseline
from anomalydesk.detect.model import Model
from anomalydesk.detect.score import level_shift_reason, unshrunk_level
from anomalydesk.fingerprint import Fingerprint

log = logging.getLogger(__name__)
STATE_FIELD = "baseline"
FOLLOWERS_FIELD = "shift_followers"


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
    return level_shift_reason(model, found, float(_weights(model, fp)[found.feature]))


def followers(model: Model, baseline: Baseline, incident_id: str, fp: Fingerprint,
              version: int | None) -> dict[str, Any]:  # fmt: skip
    """What accepting incident `incident_id` at window `fp` takes along (the module docstring): measured on
    the baseline before the acceptance re-baselines it; the detector state's "shift_followers" field (of
    model `version`: another model's baseline measures in another space). Per feature: the side it moved
    to, and where it moved from and to with the evidence shrinkage undone at window `fp` (model space)."""
    distance, levels = baseline.distances(*model.shift_limits)
    weights = _weights(model, fp)
    features = {}
    for j in np.flatnonzero(distance >= config.LEVEL_SHIFT_FOLLOW_SHARE):
        start, now = (unshrunk_level(model, j, float(v), weights[j]) for v in (baseline.reference[j], levels[j]))
        if now != start:
            features[model.feature_names[j]] = {"side": float(np.sign(now - start)), "from": start, "to": now}
    return {"incident": incident_id, "model_version": version, "accepted_at": fp.start,
            "until": fp.start + config.LEVEL_SHIFT_FOLLOW_SECONDS, "features": features}


def _weights(model: Model, fp: Fingerprint) -> np.ndarray:
    """(f,) the evidence weight of each feature of window `fp` (1 where the model has none)."""
    weights = model.evidence(np.asarray(fp.vector, dtype=np.float64)[None, :])
    return np.ones(model.n_features) if weights is None else np.asarray(weights[0], dtype=np.float64)


def pending(recorded: Any, fp: Fingerprint, version: int | None) -> dict[str, Any] | None:
    """The followers still to watch at window `fp` under model `version` (None: none, the horizon passed,
    or they were recorded under another model)."""
    if not isinstance(recorded, dict) or not recorded.get("features") or recorded.get("model_version") != version:
        return None
    return recorded if fp.start <= float(recorded.get("until", 0.0)) else None


def take_along(model: Model, baseline: Baseline, recorded: dict[str, Any] | None, fp: Fingerprint
               ) -> tuple[Baseline, list[dict[str, Any]]]:  # fmt: skip
    """(the baseline with each follower that shifted to its side re-baselined, their reasons): one feature
    at a time, so a feature that is not a follower is never re-baselined with them and asks on its own."""
    if recorded is None:
        return baseline, []
    recorded_features = recorded["features"]
    unit, _threshold, step = model.shift_limits
    names = model.feature_names
    weights = _weights(model, fp)
    watched = np.array([names[j] in recorded_features for j in range(model.n_features)])
    taken = []
    while (found := baseline.shift(*model.shift_limits, among=watched)) is not None:
        j = found.feature
        watched[j] = False
        was = recorded_features[names[j]]
        if not isinstance(was, dict) or was.get("side", 0.0) * (found.level - found.reference) <= 0:
            continue  # moved to the other side: news, not the accepted change
        start, first = float(was["from"]), float(was["to"])
        now = unshrunk_level(model, j, found.level, weights[j])
        allowed = max(config.LEVEL_SHIFT_FOLLOW_GROWTH * abs(first - start),
                      config.LEVEL_SHIFT_FOLLOW_ALLOWANCE * float(unit[j] * step[j]))  # fmt: skip
        if abs(now - start) > allowed:
            continue  # far beyond the accepted change: a second, larger one
        reason = level_shift_reason(model, found, weights[j])
        text = str(reason["text"]).removeprefix("new normal? ")
        taken.append({**reason, "taken_along": True,
                      "text": f"{text} — moved with this change, taken along with its acceptance"})
        baseline = baseline.accept(*model.shift_limits, only=np.arange(model.n_features) == j)
    return baseline, taken


def stored(baseline: Baseline, version: int | None) -> dict[str, Any]:
    """The detector state's "baseline" field."""
    return {"model_version": version, **baseline.to_dict()}
