"""Incident state, operator actions and silences against a real redis-server; the CLI in a subprocess."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import redis

from anomalydesk.detect import incidents as inc
from anomalydesk.detect.incident_commit import Committer
from anomalydesk.detect.incident_flow import Plan
from anomalydesk.detect.incident_model import Incident, Severity
from anomalydesk.store.keys import Keys

K = Keys()


def open_incident(r: redis.Redis, service: str = "payments", first: int = 100, last: int = 104) -> Incident:
    """Write an open incident the way the detector does (through the commit script)."""
    incident = replace(Incident.open(service, "anomaly", first, first * 5.0), last_window=last,
                       windows=last - first + 1, score=88.0, severity=Severity.WARNING,
                       reasons=[{"feature": "rate_5xx", "actual": 0.2, "expected": 0.01, "text": "5xx ratio 20%"}])
    r.xadd(K.fingerprints(service), {"window": last}, id=f"{last * 5000}-1")
    r.xgroup_create(K.fingerprints(service), "detectors", id="0")
    r.xreadgroup("detectors", "t", {K.fingerprints(service): ">"})
    plan = Plan(state={"last_window": last, "incident": incident.id}, incidents=[(incident, 0)])
    assert Committer(r, K).commit(service, f"{last * 5000}-1", last, plan) == 1
    return incident


def logged(r: redis.Redis) -> list[dict]:
    return [json.loads(f[b"alert"]) for _, f in r.xrange(K.alerts_log)]


def test_parse_duration() -> None:
    assert [inc.parse_duration(x) for x in ("90s", "15m", "1h", "2d", "30")] == [90, 900, 3600, 172800, 30]
    for bad in ("", "h", "-5m", "1w", "soon"):
        with pytest.raises(ValueError, match="duration"):
            inc.parse_duration(bad)


def test_ack_snooze_resolve_record_who_and_when(r: redis.Redis) -> None:
    incident = open_incident(r)
    acked = inc.ack(r, incident.id, who="alice")
    assert acked.acked is not None and acked.acked.by == "alice" and acked.acked.at.endswith("Z") and acked.rev == 1
    snoozed = inc.snooze(r, incident.id, 3600, who="bob")
    assert snoozed.snoozed_until_epoch is not None and snoozed.snoozed_until_epoch > time.time() + 3500
    assert snoozed.snoozed_by is not None and snoozed.snoozed_by.by == "bob"
    resolved = inc.resolve(r, incident.id, who="carol")
    assert resolved.status == "resolved" and resolved.resolved is not None and resolved.resolved.by == "carol"
    assert resolved.resolved.how == "operator"
    assert r.scard(K.incidents_open) == 0
    (alert,) = logged(r)
    assert alert["kind"] == "resolved" and alert["incident_id"] == incident.id
    assert json.loads(r.hget(K.incidents, incident.id)) == resolved.to_json()  # what is stored is what came back
    with pytest.raises(inc.IncidentError, match="already resolved"):
        inc.resolve(r, incident.id)
    with pytest.raises(inc.IncidentError, match="no incident 'nope'"):
        inc.ack(r, "nope")


def test_a_closed_incident_is_neither_acknowledged_nor_snoozed(r: redis.Redis) -> None:
    """Ack and snooze mean something only while an incident is open (the app greys them out): on a closed
    one they are refused, naming its state, and nothing is stored."""
    resolved = inc.resolve(r, open_incident(r, "payments").id, who="carol")
    mistaken = inc.false_positive(r, open_incident(r, "orders", 200, 203).id, who="dana")
    for closed, state in ((resolved, "resolved"), (mistaken, "false positive")):
        with pytest.raises(inc.IncidentError, match=f"is {state}; nothing to snooze"):
            inc.snooze(r, closed.id, 3600)
        with pytest.raises(inc.IncidentError, match=f"is {state}; nothing to acknowledge"):
            inc.ack(r, closed.id)
        assert inc.get(r, closed.id) == closed  # no snoozed_until, no ack, no new revision


def test_a_snooze_lasts_at_most_snooze_max_seconds(r: redis.Redis) -> None:
    from anomalydesk import config

    incident = open_incident(r)
    assert inc.check_snooze(config.SNOOZE_MAX_SECONDS) == config.SNOOZE_MAX_SECONDS
    for seconds in (config.SNOOZE_MAX_SECONDS + 1, inc.parse_duration("99999d"), math.inf, math.nan):
        with pytest.raises(ValueError, match="a snooze lasts at most 30 days"):
            inc.check_snooze(seconds)
        with pytest.raises(inc.IncidentError, match="a snooze lasts at most 30 days"):
            inc.snooze(r, incident.id, seconds)
    assert inc.get(r, incident.id) == incident
    for text in ("inf", "nan", "-inf"):
        with pytest.raises(ValueError, match="must be a positive number"):
            inc.parse_duration(text)


def test_false_positive_windows_go_back_into_training(r: redis.Redis) -> None:
    confirmed = open_incident(r, "payments", 100, 104)
    mistaken = open_incident(r, "orders", 200, 203)
    inc.false_positive(r, mistaken.id, who="alice")
    assert inc.training_windows(r, "payments") == ([(100, 104)], [])
    assert inc.training_windows(r, "orders") == ([], [(200, 203)])
    windows = [99, 100, 104, 105, 200, 203]  # the same windows are anomalous for the app's usual range
    assert inc.anomalous_windows(r, "payments", windows).tolist() == [False, True, True, False, False, False]
    assert not inc.anomalous_windows(r, "orders", windows).any()
    assert inc.left_out_windows(windows, [(100, 210)], [(200, 203)]).tolist() == [False, True, True, True, False, False]
    marked = inc.get(r, mistaken.id)
    assert marked.false_positive is not None and marked.false_positive.by == "alice"
    assert marked.resolved is not None and marked.resolved.how == "false positive"
    assert inc.get(r, confirmed.id).is_open
    inc.false_positive(r, mistaken.id, who="bob")  # marked again: already closed, no second closing alert
    assert [a["kind"] for a in logged(r)] == ["resolved"]


def test_silences_match_by_pattern_and_time(r: redis.Redis) -> None:
    s = inc.add_silence(r, "svc-*", end=2000.0, start=1000.0, reason="deploy", who="ops")
    found = inc.list_silences(r)
    assert found == [s]
    assert inc.silenced(found, "svc-7", 1500.0)
    assert not inc.silenced(found, "svc-7", 2500.0)
    assert not inc.silenced(found, "payments", 1500.0)
    with pytest.raises(ValueError, match="ends"):
        inc.add_silence(r, "*", end=10.0, start=20.0, reason="x")
    with pytest.raises(ValueError, match="reason"):
        inc.add_silence(r, "*", end=30.0, start=20.0, reason=" ")
    inc.remove_silence(r, s.id)
    assert inc.list_silences(r) == []


def cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "anomalydesk.cli", *args, "--redis", redis_url],
                          capture_output=True, text=True, timeout=60)


def test_cli_incidents_and_models(r: redis.Redis, redis_url: str) -> None:
    incident = open_incident(r)
    listed = cli(redis_url, "incidents", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["incidents"] == [json.loads(r.hget(K.incidents, incident.id))]  # the record
    text = cli(redis_url, "incidents")
    assert text.returncode == 0 and incident.id in text.stdout and "warning" in text.stdout, text.stdout
    snoozed = cli(redis_url, "incidents", "snooze", incident.id, "15m", "--json", "--by", "dave")
    assert snoozed.returncode == 0 and json.loads(snoozed.stdout)["snoozed_by"]["by"] == "dave"
    acked = cli(redis_url, "incidents", "ack", incident.id, "--by", "erin")
    assert acked.returncode == 0 and acked.stdout.strip() == f"{incident.id} acknowledged by erin"
    bad = cli(redis_url, "incidents", "snooze", incident.id, "soon")
    assert bad.returncode == 2 and "duration 'soon'" in bad.stderr
    too_long = cli(redis_url, "incidents", "snooze", incident.id, "99999d")  # the year 2300
    assert too_long.returncode == 2 and "a snooze lasts at most 30 days;" in too_long.stderr
    assert inc.get(r, incident.id).snoozed_by.by == "dave"  # the earlier snooze, untouched
    assert cli(redis_url, "incidents", "resolve", incident.id).returncode == 0
    for action in ("snooze", "ack"):
        refused = cli(redis_url, "incidents", action, incident.id, *(["1h"] if action == "snooze" else []))
        what = "snooze" if action == "snooze" else "acknowledge"
        assert (refused.returncode, refused.stdout) == (1, ""), refused.stdout
        assert f"incident {incident.id!r} is resolved; nothing to {what}" in refused.stderr, refused.stderr
    assert inc.get(r, incident.id).snoozed_by.by == "dave" and inc.get(r, incident.id).acked.by == "erin"
    missing = cli(redis_url, "incidents", "ack", "nope")
    assert missing.returncode == 1 and "no incident 'nope'" in missing.stderr
    silence = cli(redis_url, "incidents", "silence", "pay*", "--until", "2h", "--reason", "db upgrade", "--json")
    assert silence.returncode == 0 and json.loads(silence.stdout)["pattern"] == "pay*"
    assert json.loads(cli(redis_url, "incidents", "silences", "--json").stdout)["silences"][0]["reason"] == "db upgrade"
    models = cli(redis_url, "models", "--json")
    assert models.returncode == 0 and json.loads(models.stdout) == {"models": []}
    r.sadd(K.services, "payments")
    rollback = cli(redis_url, "models", "rollback", "payments")
    assert rollback.returncode == 1 and "'payments' has no active model to roll back from" in rollback.stderr


def test_prune_forgets_oldest_resolved_incidents_only(r: redis.Redis) -> None:
    for first in (10, 20, 30):
        incident = replace(Incident.open("orders", "anomaly", first, first * 5.0), last_window=first + 2,
                           status="resolved" if first < 30 else "open")  # fmt: skip
        r.hset(K.incidents, incident.id, json.dumps(incident.to_json()))
    assert inc.prune(r, keep=1) == 1
    assert sorted(i.id for i in inc.list_incidents(r)) == ["orders:a20", "orders:a30"]


def test_setup_moves_incident_keys_of_older_releases_into_the_incident_slot(r: redis.Redis) -> None:
    from anomalydesk.config import SketchSettings
    from anomalydesk.store import admin

    old = Incident.open("orders", "anomaly", 50, 250.0).to_json()
    newer = {**Incident.open("users", "anomaly", 60, 300.0).to_json(), "rev": 3}
    r.hset(K.legacy_incidents, mapping={old["id"]: json.dumps(old), newer["id"]: json.dumps({**newer, "rev": 1})})
    r.sadd(K.legacy_incidents_open, old["id"], newer["id"])
    r.hset(K.incidents, newer["id"], json.dumps(newer))  # already written under the new key: it wins
    r.sadd(K.services, "orders", "users")
    r.set(K.legacy_detector_state("orders"), json.dumps({"last_window": 54, "incident": old["id"]}))
    r.hset(K.stats, "alerts_total", 7)
    r.xadd(K.alerts_log, {"alert": "{}"})
    r.hset(K.alert_stats, "alerts_total", 1)

    assert admin.setup(r, SketchSettings())["incident_records_migrated"] == 3
    assert not r.exists(K.legacy_incidents, K.legacy_incidents_open, K.legacy_detector_state("orders"))
    assert inc.get(r, old["id"]).to_json() == old and inc.get(r, newer["id"]).rev == 3
    assert {i.id for i in inc.list_incidents(r, open_only=True)} == {old["id"], newer["id"]}
    assert json.loads(r.hget(K.detector_states, "orders"))["last_window"] == 54
    status = admin.status(r)
    assert (status["incidents_open"], status["alerts_total"]) == (2, 8)  # the old counter is added, not lost
    assert admin.setup(r, SketchSettings())["incident_records_migrated"] == 0  # idempotent
    acked = inc.ack(r, old["id"], who="dana")  # migrated incidents can be acted on
    assert acked.acked is not None and acked.acked.by == "dana"


def test_webhook_counters_and_dead_letters_of_older_releases_are_moved(r: redis.Redis) -> None:
    from anomalydesk.store import admin

    r.hset(K.legacy_webhook_stats, mapping={"oncall:delivered": 5, "oncall:dead": 1})
    r.hset(K.webhook_stats, "oncall:delivered", 2)
    r.xadd(K.legacy_alerts_dead, {"route": "oncall", "alert": "{}"}, id="1000-0")
    r.xadd(K.legacy_alerts_dead, {"route": "oncall", "alert": "{}"}, id="2000-0")
    r.xadd(K.alerts_dead, {"route": "oncall", "alert": "{}"}, id="1500-0")  # written since the upgrade
    assert admin.migrate_incident_keys(r) == 4
    assert not r.exists(K.legacy_webhook_stats, K.legacy_alerts_dead)
    assert r.hgetall(K.webhook_stats) == {b"oncall:delivered": b"7", b"oncall:dead": b"1"}
    ids = [entry_id.decode() for entry_id, _ in r.xrange(K.alerts_dead)]
    assert len(ids) == 3 and ids[0] == "1500-0"  # the older ones appended after the newer one, none lost


def test_cli_lists_states_in_the_shared_words_and_times_with_their_zone(r: redis.Redis, redis_url: str) -> None:
    """`incidents list` names each state as the app does (`IncidentState.label`, one source) and prints
    times through `local_time` (the zone's name after the time, as the app's tables show it)."""
    import os

    from anomalydesk.detect.incident_model import IncidentState, local_time

    incident = open_incident(r)
    fp = cli(redis_url, "incidents", "false-positive", incident.id, "--by", "erin")
    assert fp.returncode == 0 and fp.stdout.startswith(f"{incident.id} false positive"), fp.stdout
    listed = subprocess.run([sys.executable, "-m", "anomalydesk.cli", "incidents", "list", "--all", "--redis",
                             redis_url], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "TZ": "Europe/Berlin"})  # fmt: skip
    line = next(x for x in listed.stdout.splitlines() if x.startswith(incident.id))
    assert IncidentState.FALSE_POSITIVE.label in line and " resolved " not in line, line
    assert "+01:00" not in line and ("CET" in line or "CEST" in line), line  # the zone named, not guessed
    other = open_incident(r, "orders", 200, 201)
    snoozed = cli(redis_url, "incidents", "snooze", other.id, "1h")
    stored = inc.get(r, other.id)
    assert snoozed.stdout.strip() == f"{other.id} snoozed until {local_time(stored.snoozed_until_epoch)}"


def test_cli_false_positive_says_what_it_does_to_training(r: redis.Redis, redis_url: str) -> None:
    """A model incident's windows go back into the next training; a `(system)` gap is not scored, so
    marking it a false positive only closes it."""
    from anomalydesk.detect.system_gap import SYSTEM

    gap = replace(Incident.open(SYSTEM, "gap", 300, 1500.0), severity=Severity.WARNING, score=100.0)
    r.hset(K.incidents, gap.id, json.dumps(gap.to_json()))
    r.sadd(K.incidents_open, gap.id)
    done = cli(redis_url, "incidents", "false-positive", gap.id, "--by", "erin")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{gap.id} false positive (a gap is not scored: nothing goes back into training)"
    assert inc.get(r, gap.id).false_positive is not None and not inc.get(r, gap.id).is_open
    anomaly = open_incident(r)
    done = cli(redis_url, "incidents", "false-positive", anomaly.id)
    assert done.stdout.strip() == f"{anomaly.id} false positive (its windows go back into the next training)"
    # a level shift: training ignores the mark (the decision is `accept`), so it is refused, nothing stored
    shift = replace(Incident.open("payments", "level_shift", 400, 2000.0), severity=Severity.WARNING, score=75.0)
    r.hset(K.incidents, shift.id, json.dumps(shift.to_json()))
    r.sadd(K.incidents_open, shift.id)
    done = cli(redis_url, "incidents", "false-positive", shift.id)
    assert done.returncode == 1 and f"incidents accept {shift.id}" in done.stderr, (done.stdout, done.stderr)
    assert inc.get(r, shift.id).false_positive is None and inc.get(r, shift.id).is_open


def test_cli_list_shows_the_score_in_whole_points_rounded_down() -> None:
    """`incidents list` prints a score as the app does (`score_text`): 99.99 is 99, never a rounded 100,
    and 69.6 is 69."""
    from anomalydesk.commands.incidents import _table

    for score, shown in ((99.99, "99"), (69.6, "69"), (88.0, "88")):
        incident = replace(Incident.open("payments", "anomaly", 100, 500.0), score=score, severity=Severity.CRITICAL)
        (line,) = _table([incident], time.time())
        assert f" critical {shown:>5}  " in line, line


def test_cli_list_lines_up_every_state_and_json_is_unchanged(r: redis.Redis, redis_url: str) -> None:
    """A new user snoozed an incident and `incidents list` fell out of line: "snoozed until 2026-01-31
    23:00:00 CET" is wider than the state column was (14 characters), and so is "accepted as new
    normal". Every column is as wide as its widest cell now: severity, score, start and window count
    begin at the same place in every row, whatever the state; `--json` is the records, as before."""
    import re

    from anomalydesk.detect.incident_model import IncidentState

    states = {"payments": "open", "orders": "ack", "users": "snooze", "gateway": "false-positive",
              "inventory": "accept", "svc-6": "resolve"}  # fmt: skip
    ids = {}
    for n, (service, action) in enumerate(states.items()):
        if action == "accept":  # a level shift, stored as the detector stores one
            incident = replace(Incident.open(service, "level_shift", 400, 2000.0), severity=Severity.WARNING,
                               score=75.0, windows=3)  # fmt: skip
            r.hset(K.incidents, incident.id, json.dumps(incident.to_json()))
            r.sadd(K.incidents_open, incident.id)
        else:
            incident = open_incident(r, service, 100 + 10 * n, 104 + 10 * n)
        ids[service] = incident.id
        if action != "open":
            done = cli(redis_url, "incidents", action, incident.id, *(["2h"] if action == "snooze" else []))
            assert done.returncode == 0, done.stderr
    listed = cli(redis_url, "incidents", "list", "--all")
    assert listed.returncode == 0, listed.stderr
    lines = {line.split(" ", 1)[0]: line for line in listed.stdout.splitlines()}
    assert sorted(lines) == sorted(ids.values()), listed.stdout
    labels = {"open": "open", "ack": "acknowledged", "snooze": "snoozed until ", "resolve": "resolved",
              "false-positive": IncidentState.FALSE_POSITIVE.label, "accept": IncidentState.ACCEPTED.label}  # fmt: skip
    for service, action in states.items():
        assert labels[action] in lines[ids[service]], lines[ids[service]]
    # where the columns after the state begin (the severity, the start time: the last time in the row, a
    # snooze's end comes before it) and where the window count (right-aligned) ends: the same in every row
    for pattern in (r" warning ", r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"):
        starts = {[m.start() for m in re.finditer(pattern, line)][-1] for line in lines.values()}
        assert len(starts) == 1, (pattern, listed.stdout)
    assert len({re.search(r" win\b", line).end() for line in lines.values()}) == 1, listed.stdout

    as_json = cli(redis_url, "incidents", "list", "--all", "--json")
    assert as_json.returncode == 0, as_json.stderr
    stored = {i.id: i.to_json() for i in inc.list_incidents(r, open_only=False)}
    assert {i["id"]: i for i in json.loads(as_json.stdout)["incidents"]} == stored
    assert set(stored) == set(ids.values())
