"""Incidents, alerts and silences in Redis: what the operator sees and acts on.

The values themselves (`Incident`, `Alert`, `Silence`, `Severity`) are the frozen types of
`detect.incident_model`; this module stores, reads and changes them.

An incident is a run of anomalous windows of one service (opened after k-of-n confirmation, kept
open through short gaps, resolved after a cooldown of normal windows; see `detect.episodes`), or a
run of windows whose business values are out of their expected range (`rule` incidents). Incidents
live in the hash `Keys.incidents` (id → JSON) with open ids in `Keys.incidents_open`; each carries a
revision `rev` so the detector and an operator never overwrite each other's change. Every write of
incidents and alerts goes through one Lua script (`APPLY_LUA`) over the incident slot: the alert log
and the keys tagged with its name (`Keys.incident_tag`), one slot on a Redis Cluster too.

Alerts follow DESIGN.md exactly (see docs/alerts.md): appended to the trimmed stream
`Keys.alerts_log` (one field, `alert`, holding the JSON), counted in `Keys.alert_stats` and
PUBLISHed on `Keys.alerts_channel`. An alert id is derived from incident, window and kind, so
handling the same window twice can never write a second alert. A silenced (or snoozed) incident
is still recorded and its alerts are still logged, with `"silenced": true`, but they are not
PUBLISHed: nobody is notified.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import redis

from anomalydesk import config
from anomalydesk.detect.incident_model import Alert, Incident, Mark, Silence, rfc3339
from anomalydesk.store.keys import Keys

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_OPERATOR_RETRIES = 20


class IncidentError(LookupError):
    """An operator action named an incident or silence that does not exist, or is not allowed."""


def parse_duration(text: str) -> float:
    """'90s', '15m', '1h', '2d' → seconds; a clear ValueError otherwise."""
    text = text.strip().lower()
    unit = text[-1:] if text[-1:] in DURATION_UNITS else ""
    number = text[: len(text) - len(unit)] if unit else text
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"duration {text!r}: expected a number with s, m, h or d (e.g. 15m, 1h, 2d)") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"duration {text!r} must be a positive number")
    return value * DURATION_UNITS[unit or "s"]


def check_snooze(seconds: float) -> float:
    """`seconds` when a snooze may last that long (at most `config.SNOOZE_MAX_SECONDS`); a clear ValueError
    otherwise."""
    if not 0 < seconds <= config.SNOOZE_MAX_SECONDS:
        days = config.SNOOZE_MAX_SECONDS / 86_400
        raise ValueError(f"a snooze lasts at most {days:g} days; for longer, resolve the incident or silence "
                         "its service (`anomalydesk incidents silence`)")  # fmt: skip
    return seconds


# One script in the incident slot (KEYS: detector states, incidents, open set, alert log, alert
# stats, and for a scored window the service's scores stream, all tagged with the alert log's name).
# ARGV: service ('' for an operator action), window, state JSON, alert log MAXLEN, channel, number of
# incidents, the score entry's id ('' when the window was not scored), the scores stream's MAXLEN, the
# number of score fields and values, those, then per incident (id, expected rev, JSON, open flag),
# then per alert (JSON, publish flag). -1: an incident's rev moved (recompute); -2: an operator's
# incident is gone; 0: the service's state already covers the window (nothing is written, the score
# neither). The score is the first write, under pcall: an id not past the stream's last (a window
# scored before the detector state was lost) adds no second entry and stops nothing else.
APPLY_LUA = """
if ARGV[1] ~= '' then
  local st = redis.call('HGET', KEYS[1], ARGV[1])
  if st then
    -- a window handled before: by its start, which a new window length (numbering its windows anew)
    -- leaves comparable; in a state recorded before starts were, by its number (ARGV[2])
    local old, new = cjson.decode(st), cjson.decode(ARGV[3])
    if type(old.last_start) == 'number' then
      if type(new.last_start) == 'number' and old.last_start >= new.last_start then return 0 end
    elseif type(old.last_window) == 'number' and old.last_window >= tonumber(ARGV[2]) then
      return 0
    end
  end
end
local n = tonumber(ARGV[6])
local nscore = tonumber(ARGV[9])
local first = 10 + nscore
local i = first
for _ = 1, n do
  local cur = redis.call('HGET', KEYS[2], ARGV[i])
  local rev = 0
  if cur then rev = tonumber(cjson.decode(cur).rev) or 0 elseif ARGV[1] == '' then return -2 end
  if rev ~= tonumber(ARGV[i + 1]) then return -1 end
  i = i + 4
end
if ARGV[7] ~= '' then
  redis.pcall('XADD', KEYS[6], 'MAXLEN', '~', ARGV[8], ARGV[7], unpack(ARGV, 10, first - 1))
end
i = first
for _ = 1, n do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
  if ARGV[i + 3] == '1' then redis.call('SADD', KEYS[3], ARGV[i]) else redis.call('SREM', KEYS[3], ARGV[i]) end
  i = i + 4
end
while i <= #ARGV do
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'alert', ARGV[i])
  redis.call('HINCRBY', KEYS[5], 'alerts_total', 1)
  if ARGV[i + 1] == '1' then redis.call('PUBLISH', ARGV[5], ARGV[i]) end
  i = i + 2
end
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return 1
"""
GONE = -2
NO_REPEAT_CHECK = 2**53  # as `window` of `apply_args`: above every window number (see `apply_args`)


def apply_args(
    keys: Keys, service: str, window: int, state: dict[str, Any] | None,
    incidents: list[tuple[Incident, int]], alerts: list[Alert],
    score: tuple[str, list[str], int] | None = None,
) -> tuple[list[str], list[Any]]:  # fmt: skip
    """KEYS and ARGV of `APPLY_LUA` (service '' and state None: an operator's change).

    The script takes a window for handled when the stored state's `last_start` is at or after the new
    state's; in a state recorded before starts were, when its `last_window` is at or above `window`
    (`NO_REPEAT_CHECK` for such a state counted at another window length: its numbers say nothing).

    `score`: (entry id, field/value pairs, MAXLEN) of the window's entry in `Keys.scores(service)`."""
    entry_id, fields, maxlen = score if score is not None else ("", [], 0)
    args: list[Any] = [service, window, json.dumps(state) if state is not None else "", config.ALERT_LOG_MAXLEN,
                       keys.alerts_channel, len(incidents), entry_id, maxlen, len(fields), *fields]  # fmt: skip
    for incident, expected_rev in incidents:
        args += [incident.id, expected_rev, json.dumps(incident.to_json()), "1" if incident.is_open else "0"]
    for alert in alerts:
        args += [json.dumps(alert.to_json()), "0" if alert.silenced else "1"]
    script_keys = [keys.detector_states, keys.incidents, keys.incidents_open, keys.alerts_log, keys.alert_stats]
    if score is not None:
        script_keys.append(keys.scores(service))
    return script_keys, args


# --- reading -------------------------------------------------------------------------------------
def get(r: redis.Redis, incident_id: str, *, keys: Keys | None = None) -> Incident:
    """One incident; IncidentError when it does not exist."""
    raw = r.hget((keys or Keys(config.key_prefix())).incidents, incident_id)
    if raw is None:
        raise IncidentError(f"no incident {incident_id!r} (see `anomalydesk incidents list`)")
    return Incident.from_json(raw)


def list_incidents(
    r: redis.Redis, *, open_only: bool = False, service: str | None = None, keys: Keys | None = None
) -> list[Incident]:
    """Incidents, newest first; only open ones with `open_only`; only one service's with `service`."""
    keys = keys or Keys(config.key_prefix())
    if open_only:
        ids = sorted(i.decode() if isinstance(i, bytes) else i for i in r.smembers(keys.incidents_open))
        raws = r.hmget(keys.incidents, ids) if ids else []
    else:
        raws = list(r.hgetall(keys.incidents).values())
    found = [Incident.from_json(x) for x in raws if x is not None]
    if service is not None:
        found = [i for i in found if i.service == service]
    return sorted(found, key=lambda i: (i.last_window, i.id), reverse=True)


def training_windows(
    r: redis.Redis, service: str, *, keys: Keys | None = None
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(excluded, included) inclusive window ranges for the next training of `service`.

    Excluded: windows of every incident not marked false positive (confirmed anomalies must not
    become "normal"). Included: windows of incidents marked false positive, and of level shifts
    accepted as the new normal (from the shift's start to the acceptance: the anomaly incidents the
    shift raised meanwhile go back in too), put back even when they are older than the usual range.
    A level-shift incident not accepted excludes nothing by itself: its windows are normal traffic at
    a level nobody decided on yet, and the anomaly incidents inside it are excluded as they are.
    """
    excluded: list[tuple[int, int]] = []
    included: list[tuple[int, int]] = []
    for incident in list_incidents(r, service=service, keys=keys):
        span = (incident.first_window, incident.last_window)
        if incident.kind == "level_shift":
            if incident.accepted is not None:
                included.append(span)
            continue
        (included if incident.false_positive else excluded).append(span)
    return sorted(excluded), sorted(included)


def left_out_windows(
    windows: np.ndarray, excluded: list[tuple[int, int]], included: list[tuple[int, int]]
) -> np.ndarray:
    """(n,) bool: which of `windows` (window numbers) are anomalous by `training_windows`' spans: inside an
    excluded one and not put back by an included one."""
    windows = np.asarray(windows, dtype=np.int64)

    def inside(spans: list[tuple[int, int]]) -> np.ndarray:
        mask = np.zeros(windows.shape, dtype=bool)
        for lo, hi in spans:
            mask |= (windows >= lo) & (windows <= hi)
        return mask

    return inside(excluded) & ~inside(included)


def anomalous_windows(r: redis.Redis, service: str, windows: np.ndarray, *, keys: Keys | None = None) -> np.ndarray:
    """(n,) bool: which of the service's `windows` training leaves out as anomalous (any incident but a
    false positive; see `training_windows`): the windows a usual range must not be computed from."""
    return left_out_windows(windows, *training_windows(r, service, keys=keys))


def prune(r: redis.Redis, keep: int = config.INCIDENTS_KEPT, *, keys: Keys | None = None) -> int:
    """Forget the oldest resolved incidents beyond `keep` (open ones are never dropped); how many."""
    keys = keys or Keys(config.key_prefix())
    resolved = [i for i in list_incidents(r, keys=keys) if not i.is_open]
    drop = [i.id for i in resolved[keep:]]
    if drop:
        r.hdel(keys.incidents, *drop)
    return len(drop)


# --- operator actions ---------------------------------------------------------------------------
Change = Callable[[Incident], Incident]
Closing = Callable[[Incident, Incident], Alert | None]  # (before, after) → the alert to log, if any


def _update(r: redis.Redis, incident_id: str, change: Change, keys: Keys, alert: Closing | None = None) -> Incident:
    """Apply change(incident) with a revision bump (compare-and-set in the incident slot); maybe alert."""
    script = r.register_script(APPLY_LUA)
    for _ in range(_OPERATOR_RETRIES):
        raw = r.hget(keys.incidents, incident_id)
        if raw is None:
            raise IncidentError(f"no incident {incident_id!r} (see `anomalydesk incidents list`)")
        before = Incident.from_json(raw)
        after = replace(change(before), rev=before.rev + 1)
        made = alert(before, after) if alert else None
        script_keys, args = apply_args(keys, "", 0, None, [(after, before.rev)], [made] if made is not None else [])
        outcome = int(script(keys=script_keys, args=args))
        if outcome == 1:
            return after
        if outcome == GONE:
            raise IncidentError(f"no incident {incident_id!r} (see `anomalydesk incidents list`)")
    raise IncidentError(f"incident {incident_id!r} kept changing; try again")


def _who(who: str | None, how: str | None = None) -> Mark:
    import getpass

    return Mark(who or getpass.getuser(), rfc3339(time.time()), how)


def _still_open(i: Incident, incident_id: str, action: str) -> None:
    """Refuse an action that only means something while the incident is open (the app greys it out)."""
    state = i.state_at(time.time())
    if state.closed:
        raise IncidentError(f"incident {incident_id!r} is {state.label}; nothing to {action}")


def ack(r: redis.Redis, incident_id: str, who: str | None = None, *, keys: Keys | None = None) -> Incident:
    """Acknowledge an open incident (someone is on it); escalations are still notified. A closed one is
    refused: an acknowledgement after the fact would read as if someone had been on it."""

    def change(i: Incident) -> Incident:
        _still_open(i, incident_id, "acknowledge")
        return replace(i, acked=_who(who))

    return _update(r, incident_id, change, keys or Keys(config.key_prefix()))


def snooze(
    r: redis.Redis, incident_id: str, seconds: float, who: str | None = None, *, keys: Keys | None = None
) -> Incident:
    """Mute an open incident's notifications for `seconds`, at most `config.SNOOZE_MAX_SECONDS` (its alerts
    are still logged). A closed one is refused: it notifies nothing to mute."""
    try:
        until = time.time() + check_snooze(seconds)
    except ValueError as err:
        raise IncidentError(str(err)) from None

    def change(i: Incident) -> Incident:
        _still_open(i, incident_id, "snooze")
        return replace(i, snoozed_until=rfc3339(until), snoozed_until_epoch=until, snoozed_by=_who(who))

    return _update(r, incident_id, change, keys or Keys(config.key_prefix()))


def _closing_alert(how: str) -> Closing:
    def alert(before: Incident, i: Incident) -> Alert | None:
        if not before.is_open or i.is_open or i.resolved is None:
            return None  # closed already: nothing closes now
        return Alert.about(
            i, kind="resolved", window=i.last_window, window_start=time.time(), score=i.score,
            severity=i.severity, reasons=[], model_version=i.model_version,
            message=f"{i.service}: incident {i.id} {how} by {i.resolved.by}", silenced=i.silenced,
        )  # fmt: skip

    return alert


def resolve(r: redis.Redis, incident_id: str, who: str | None = None, *, keys: Keys | None = None) -> Incident:
    """Close an incident by hand (a resolved alert is logged and published)."""

    def change(i: Incident) -> Incident:
        if not i.is_open:
            raise IncidentError(f"incident {incident_id!r} is already {i.status}")
        return replace(i, status="resolved", resolved=_who(who, "operator"))

    return _update(r, incident_id, change, keys or Keys(config.key_prefix()), _closing_alert("resolved"))


def false_positive(
    r: redis.Redis, incident_id: str, who: str | None = None, *, keys: Keys | None = None
) -> Incident:
    """Mark an incident a false positive: it closes and its windows go back into the next training."""

    def change(i: Incident) -> Incident:
        if i.kind == "level_shift":  # training ignores the mark for a shift: the decision is `accept`
            raise IncidentError(f"incident {incident_id!r} is a level shift: accept it as the new normal "
                                f"(`incidents accept {incident_id}`) or resolve it; a false-positive mark "
                                "would change nothing in training")
        mark = _who(who)
        closing = replace(mark, how="false positive") if i.is_open else i.resolved
        return replace(i, false_positive=mark, status="resolved", resolved=closing)

    keys = keys or Keys(config.key_prefix())
    return _update(r, incident_id, change, keys, _closing_alert("marked false positive"))


def accept(r: redis.Redis, incident_id: str, who: str | None = None, *, keys: Keys | None = None) -> Incident:
    """Accept a level shift as the new normal: the incident closes (recorded with who and when), the
    detector re-baselines the service at its new level on its next window, and the shift's windows feed
    the next training (`training_windows`)."""

    def change(i: Incident) -> Incident:
        if i.kind != "level_shift":
            raise IncidentError(f"incident {incident_id!r} is an {i.kind} incident: only a level shift can be "
                                "accepted as the new normal (mark an anomaly a false positive instead)")
        if not i.is_open:
            raise IncidentError(f"incident {incident_id!r} is already {i.status}")
        mark = _who(who)
        return replace(i, status="resolved", accepted=mark, resolved=replace(mark, how="accepted"))

    keys = keys or Keys(config.key_prefix())
    return _update(r, incident_id, change, keys, _closing_alert("accepted as the new normal"))


# --- silences -----------------------------------------------------------------------------------
def add_silence(
    r: redis.Redis, pattern: str, end: float, reason: str, *, start: float | None = None,
    who: str | None = None, keys: Keys | None = None,
) -> Silence:  # fmt: skip
    """Store a silence for services matching `pattern` from `start` (default now) until `end`."""
    start = time.time() if start is None else start
    if not pattern or len(pattern) > config.SERVICE_NAME_MAX:
        raise ValueError(f"silence pattern {pattern!r}: expected 1–{config.SERVICE_NAME_MAX} characters")
    if end <= start:
        raise ValueError(f"silence ends ({rfc3339(end)}) before it starts ({rfc3339(start)})")
    if not reason.strip():
        raise ValueError("a silence needs a reason (who reads the log later wants to know why)")
    silence = Silence(uuid.uuid4().hex[:12], pattern, start, end, reason.strip(), _who(who).by)
    r.hset((keys or Keys(config.key_prefix())).silences, silence.id, json.dumps(silence.to_json()))
    return silence


def list_silences(r: redis.Redis, *, keys: Keys | None = None) -> list[Silence]:
    """Every stored silence, soonest-ending first (expired ones included until removed)."""
    raws = r.hgetall((keys or Keys(config.key_prefix())).silences).values()
    return sorted((Silence.from_json(x) for x in raws), key=lambda s: (s.end, s.id))


def remove_silence(r: redis.Redis, silence_id: str, *, keys: Keys | None = None) -> None:
    """Delete a silence; IncidentError when there is no such id."""
    if not r.hdel((keys or Keys(config.key_prefix())).silences, silence_id):
        raise IncidentError(f"no silence {silence_id!r} (see `anomalydesk incidents silences`)")


def silenced(silences: list[Silence], service: str, at: float) -> bool:
    """True when any silence mutes `service` at `at`."""
    return any(s.covers(service, at) for s in silences)
