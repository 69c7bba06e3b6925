"""From one scored window to incident changes and alerts: the pure part of the incident flow.

`advance` is pure: given a service's detector state, the window's fingerprint and verdict, and the
incidents it currently has open, it returns a `Plan` (new state, incident writes, alerts).
`detect.incident_commit.Committer` writes a plan in one Lua script over the incident slot, then
XACKs the fingerprint (a window delivered twice is only acknowledged; an incident changed meanwhile
by an operator makes the commit return CONFLICT and the caller recomputes).

Why this module is long: it is one job, the plan of every kind of incident (anomaly, business rule,
level shift, and the end of all of them at a window-length change), and the kinds share one set of
rules for opening, escalating, muting and closing quietly; split, the parts would reach into each
other's private helpers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from anomalydesk import config
from anomalydesk.detect.episodes import EpisodeTracker, Step
from anomalydesk.detect.incident_model import (
    Alert,
    Candidate,
    Incident,
    Mark,
    Severity,
    rfc3339,
    score_text,
    severity_of,
    stored_score,
)
from anomalydesk.detect.window_scores import WindowScore
from anomalydesk.fingerprint import Fingerprint

DISMISSED = "dismissed_quiet"  # state: normal windows in a row since a false positive's run (None: none pending)


@dataclass(frozen=True)
class Verdict:
    """What the scorer says about one window."""

    score: float  # 0–100
    severity: Severity
    reasons: list[dict[str, Any]]
    anomalous: bool  # at or above the model's threshold

    def __post_init__(self) -> None:
        object.__setattr__(self, "severity", Severity(self.severity))


@dataclass(frozen=True)
class Confirmation:
    """Open after `k` anomalous of the last `n` windows, one of them scoring at least
    `config.INCIDENT_OPEN_SCORE`; resolve after `cooldown` normal ones."""

    k: int = config.INCIDENT_CONFIRM_K
    n: int = config.INCIDENT_CONFIRM_N
    cooldown: int = config.INCIDENT_COOLDOWN_WINDOWS

    def __post_init__(self) -> None:
        EpisodeTracker(self.k, self.n, self.cooldown)  # validates, with its clear message

    def tracker(self, state: dict[str, Any] | None) -> EpisodeTracker:
        """The service's tracker from its stored state (with today's k, n and cooldown)."""
        if not state:
            return EpisodeTracker(self.k, self.n, self.cooldown)
        tracker = EpisodeTracker.from_state(state)
        tracker.k, tracker.n, tracker.cooldown = self.k, self.n, self.cooldown
        return tracker


@dataclass
class Plan:
    """What handling one window changes: state, incidents (with the rev they were read at), alerts,
    and the window's score when its model scored it (stored for the plots, `detect.window_scores`)."""

    state: dict[str, Any]
    incidents: list[tuple[Incident, int]] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    score: WindowScore | None = None


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _range_text(lo: float, hi: float, values: tuple[float, ...]) -> str:
    """A KPI's expected range as its rule reason says it. When the window's extreme values are whole
    numbers (a count: the demo's orders per window) it reads as the whole numbers the range holds, which
    is exact for whole values: "2–40", not "1.284–40.75"; otherwise as it is."""
    if math.isfinite(lo) and math.isfinite(hi) and all(float(v).is_integer() for v in values):
        low, high = math.ceil(lo), math.floor(hi)
        if low <= high:
            return f"{low}–{high}"
    return f"{_fmt(lo)}–{_fmt(hi)}"


def rule_verdict(fp: Fingerprint, ranges: Mapping[str, Any] | None) -> Verdict:
    """Severity of a business rule breach from its distance outside the expected range.

    With per-KPI ranges (`kpi_ranges` in the fingerprint entry: name → [lo, hi, min, max]) the distance
    is how far the window's most extreme value lies beyond the bound it crosses, as a share of that
    bound (11 % beyond: warning; a third beyond: critical), and the KPIs named are those outside;
    without them the count of values out of range stands in for it and every KPI of the window is
    named with its mean.
    """
    kpis = dict(fp.kpis or {})
    reasons: list[dict[str, Any]] = []
    distance = 0.0
    for name, mean in sorted(kpis.items()):
        bounds = (ranges or {}).get(name)
        if bounds and bounds[0] is not None and bounds[1] is not None:
            lo, hi = float(bounds[0]), float(bounds[1])
            # [lo, hi, min, max]: the window's extreme values decide (one stray value is a breach
            # even when the mean stays inside); older entries carry [lo, hi] and the mean decides
            low_value, high_value = (float(bounds[2]), float(bounds[3])) if len(bounds) >= 4 else (mean, mean)
            # distance as a share of the bound it crosses ("40 % below the minimum"); a zero bound
            # falls back to the range's half-width
            half = max((hi - lo) / 2, 1e-12)
            outside = max((lo - low_value) / (abs(lo) or half), (high_value - hi) / (abs(hi) or half), 0.0)
            if outside <= 0:
                continue
            distance = max(distance, outside)
            actual = low_value if lo - low_value >= high_value - hi else high_value
            text = f"{name} {_fmt(actual)} outside expected {_range_text(lo, hi, (low_value, high_value))}"
            reasons.append({"feature": f"kpi:{name}", "actual": actual, "expected": [lo, hi], "text": text})
        elif not ranges:
            reasons.append({"feature": f"kpi:{name}", "actual": mean, "expected": None,
                            "text": f"{name} mean {_fmt(mean)} (out of its expected range)"})  # fmt: skip
    count = int(fp.get("kpi_out_of_range"))
    if not ranges:
        # no ranges in the fingerprint: the number of values out of range stands in for the distance
        # (one stray value is info, two a warning, four or more critical)
        distance = max(0, count - 1) / 4.5
    if not reasons:
        reasons.append({"feature": "kpi_out_of_range", "actual": count, "expected": 0,
                        "text": f"{count} business values outside their expected range"})  # fmt: skip
    score = min(100.0, config.RULE_SCORE_BASE + config.RULE_SCORE_PER_DISTANCE * distance)
    return Verdict(score=score, severity=severity_of(score), reasons=reasons, anomalous=True)


def _summary(reasons: list[dict[str, Any]], limit: int = 2) -> str:
    return "; ".join(str(x.get("text", x.get("feature"))) for x in reasons[:limit]) or "no single feature stands out"


def _muted(incident: Incident, muted_by_silence: bool, now: float) -> bool:
    return muted_by_silence or incident.snoozed_at(now)


def _closed(incident: Incident, at: float, how: str = "auto") -> Incident:
    """The incident's next revision, resolved by the detector."""
    return incident.revised(status="resolved", resolved=Mark("detector", rfc3339(at), how))


def advance(
    state: dict[str, Any],
    fp: Fingerprint,
    verdict: Verdict | None,
    *,
    incident: Incident | None,
    rule_incident: Incident | None,
    model_version: int | None,
    silenced: bool,
    now: float,
    window_seconds: float,
    kpi_ranges: Mapping[str, Any] | None = None,
    confirmation: Confirmation | None = None,
    gap: bool = False,
    shift: Mapping[str, Any] | None = None,
    shift_incident: Incident | None = None,
) -> Plan:
    """Handle one window of one service: extend, open, escalate or resolve its incidents.

    A `gap` window (no service sent anything, `detect.system_gap`) changes none of them: it only
    moves the state past the window. `shift`: the level shift the service's baseline shows after this
    window (`score.level_shift_reason`), if any; `shift_incident`: its open level-shift incident."""
    confirmation = confirmation or Confirmation()
    # the last window handled: its number, and its start and length (a repeat is recognised by its start,
    # which stays comparable when `setup --window … --force` numbers the windows anew)
    plan = Plan(state={**state, "last_window": fp.window, "last_start": fp.start, "window_s": window_seconds})
    service, window, start = fp.service, fp.window, fp.start
    if incident is not None and not incident.is_open:
        # closed by an operator: a continuing anomaly opens a new incident, unless the operator called it
        # a false positive (then this run of anomalous windows opens nothing; the next one after
        # `cooldown` normal windows does): a fault's tail re-alerted at once as a new critical incident
        if incident.false_positive is not None:
            plan.state[DISMISSED] = 0
        incident = None
        plan.state["incident"] = None
        plan.state["episode"] = None
    if rule_incident is not None and not rule_incident.is_open:
        rule_incident = None
        plan.state["rule_incident"] = None
    if gap:
        return plan

    if verdict is not None and not fp.no_data:
        plan.score = WindowScore(window, start, verdict.score, verdict.severity, verdict.anomalous, model_version)
        if plan.state.get(DISMISSED) is not None and incident is None:
            quiet = 0 if verdict.anomalous else int(plan.state[DISMISSED]) + 1
            plan.state[DISMISSED] = quiet if quiet < confirmation.cooldown else None
            event = Step()  # the dismissed run goes on (or has just ended): nothing opens
        else:
            tracker = confirmation.tracker(plan.state.get("episode"))
            event = tracker.step(verdict.anomalous, window, strong=verdict.score >= config.INCIDENT_OPEN_SCORE)
            plan.state["episode"] = tracker.state()
        if event.opened and event.episode is not None:
            first = event.episode.start
            opened = Incident.open(service, "anomaly", first, start - (window - first) * window_seconds)
            incident = _extend(replace(opened, silenced=silenced), verdict, window, model_version, len(tracker.recent))
            incident = replace(incident, named=tuple(_top(verdict.reasons)))
            plan.incidents.append((incident, 0))
            plan.state["incident"] = incident.id
            plan.alerts.append(Alert.about(
                incident, kind="new", window=window, window_start=start, score=verdict.score,
                severity=verdict.severity, reasons=verdict.reasons, model_version=model_version,
                message=f"{service}: anomaly ({verdict.severity}, score {score_text(verdict.score)}) — "
                        f"{_summary(verdict.reasons)}",
                silenced=_muted(incident, silenced, now),
            ))  # fmt: skip
        elif incident is not None and event.resolved:
            rev = incident.rev
            incident = _closed(incident, start)
            plan.incidents.append((incident, rev))
            plan.state["incident"] = None
            plan.alerts.append(Alert.about(
                incident, kind="resolved", window=window, window_start=start, score=verdict.score,
                severity=verdict.severity, reasons=[], model_version=model_version,
                message=f"{service}: incident {incident.id} resolved after "
                        f"{confirmation.cooldown} normal windows",
                silenced=_muted(incident, silenced, now),
            ))  # fmt: skip
        elif incident is not None and verdict.anomalous:
            rev = incident.rev
            before = incident.severity
            incident = _extend(incident.revised(), verdict, window, model_version, 1)
            incident, newly_named = _new_top_reason(incident, verdict)
            rose = verdict.severity > before
            if rose:
                incident = replace(incident, named=tuple(sorted({*(incident.named or ()), *_top(verdict.reasons)})))
                message = (f"{service}: incident {incident.id} escalated to {verdict.severity} "
                           f"(score {score_text(verdict.score)}) — {_summary(verdict.reasons)}")  # fmt: skip
            elif newly_named:
                incident = replace(incident, reasons=verdict.reasons)  # the alert's reasons are the incident's now
                message = (f"{service}: incident {incident.id} now also shows {verdict.reasons[0]['text']} "
                           f"(score {score_text(verdict.score)})")  # fmt: skip
            plan.incidents.append((incident, rev))
            if rose or newly_named:
                plan.alerts.append(Alert.about(
                    incident, kind="escalated", window=window, window_start=start,
                    score=verdict.score, severity=verdict.severity, reasons=verdict.reasons,
                    model_version=model_version, message=message, silenced=_muted(incident, silenced, now),
                ))  # fmt: skip
        elif incident is not None and incident.candidate:
            # a normal window inside the incident: no streak any more
            plan.incidents.append((incident.revised(candidate=None), incident.rev))

    _advance_rule(plan, fp, rule_incident, model_version, silenced, now, kpi_ranges)
    if verdict is not None and not fp.no_data:
        _advance_shift(plan, fp, shift, shift_incident, model_version, silenced, now, window_seconds)
    return plan


def _advance_shift(
    plan: Plan, fp: Fingerprint, shift: Mapping[str, Any] | None, incident: Incident | None,
    model_version: int | None, silenced: bool, now: float, window_seconds: float,
) -> None:  # fmt: skip
    """Level shift: one incident of its own while the baseline stays away from its reference level.

    It opens at the window the shift began (the reason's `since`), so an acceptance puts the windows
    from there back into training; until an operator accepts it (`incidents.accept`) it stays open
    and notifies again every `config.LEVEL_SHIFT_RENOTIFY_SECONDS` (a snooze mutes that); if the level
    comes back to the reference by itself it resolves.
    """
    service, window, start = fp.service, fp.window, fp.start
    if incident is not None and not incident.is_open:
        incident = None  # accepted or closed by an operator: the detector re-baselined (detector.py)
        plan.state["shift_incident"] = None
    if shift is None:
        if incident is not None:
            _close_quietly(plan, incident, fp, "shift_incident", model_version, _muted(incident, silenced, now),
                           f"{service}: level back at its reference (incident {incident.id})")
        return
    reason = dict(shift)
    score = float(config.SEVERITY_WARNING)
    if incident is None:
        since = float(reason.get("since", start))
        first = max(0, window - max(0, round((start - since) / max(window_seconds, 1e-9))))
        opened = replace(Incident.open(service, "level_shift", first, min(since, start)), silenced=silenced)
        incident = replace(opened, last_window=window, windows=1, score=score, severity=severity_of(score),
                           reasons=(reason,), model_version=model_version)  # fmt: skip
        plan.incidents.append((incident, 0))
        plan.state["shift_incident"] = incident.id
        plan.state["shift_notified"] = start
        plan.alerts.append(_shift_alert(incident, fp, reason, model_version, _muted(incident, silenced, now),
                                        f"{reason['text']} — accept it as the new normal, or it stays open"))
        return
    rev = incident.rev
    incident = incident.revised(last_window=window, windows=incident.windows + 1, reasons=(reason,))
    plan.incidents.append((incident, rev))
    last = float(plan.state.get("shift_notified") or 0.0)
    if start - last >= config.LEVEL_SHIFT_RENOTIFY_SECONDS:
        plan.state["shift_notified"] = start
        plan.alerts.append(_shift_alert(incident, fp, reason, model_version, _muted(incident, silenced, now),
                                        f"still at a new level, not accepted — {reason['text']}"))


def _shift_alert(incident: Incident, fp: Fingerprint, reason: dict[str, Any], model_version: int | None,
                 muted: bool, text: str) -> Alert:
    """A `level_shift` alert about `incident` at window `fp` (its opening, or a re-notification)."""
    return Alert.about(incident, kind="level_shift", window=fp.window, window_start=fp.start, score=incident.score,
                       severity=incident.severity, reasons=[reason], model_version=model_version,
                       message=f"{fp.service}: {text}", silenced=muted)  # fmt: skip


def _family(feature: str) -> str:
    """What a reason is about: the four latency features are one thing (latency), others themselves."""
    return "latency" if feature.startswith("latency_") else feature


def _top(reasons: Sequence[Mapping[str, Any]]) -> list[str]:
    """The top reason's family (`_family`), as a list (empty when there is none)."""
    return [_family(str(reasons[0]["feature"]))] if reasons and reasons[0].get("feature") else []


def _new_top_reason(incident: Incident, verdict: Verdict) -> tuple[Incident, bool]:
    """Track a top reason (its family: any latency feature is latency) that no alert of this incident
    named yet; True once it has led `INCIDENT_NEW_REASON_WINDOWS` anomalous windows in a row (it is
    named from then on)."""
    top = _top(verdict.reasons)
    named = set(incident.named or _top(incident.reasons))
    if not top or top[0] in named:
        return replace(incident, candidate=None), False
    streak = incident.candidate
    count = streak.windows + 1 if streak is not None and streak.feature == top[0] else 1
    if count >= config.INCIDENT_NEW_REASON_WINDOWS:
        return replace(incident, named=tuple(sorted(named | {top[0]})), candidate=None), True
    return replace(incident, named=tuple(sorted(named)), candidate=Candidate(top[0], count)), False


def _extend(incident: Incident, verdict: Verdict, window: int, model_version: int | None, n: int) -> Incident:
    changes: dict[str, Any] = {"last_window": window, "windows": incident.windows + n, "model_version": model_version}
    if verdict.severity > incident.severity or verdict.score > incident.score:
        changes.update(severity=max(incident.severity, verdict.severity),
                       score=stored_score(max(incident.score, verdict.score)), reasons=verdict.reasons)  # fmt: skip
    return replace(incident, **changes)


def _advance_rule(
    plan: Plan, fp: Fingerprint, incident: Incident | None, model_version: int | None,
    silenced: bool, now: float, ranges: Mapping[str, Any] | None,
) -> None:  # fmt: skip
    """Business rule: a window with KPI values out of range alerts at once; back in range resolves."""
    service, window, start = fp.service, fp.window, fp.start
    if fp.no_data:
        return
    if fp.get("kpi_out_of_range") > 0:
        verdict = rule_verdict(fp, ranges)
        if incident is None:
            opened = replace(Incident.open(service, "rule", window, start), silenced=silenced)
            incident = _extend(opened, verdict, window, model_version, 1)
            plan.incidents.append((incident, 0))
            plan.state["rule_incident"] = incident.id
            plan.alerts.append(Alert.about(
                incident, kind="rule", window=window, window_start=start, score=verdict.score,
                severity=verdict.severity, reasons=verdict.reasons, model_version=model_version,
                message=f"{service}: business value out of range ({verdict.severity}) — "
                        f"{_summary(verdict.reasons)}",
                silenced=_muted(incident, silenced, now),
            ))  # fmt: skip
            return
        rev = incident.rev
        before = incident.severity
        incident = _extend(incident.revised(), verdict, window, model_version, 1)
        plan.incidents.append((incident, rev))
        if verdict.severity > before:
            plan.alerts.append(Alert.about(
                incident, kind="escalated", window=window, window_start=start, score=verdict.score,
                severity=verdict.severity, reasons=verdict.reasons, model_version=model_version,
                message=f"{service}: business values further out of range ({verdict.severity}) — "
                        f"{_summary(verdict.reasons)}",
                silenced=_muted(incident, silenced, now),
            ))  # fmt: skip
    elif incident is not None:
        _close_quietly(plan, incident, fp, "rule_incident", model_version, _muted(incident, silenced, now),
                       f"{service}: business values back in range (incident {incident.id})")


INCIDENT_SLOTS = ("incident", "rule_incident", "shift_incident")  # the detector state's open incidents


def window_length_change(state: Mapping[str, Any], fp: Fingerprint, window_seconds: float,
                         now: float) -> tuple[bool, float | None]:
    """Whether `fp` is the first window the service's state sees at a new length (`anomalydesk setup
    --window … --force`), and the old length (None: not recorded). A window that began before the last
    one handled is no change: it is a repeat from before the change (the commit only acknowledges it).
    A state recorded before lengths were (no `window_s`) counts another length when its last window,
    read at this length, would start after `now`: a window handled cannot lie in the future. (A change
    to a shorter length is not seen in such a state: its numbers then lie in the past.)"""
    stored = state.get("window_s")
    last = state.get("last_window")
    if stored is not None:
        if float(stored) == float(window_seconds):
            return False, float(stored)
        last_start = state.get("last_start")
        if not isinstance(last_start, int | float):
            last_start = last * float(stored) if isinstance(last, int | float) else None
        handled = last_start is not None and last_start >= fp.start
        return not handled, float(stored)
    ahead = isinstance(last, int | float) and last * window_seconds > now + window_seconds
    return bool(ahead), None


def close_for_new_length(state: Mapping[str, Any], incidents: Mapping[str, Incident | None], fp: Fingerprint,
                         old_seconds: float | None, window_seconds: float, model_version: int | None,
                         silenced: bool, now: float) -> Plan:
    """The windows count a new length from `fp` on: the service's open incidents end here, each with an
    info-level `resolved` alert saying why (their window numbers count the old length; a continuing
    anomaly opens a new incident once a model of the new length judges it), and the detector state
    starts anew (confirmation and gaps are counted in old windows; the drift baseline belongs to the
    model and comes with it)."""
    plan = Plan(state={"window_s": window_seconds})
    was = f"from {old_seconds:g} s " if old_seconds else ""
    for slot in INCIDENT_SLOTS:
        incident = incidents.get(slot)
        if incident is not None and incident.is_open and state.get(slot) == incident.id:
            _close_quietly(plan, incident, fp, slot, model_version, _muted(incident, silenced, now),
                           f"{fp.service}: the window length changed {was}to {window_seconds:g} s; incident "
                           f"{incident.id} ends here (its windows counted the old length)")
    return plan


def _close_quietly(plan: Plan, incident: Incident, fp: Fingerprint, state_key: str, model_version: int | None,
                   muted: bool, message: str) -> None:
    """Resolve `incident` at window `fp` (its slot `state_key` in the state emptied) with an info-level
    `resolved` alert of score 0: a rule back in range, a level back at its reference."""
    rev = incident.rev
    closed = _closed(incident, fp.start)
    plan.incidents.append((closed, rev))
    plan.state[state_key] = None
    plan.alerts.append(Alert.about(
        closed, kind="resolved", window=fp.window, window_start=fp.start, score=0.0, severity=Severity.INFO,
        reasons=[], model_version=model_version, message=message, silenced=muted,
    ))  # fmt: skip


def finite(x: float) -> bool:
    """True for a finite number (scores from a broken model are refused, not alerted)."""
    return isinstance(x, int | float) and math.isfinite(x)
