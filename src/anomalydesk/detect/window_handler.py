"""Handling one sealed window of an owned service: score it, plan the incident changes, commit them once.

The window is scored with its service's active model (not when it carries no data, lies in a system
gap or in a stop of its traffic on purpose, or was sealed at another window length than the model
learnt), the drift baseline moves on, `incident_flow.advance` plans the incident, alert and state
changes, the system-gap rules add theirs, and `incident_commit.Committer` writes the plan and
acknowledges the entry in one script. A plan built on an incident that changed meanwhile (an
operator's action) is refused as CONFLICT and built again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from anomalydesk import config
from anomalydesk.detect import drift, owned_services, system_gap
from anomalydesk.detect import incidents as incidents_mod
from anomalydesk.detect.incident_commit import CONFLICT, Committer
from anomalydesk.detect.incident_flow import (
    Confirmation,
    Plan,
    Verdict,
    advance,
    close_for_new_length,
    finite,
    window_length_change,
)
from anomalydesk.detect.incident_model import Alert, Incident, Silence
from anomalydesk.detect.owned_services import OwnedService
from anomalydesk.detect.stream_reader import text
from anomalydesk.fingerprint import Fingerprint, from_stream_entry
from anomalydesk.store import traffic_stops
from anomalydesk.store.keys import Keys

log = logging.getLogger(__name__)
Scorer = Callable[[Any, list[Fingerprint], Fingerprint], Verdict]
_PLAN_ATTEMPTS = 10  # plans refused as CONFLICT (the incident kept changing) before giving up on the window


@dataclass
class Handled:
    """A window handled: `committed` now (False: a repeat already written before, only acknowledged)."""

    committed: bool
    alerts: list[Alert] = field(default_factory=list)


class WindowHandler:
    """Scores and commits windows for one detector."""

    def __init__(self, r: redis.Redis, keys: Keys, committer: Committer, *, scorer: Scorer,
                 confirmation: Confirmation, clock: Callable[[], float]):
        self.r = r
        self.keys = keys
        self.committer = committer
        self.scorer = scorer
        self.confirmation = confirmation
        self.clock = clock

    def handle(self, service: str, svc: OwnedService, entry_id: bytes | str, fields: dict,
               silences: list[Silence], live: list[str], window_s: float) -> Handled:
        """One window (`fields` of stream entry `entry_id`); `live`: the live services, `window_s`: the
        configured window length (for a fingerprint that does not carry its own)."""
        fp = from_stream_entry(service, fields)
        stops = traffic_stops.read(self.r, keys=self.keys)
        stopped = traffic_stops.stopped_at(stops, fp.start)
        # a silent window inside a stop on purpose (a demo's end) says nothing and alarms nothing
        quiet = fp.silent and service in stopped
        if not fp.silent and service in stopped:
            traffic_stops.resume(self.r, [service], fp.start, keys=self.keys)  # traffic is back
        gap = not quiet and system_gap.is_system_silent(self.r, self.keys, fp, live, text(entry_id), stopped)
        # the window a stop began inside holds part of its traffic: no drop to alarm on, no context
        cut = traffic_stops.cut_short(stops, service, fp.start, fp.window_seconds or window_s)
        unscored = gap or quiet or cut  # neither scored nor scoring context; incidents stay as they are
        history = owned_services.history(self.r, self.keys, service, svc, text(entry_id), fp, window_s)
        verdict = None
        baseline = None
        # a model of another window length does not score (the service learns again after a change)
        same_length = svc.model_window is None or fp.window_seconds in (None, svc.model_window)
        if svc.model is not None and not fp.no_data and same_length and not unscored:
            context = [h for h in history if h.window_seconds == fp.window_seconds]
            if drift.tracked(svc.model):
                baseline = owned_services.baseline(self.r, self.keys, service, svc)
                verdict = self.scorer(svc.model, context, fp, level=baseline.level())
                baseline = drift.advance(svc.model, baseline, fp)
            else:
                verdict = self.scorer(svc.model, context, fp)
            if not finite(verdict.score):
                log.error("%s: window %s scored %r; not alerting on it", service, fp.window, verdict.score)
                verdict, baseline = None, None
        if not fp.no_data and not unscored:
            history.append(fp)
        ranges = _json_field(fields, "kpi_ranges")
        muted = incidents_mod.silenced(silences, service, fp.start)
        muted_system = incidents_mod.silenced(silences, system_gap.SYSTEM, fp.start)
        length = fp.window_seconds or window_s
        for _ in range(_PLAN_ATTEMPTS):
            state = json.loads(self.r.hget(self.keys.detector_states, service) or "{}")
            incident = self._load(state.get("incident"))
            rule_incident = self._load(state.get("rule_incident"))
            shift_incident = self._load(state.get("shift_incident"))
            restart = None
            repeat_check = fp.window  # the commit's repeat check for a state without `last_start` (see APPLY_LUA)
            changed, old_length = window_length_change(state, fp, length, self.clock())
            if changed:
                restart = close_for_new_length(
                    state, {"incident": incident, "rule_incident": rule_incident, "shift_incident": shift_incident},
                    fp, old_length, length, svc.model_version, muted, self.clock())  # fmt: skip
                if "last_start" not in state:  # its numbers count the old length: none of them says "handled"
                    repeat_check = incidents_mod.NO_REPEAT_CHECK
                state, incident, rule_incident, shift_incident = dict(restart.state), None, None, None
            moved = baseline
            followers = drift.pending(state.get(drift.FOLLOWERS_FIELD), fp, svc.model_version)
            if moved is not None and shift_incident is not None and shift_incident.accepted is not None:
                # the operator took the new level as normal: re-baseline the features that moved there, and
                # note every feature on the move, which the same change may still carry further
                followers = drift.followers(svc.model, moved, shift_incident.id, fp, svc.model_version)
                moved = moved.accept(*svc.model.shift_limits)
            taken: list[dict[str, Any]] = []
            if moved is not None:
                moved, taken = drift.take_along(svc.model, moved, followers, fp)
            shift = drift.shift_of(svc.model, moved, fp) if moved is not None else None
            plan = advance(state, fp, verdict, incident=incident, rule_incident=rule_incident,
                           model_version=svc.model_version, silenced=muted, now=self.clock(),
                           window_seconds=length, kpi_ranges=ranges,
                           confirmation=self.confirmation, gap=unscored, shift=shift,
                           shift_incident=shift_incident)  # fmt: skip
            if restart is not None:
                plan.incidents[:0] = restart.incidents
                plan.alerts[:0] = restart.alerts
            if moved is not None:
                plan.state[drift.STATE_FIELD] = drift.stored(moved, svc.model_version)
            if followers is None:
                plan.state.pop(drift.FOLLOWERS_FIELD, None)
            else:
                plan.state[drift.FOLLOWERS_FIELD] = followers
                self._record_taken(plan, followers, taken, fp)
            system = system_gap.system_incident(self.r, self.keys, fp.window, gap) if gap or not fp.silent else None
            if gap or system is not None:
                writes, alerts = system_gap.gap_plan(system, fp, gap, len(live), muted_system)
                plan.incidents += writes
                plan.alerts += alerts
            if unscored:  # (a restarted detector leaves them out of the scoring context too)
                recent = [*state.get("gap_windows", []), fp.window]
                plan.state["gap_windows"] = recent[-config.DETECTOR_HISTORY_WINDOWS:]
            outcome = self.committer.commit(service, entry_id, repeat_check, plan)
            if outcome != CONFLICT:
                break
        else:
            raise RuntimeError(f"{service}: incident kept changing while window {fp.window} was handled")
        # committed: the baseline moved on; handled before: the stored one is the truth (read it again)
        svc.baseline = moved if outcome == 1 else None
        return Handled(True, list(plan.alerts)) if outcome == 1 else Handled(False)

    def _record_taken(self, plan: Plan, followers: dict[str, Any], taken: list[dict[str, Any]],
                      fp: Fingerprint) -> None:  # fmt: skip
        """Name the features taken along at window `fp` on the accepted incident (each one's newest move)."""
        if not taken:
            return
        log.info("%s: %s moved on with the change accepted in %s; taken along", fp.service,
                 ", ".join(r["feature"] for r in taken), followers.get("incident"))  # fmt: skip
        accepted = self._load(followers.get("incident"))
        if accepted is None:
            return
        names = {r["feature"] for r in taken}
        kept = [r for r in accepted.reasons if not (r.get("taken_along") and r["feature"] in names)]
        plan.incidents.append((accepted.revised(reasons=(*kept, *taken)), accepted.rev))

    def _load(self, incident_id: str | None) -> Incident | None:
        if not incident_id:
            return None
        raw = self.r.hget(self.keys.incidents, incident_id)
        return Incident.from_json(raw) if raw else None


def _json_field(fields: dict, name: str) -> Any:
    raw = fields.get(name.encode(), fields.get(name)) if isinstance(fields, dict) else None
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None
