"""Incidents, alerts and silences in Redis: what the operator sees and acts on.

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

import fnmatch
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from anomalydesk import config
from anomalydesk.store.keys import Keys

SEVERITIES = ("info", "warning", "critical")
ALERT_KINDS = ("new", "escalated", "resolved", "rule")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_OPERATOR_RETRIES = 20


class IncidentError(LookupError):
    """An operator action named an incident or silence that does not exist, or is not allowed."""


def rfc3339(epoch: float) -> str:
    """Epoch seconds as RFC 3339 UTC with a Z suffix (millisecond precision)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def severity_rank(severity: str) -> int:
    """info < warning < critical."""
    return SEVERITIES.index(severity)


def parse_duration(text: str) -> float:
    """'90s', '15m', '1h', '2d' → seconds; a clear ValueError otherwise."""
    text = text.strip().lower()
    unit = text[-1:] if text[-1:] in DURATION_UNITS else ""
    number = text[: len(text) - len(unit)] if unit else text
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"duration {text!r}: expected a number with s, m, h or d (e.g. 15m, 1h, 2d)") from None
    if value <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return value * DURATION_UNITS[unit or "s"]


def make_alert(
    *,
    kind: str,
    incident: dict[str, Any],
    window: int,
    window_start: float,
    score: float,
    severity: str,
    reasons: list[dict[str, Any]],
    model_version: int | None,
    message: str,
    silenced: bool = False,
) -> dict[str, Any]:
    """An alert as DESIGN.md defines it; its id depends only on incident, window and kind."""
    if kind not in ALERT_KINDS:
        raise ValueError(f"alert kind {kind!r} is not one of {ALERT_KINDS}")
    alert = {
        "id": f"{incident['id']}:{window}:{kind}",
        "kind": kind,
        "incident_id": incident["id"],
        "time": rfc3339(window_start),
        "window": window,
        "service": incident["service"],
        "score": round(float(score), 2),
        "severity": severity,
        "reasons": reasons,
        "model_version": model_version,
        "message": message,
    }
    if silenced:
        alert["silenced"] = True
    return alert


def new_incident(service: str, kind: str, first_window: int, window_start: float) -> dict[str, Any]:
    """A fresh open incident record (kind: 'anomaly' or 'rule')."""
    return {
        "id": f"{service}:{'r' if kind == 'rule' else 'a'}{first_window}",
        "service": service,
        "kind": kind,
        "status": "open",
        "opened": rfc3339(window_start),
        "first_window": first_window,
        "last_window": first_window,
        "windows": 0,
        "score": 0.0,
        "severity": "info",
        "reasons": [],
        "model_version": None,
        "acked": None,
        "snoozed_until": None,
        "resolved": None,
        "false_positive": None,
        "silenced": False,
        "rev": 0,
    }


# One script in the incident slot (KEYS: detector states, incidents, open set, alert log, alert
# stats, all tagged with the alert log's name). ARGV: service ('' for an operator action), window,
# state JSON, alert log MAXLEN, channel, number of incidents, then per incident (id, expected rev,
# JSON, open flag), then per alert (JSON, publish flag). -1: an incident's rev moved (recompute);
# -2: an operator's incident is gone; 0: the service's state already covers the window.
APPLY_LUA = """
if ARGV[1] ~= '' then
  local st = redis.call('HGET', KEYS[1], ARGV[1])
  if st then
    local last = cjson.decode(st).last_window
    if type(last) == 'number' and last >= tonumber(ARGV[2]) then return 0 end
  end
end
local n = tonumber(ARGV[6])
local i = 7
for _ = 1, n do
  local cur = redis.call('HGET', KEYS[2], ARGV[i])
  local rev = 0
  if cur then rev = tonumber(cjson.decode(cur).rev) or 0 elseif ARGV[1] == '' then return -2 end
  if rev ~= tonumber(ARGV[i + 1]) then return -1 end
  i = i + 4
end
i = 7
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


def apply_args(
    keys: Keys, service: str, window: int, state: dict[str, Any] | None,
    incidents: list[tuple[dict[str, Any], int]], alerts: list[dict[str, Any]],
) -> tuple[list[str], list[Any]]:  # fmt: skip
    """KEYS and ARGV of `APPLY_LUA` (service '' and state None: an operator's change)."""
    args: list[Any] = [service, window, json.dumps(state) if state is not None else "", config.ALERT_LOG_MAXLEN,
                       keys.alerts_channel, len(incidents)]  # fmt: skip
    for incident, expected_rev in incidents:
        args += [incident["id"], expected_rev, json.dumps(incident), "1" if incident["status"] == "open" else "0"]
    for alert in alerts:
        args += [json.dumps(alert), "0" if alert.get("silenced") else "1"]
    return [keys.detector_states, keys.incidents, keys.incidents_open, keys.alerts_log, keys.alert_stats], args


# --- reading -------------------------------------------------------------------------------------
def get(r: redis.Redis, incident_id: str, *, keys: Keys | None = None) -> dict[str, Any]:
    """One incident; IncidentError when it does not exist."""
    raw = r.hget((keys or Keys(config.key_prefix())).incidents, incident_id)
    if raw is None:
        raise IncidentError(f"no incident {incident_id!r} (see `anomalydesk incidents list`)")
    return json.loads(raw)


def list_incidents(
    r: redis.Redis, *, open_only: bool = False, service: str | None = None, keys: Keys | None = None
) -> list[dict[str, Any]]:
    """Incidents, newest first; only open ones with `open_only`; only one service's with `service`."""
    keys = keys or Keys(config.key_prefix())
    if open_only:
        ids = sorted(i.decode() if isinstance(i, bytes) else i for i in r.smembers(keys.incidents_open))
        raws = r.hmget(keys.incidents, ids) if ids else []
    else:
        raws = list(r.hgetall(keys.incidents).values())
    found = [json.loads(x) for x in raws if x is not None]
    if service is not None:
        found = [i for i in found if i["service"] == service]
    return sorted(found, key=lambda i: (i["last_window"], i["id"]), reverse=True)


def training_windows(
    r: redis.Redis, service: str, *, keys: Keys | None = None
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(excluded, included) inclusive window ranges for the next training of `service`.

    Excluded: windows of every incident not marked false positive (confirmed anomalies must not
    become "normal"). Included: windows of incidents marked false positive, put back even when they
    are older than the usual training range.
    """
    excluded: list[tuple[int, int]] = []
    included: list[tuple[int, int]] = []
    for incident in list_incidents(r, service=service, keys=keys):
        span = (int(incident["first_window"]), int(incident["last_window"]))
        (included if incident.get("false_positive") else excluded).append(span)
    return sorted(excluded), sorted(included)


def prune(r: redis.Redis, keep: int = config.INCIDENTS_KEPT, *, keys: Keys | None = None) -> int:
    """Forget the oldest resolved incidents beyond `keep` (open ones are never dropped); how many."""
    keys = keys or Keys(config.key_prefix())
    resolved = [i for i in list_incidents(r, keys=keys) if i["status"] != "open"]
    drop = [i["id"] for i in resolved[keep:]]
    if drop:
        r.hdel(keys.incidents, *drop)
    return len(drop)


# --- operator actions ---------------------------------------------------------------------------
def _update(
    r: redis.Redis, incident_id: str, change: Any, keys: Keys, alert: Any = None
) -> dict[str, Any]:
    """Apply change(incident) with a revision bump (compare-and-set in the incident slot); maybe alert."""
    script = r.register_script(APPLY_LUA)
    for _ in range(_OPERATOR_RETRIES):
        raw = r.hget(keys.incidents, incident_id)
        if raw is None:
            raise IncidentError(f"no incident {incident_id!r} (see `anomalydesk incidents list`)")
        incident = json.loads(raw)
        rev = int(incident.get("rev", 0))
        change(incident)
        incident["rev"] = rev + 1
        made = alert(incident) if alert else None
        script_keys, args = apply_args(keys, "", 0, None, [(incident, rev)], [made] if made is not None else [])
        outcome = int(script(keys=script_keys, args=args))
        if outcome == 1:
            return incident
        if outcome == GONE:
            raise IncidentError(f"no incident {incident_id!r} (see `anomalydesk incidents list`)")
    raise IncidentError(f"incident {incident_id!r} kept changing; try again")


def _who(who: str | None) -> dict[str, Any]:
    import getpass

    return {"by": who or getpass.getuser(), "at": rfc3339(time.time())}


def ack(r: redis.Redis, incident_id: str, who: str | None = None, *, keys: Keys | None = None) -> dict:
    """Acknowledge an incident (someone is on it); escalations are still notified."""
    return _update(r, incident_id, lambda i: i.__setitem__("acked", _who(who)), keys or Keys(config.key_prefix()))


def snooze(
    r: redis.Redis, incident_id: str, seconds: float, who: str | None = None, *, keys: Keys | None = None
) -> dict:
    """Mute an incident's notifications for `seconds` (its alerts are still logged)."""
    until = time.time() + seconds

    def change(i: dict) -> None:
        i["snoozed_until"] = rfc3339(until)
        i["snoozed_until_epoch"] = until
        i["snoozed_by"] = _who(who)

    return _update(r, incident_id, change, keys or Keys(config.key_prefix()))


def _closing_alert(how: str) -> Any:
    def alert(i: dict) -> dict:
        return make_alert(
            kind="resolved", incident=i, window=int(i["last_window"]), window_start=time.time(),
            score=float(i["score"]), severity=i["severity"], reasons=[], model_version=i["model_version"],
            message=f"{i['service']}: incident {i['id']} {how} by {i['resolved']['by']}",
            silenced=bool(i.get("silenced")),
        )  # fmt: skip

    return alert


def resolve(r: redis.Redis, incident_id: str, who: str | None = None, *, keys: Keys | None = None) -> dict:
    """Close an incident by hand (a resolved alert is logged and published)."""

    def change(i: dict) -> None:
        if i["status"] != "open":
            raise IncidentError(f"incident {incident_id!r} is already {i['status']}")
        i["status"] = "resolved"
        i["resolved"] = {**_who(who), "how": "operator"}

    return _update(r, incident_id, change, keys or Keys(config.key_prefix()), _closing_alert("resolved"))


def false_positive(
    r: redis.Redis, incident_id: str, who: str | None = None, *, keys: Keys | None = None
) -> dict:
    """Mark an incident a false positive: it closes and its windows go back into the next training."""

    closed_now: list[bool] = []

    def change(i: dict) -> None:
        closed_now[:] = [i["status"] == "open"]
        i["false_positive"] = _who(who)
        i["status"] = "resolved"
        if closed_now[0]:
            i["resolved"] = {**_who(who), "how": "false positive"}

    closing = _closing_alert("marked false positive")
    keys = keys or Keys(config.key_prefix())
    return _update(r, incident_id, change, keys, lambda i: closing(i) if closed_now[0] else None)


# --- silences -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Silence:
    id: str
    pattern: str  # shell-style glob on the service name: "payments", "svc-*", "*"
    start: float
    end: float
    reason: str
    by: str

    def covers(self, service: str, at: float) -> bool:
        """True when this silence mutes `service` at epoch time `at`."""
        return self.start <= at < self.end and fnmatch.fnmatchcase(service, self.pattern)

    def as_dict(self) -> dict[str, Any]:
        """JSON shape (times as RFC 3339 and epoch)."""
        return {"id": self.id, "pattern": self.pattern, "start": rfc3339(self.start), "end": rfc3339(self.end),
                "start_epoch": self.start, "end_epoch": self.end, "reason": self.reason, "by": self.by}  # fmt: skip


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
    silence = Silence(uuid.uuid4().hex[:12], pattern, start, end, reason.strip(), _who(who)["by"])
    r.hset((keys or Keys(config.key_prefix())).silences, silence.id, json.dumps(silence.__dict__))
    return silence


def list_silences(r: redis.Redis, *, keys: Keys | None = None) -> list[Silence]:
    """Every stored silence, soonest-ending first (expired ones included until removed)."""
    raws = r.hgetall((keys or Keys(config.key_prefix())).silences).values()
    return sorted((Silence(**json.loads(x)) for x in raws), key=lambda s: (s.end, s.id))


def remove_silence(r: redis.Redis, silence_id: str, *, keys: Keys | None = None) -> None:
    """Delete a silence; IncidentError when there is no such id."""
    if not r.hdel((keys or Keys(config.key_prefix())).silences, silence_id):
        raise IncidentError(f"no silence {silence_id!r} (see `anomalydesk incidents silences`)")


def silenced(silences: list[Silence], service: str, at: float) -> bool:
    """True when any silence mutes `service` at `at`."""
    return any(s.covers(service, at) for s in silences)
