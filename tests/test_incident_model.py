"""The incident model (`detect.incident_model`): severities in order, and incidents, alerts and
silences that read and write exactly the formats a user's Redis already holds.

The records below were written by the release before these types existed (its `new_incident`,
`make_alert`, incident flow and `json.dumps`), byte for byte: each must load, and write back the same
bytes, except `"candidate": null`, which is now left out (read the same; docs/alerts.md).
"""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, replace
from datetime import UTC

import pytest
import redis

from anomalydesk import config
from anomalydesk.detect import incidents as inc
from anomalydesk.detect.incident_model import (
    SEVERITIES,
    SEVERITY_RANK,
    Alert,
    Candidate,
    Incident,
    Mark,
    Severity,
    Silence,
    severity_of,
)
from anomalydesk.detect.webhooks import Route, payload
from anomalydesk.store.keys import Keys

K = Keys()

# --- today's formats, as written before (json.dumps of the old dicts) -----------------------------------------
OPENED = r'{"id": "users:a100", "service": "users", "kind": "anomaly", "status": "open", "opened": "1970-01-01T00:08:20.000Z", "first_window": 100, "last_window": 101, "windows": 2, "score": 80.0, "severity": "warning", "reasons": [{"feature": "rate_5xx", "actual": 0.2, "expected": 0.004, "text": "rate_5xx off"}], "model_version": 3, "acked": null, "snoozed_until": null, "resolved": null, "false_positive": null, "silenced": false, "rev": 0, "named": ["rate_5xx"]}'  # noqa: E501
STREAK = r'{"id": "users:a100", "service": "users", "kind": "anomaly", "status": "open", "opened": "1970-01-01T00:08:20.000Z", "first_window": 100, "last_window": 102, "windows": 3, "score": 85.0, "severity": "warning", "reasons": [{"feature": "latency_p95_ms", "actual": 0.2, "expected": 0.004, "text": "latency_p95_ms off"}], "model_version": 3, "acked": null, "snoozed_until": null, "resolved": null, "false_positive": null, "silenced": false, "rev": 1, "named": ["rate_5xx"], "candidate": {"feature": "latency", "windows": 1}}'  # noqa: E501
SNOOZED = r'{"id": "users:a100", "service": "users", "kind": "anomaly", "status": "open", "opened": "1970-01-01T00:08:20.000Z", "first_window": 100, "last_window": 103, "windows": 4, "score": 95.0, "severity": "critical", "reasons": [{"feature": "latency_p95_ms", "actual": 0.2, "expected": 0.004, "text": "latency_p95_ms off"}], "model_version": 3, "acked": null, "snoozed_until": "1970-01-01T00:16:40.000Z", "resolved": null, "false_positive": null, "silenced": false, "rev": 3, "named": ["latency", "rate_5xx"], "candidate": null, "snoozed_until_epoch": 1000.0, "snoozed_by": {"by": "bob", "at": "2026-11-26T10:00:00.000Z"}}'  # noqa: E501
RULE_RESOLVED = r'{"id": "payments:r500", "service": "payments", "kind": "rule", "status": "resolved", "opened": "1970-01-01T00:41:40.000Z", "first_window": 500, "last_window": 500, "windows": 1, "score": 100.0, "severity": "critical", "reasons": [{"feature": "kpi_out_of_range", "actual": 3, "expected": 0, "text": "3 business values outside their expected range"}], "model_version": null, "acked": null, "snoozed_until": null, "resolved": {"by": "detector", "at": "1970-01-01T00:41:45.000Z", "how": "auto"}, "false_positive": null, "silenced": true, "rev": 1}'  # noqa: E501
GAP_RESOLVED = r'{"id": "(system):g10", "service": "(system)", "kind": "gap", "status": "resolved", "opened": "1970-01-01T00:00:50.000Z", "first_window": 10, "last_window": 11, "windows": 2, "score": 100.0, "severity": "warning", "reasons": [{"feature": "requests", "actual": 0, "expected": null, "text": "no service sent anything (3 services silent)"}], "model_version": null, "acked": null, "snoozed_until": null, "resolved": {"by": "detector", "at": "1970-01-01T00:01:00.000Z", "how": "traffic returned"}, "false_positive": null, "silenced": false, "rev": 3, "services": 3, "resolved_window": 12}'  # noqa: E501
OPERATOR_CLOSED = r'{"id": "orders:a7", "service": "orders", "kind": "anomaly", "status": "resolved", "opened": "2026-11-26T10:00:00.000Z", "first_window": 7, "last_window": 9, "windows": 3, "score": 91.5, "severity": "critical", "reasons": [], "model_version": 2, "acked": {"by": "alice", "at": "2026-11-26T10:01:00.000Z"}, "snoozed_until": null, "resolved": {"by": "alice", "at": "2026-11-26T10:02:00.000Z", "how": "false positive"}, "false_positive": {"by": "alice", "at": "2026-11-26T10:02:00.000Z"}, "silenced": false, "rev": 4}'  # noqa: E501
NEW_ALERT = r'{"id": "users:a100:101:new", "kind": "new", "incident_id": "users:a100", "time": "1970-01-01T00:08:25.000Z", "window": 101, "service": "users", "score": 80.0, "severity": "warning", "reasons": [{"feature": "rate_5xx", "actual": 0.2, "expected": 0.004, "text": "rate_5xx off"}], "model_version": 3, "message": "users: anomaly (warning, score 80) \u2014 rate_5xx off"}'  # noqa: E501
SILENCED_ALERT = r'{"id": "payments:r500:500:rule", "kind": "rule", "incident_id": "payments:r500", "time": "1970-01-01T00:41:40.000Z", "window": 500, "service": "payments", "score": 100.0, "severity": "critical", "reasons": [{"feature": "kpi_out_of_range", "actual": 3, "expected": 0, "text": "3 business values outside their expected range"}], "model_version": null, "message": "payments: business value out of range (critical) \u2014 3 business values outside their expected range", "silenced": true}'  # noqa: E501
GAP_ALERT = r'{"id": "(system):g10:10:new", "kind": "new", "incident_id": "(system):g10", "time": "1970-01-01T00:00:50.000Z", "window": 10, "service": "(system)", "score": 100.0, "severity": "warning", "reasons": [{"feature": "requests", "actual": 0, "expected": null, "text": "no service sent anything (3 services silent)"}], "model_version": null, "message": "no traffic from any service since 1970-01-01T00:00:50.000Z: a gap in the data (producers, network or collector down?), not scored"}'  # noqa: E501
SILENCE = '{"id": "abc123def456", "pattern": "svc-*", "start": 1000.0, "end": 2000.5, "reason": "deploy", "by": "ops"}'


# --- severities -----------------------------------------------------------------------------------------------
def test_severities_are_ordered_by_one_rank_table_not_alphabetically() -> None:
    info, warning, critical = Severity.INFO, Severity.WARNING, Severity.CRITICAL
    assert info < warning < critical and critical > warning >= warning > info
    assert sorted([critical, info, warning]) == [info, warning, critical]  # as strings: critical, info, warning
    assert max(warning, critical, info) is critical and min(critical, warning) is warning
    assert [s.rank for s in Severity] == [0, 1, 2] and {info: 0, warning: 1, critical: 2} == SEVERITY_RANK
    assert critical > "warning" and warning > "info"  # a plain string compares by rank too
    assert SEVERITIES == ("info", "warning", "critical") and tuple(Severity) == SEVERITIES
    with pytest.raises(ValueError):
        _ = warning < "urgent"


def test_a_severity_is_its_json_string() -> None:
    assert Severity("critical") is Severity.CRITICAL and Severity.CRITICAL == "critical"
    assert f"{Severity.WARNING}" == "warning" and Severity.WARNING.upper() == "WARNING"
    assert json.dumps({"s": Severity.INFO}) == '{"s": "info"}'
    assert {"warning": 1}[Severity.WARNING] == 1


def test_severity_of_uses_the_configured_cut_offs_or_the_given_ones() -> None:
    assert severity_of(config.SEVERITY_WARNING - 0.01) is Severity.INFO
    assert severity_of(config.SEVERITY_WARNING) is Severity.WARNING
    assert severity_of(config.SEVERITY_CRITICAL) is Severity.CRITICAL
    assert severity_of(50.0, warning=40.0, critical=60.0) is Severity.WARNING


# --- incidents ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [OPENED, STREAK, RULE_RESOLVED, GAP_RESOLVED, OPERATOR_CLOSED],
                         ids=["opened", "streak", "rule-resolved", "gap-resolved", "operator-closed"])
def test_incident_records_of_today_load_and_write_back_byte_for_byte(raw: str) -> None:
    incident = Incident.from_json(raw)
    assert json.dumps(incident.to_json()) == raw
    assert Incident.from_json(raw.encode()) == incident == Incident.from_json(json.loads(raw))


def test_an_incident_record_reads_into_typed_fields() -> None:
    streak = Incident.from_json(STREAK)
    assert streak.is_open and streak.severity is Severity.WARNING and streak.named == ("rate_5xx",)
    assert streak.candidate == Candidate("latency", 1) and streak.rev == 1 and streak.model_version == 3
    closed = Incident.from_json(OPERATOR_CLOSED)
    assert closed.acked == Mark("alice", "2026-11-26T10:01:00.000Z")
    assert closed.resolved == Mark("alice", "2026-11-26T10:02:00.000Z", "false positive")
    gap = Incident.from_json(GAP_RESOLVED)
    assert (gap.kind, gap.services, gap.resolved_window, gap.resolved and gap.resolved.how) == (
        "gap", 3, 12, "traffic returned")
    snoozed = Incident.from_json(SNOOZED)
    assert snoozed.snoozed_at(999.0) and not snoozed.snoozed_at(1000.0)
    assert snoozed.snoozed_by == Mark("bob", "2026-11-26T10:00:00.000Z")


def test_a_null_candidate_reads_as_none_and_is_left_out() -> None:
    snoozed = Incident.from_json(SNOOZED)
    assert snoozed.candidate is None
    expected = {k: v for k, v in json.loads(SNOOZED).items() if k != "candidate"}
    written = json.dumps(snoozed.to_json())
    assert json.loads(written) == expected and written == json.dumps(expected)  # the rest in the same order


def test_an_older_record_missing_keys_loads_with_defaults_and_unknown_keys_are_kept() -> None:
    old = {"id": "orders:a5", "service": "orders", "status": "open", "first_window": 5, "score": 72,
           "severity": "warning", "owner": "team-x", "situation": {"id": "s1"}}
    incident = Incident.from_json(old)
    assert (incident.kind, incident.last_window, incident.windows, incident.rev) == ("anomaly", 5, 0, 0)
    assert incident.score == 72.0 and incident.acked is None and incident.named is None and not incident.silenced
    assert incident.extra == {"owner": "team-x", "situation": {"id": "s1"}}
    written = incident.to_json()
    assert written["owner"] == "team-x" and written["situation"] == {"id": "s1"} and list(written)[-2:] == [
        "owner", "situation"]
    with pytest.raises(ValueError, match="without id"):
        Incident.from_json({"service": "orders"})
    with pytest.raises(ValueError, match="JSON object"):
        Incident.from_json("[1, 2]")


def test_incidents_are_frozen_and_change_by_revision() -> None:
    opened = Incident.open("payments", "anomaly", 42, 210.0)
    assert (opened.id, opened.opened, opened.first_window, opened.last_window) == (
        "payments:a42", "1970-01-01T00:03:30.000Z", 42, 42)
    assert Incident.open("payments", "rule", 42, 0.0).id == "payments:r42"
    assert Incident.open("(system)", "gap", 42, 0.0).id == "(system):g42"
    with pytest.raises(FrozenInstanceError):
        opened.score = 99.0  # type: ignore[misc]
    grown = opened.revised(last_window=43, severity="critical")
    assert grown.rev == 1 and grown.severity is Severity.CRITICAL and opened.rev == 0 and opened.last_window == 42
    reasons = [{"feature": "requests", "text": "x"}]
    with_reasons = replace(opened, reasons=reasons)
    reasons[0]["text"] = "changed afterwards"
    assert with_reasons.reasons == ({"feature": "requests", "text": "x"},)  # a copy, not the caller's list
    with pytest.raises(ValueError, match="kind"):
        Incident.open("payments", "outage", 1, 0.0)


# --- alerts ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [NEW_ALERT, SILENCED_ALERT, GAP_ALERT], ids=["new", "silenced-rule", "gap"])
def test_alerts_of_today_load_and_write_back_byte_for_byte(raw: str) -> None:
    alert = Alert.from_json(raw)
    assert json.dumps(alert.to_json()) == raw
    assert Alert.from_entry({b"alert": raw.encode()}) == alert == Alert.from_entry({"alert": raw})
    # the webhook's JSON body is the logged alert itself
    assert json.dumps(payload(Route("all", "http://127.0.0.1/hook"), alert)) == raw


def test_an_alert_made_about_an_incident_is_the_one_the_detector_always_wrote() -> None:
    incident = Incident.from_json(OPENED)
    alert = Alert.about(incident, kind="new", window=101, window_start=505.0, score=80.0, severity="warning",
                        reasons=list(incident.reasons), model_version=3,
                        message="users: anomaly (warning, score 80) \u2014 rate_5xx off")  # fmt: skip
    assert json.dumps(alert.to_json()) == NEW_ALERT
    assert alert.epoch == 505.0 and not alert.silenced
    muted = Alert.about(incident, kind="resolved", window=102, window_start=510.0, score=12.345, severity="info",
                        reasons=[], model_version=None, message="m", silenced=True)  # fmt: skip
    # the score rounded down to 2 decimals (stored_score)
    assert muted.to_json()["silenced"] is True and muted.score == 12.34 and muted.id == "users:a100:102:resolved"
    with pytest.raises(ValueError, match="alert kind"):
        Alert.about(incident, kind="situation", window=1, window_start=0.0, score=0.0, severity="info", reasons=[],
                    model_version=None, message="")  # fmt: skip


def test_an_alert_entry_is_read_from_its_one_documented_field() -> None:
    assert Alert.from_entry({b"alert": b"not json"}) is None
    assert Alert.from_entry({b"other": NEW_ALERT.encode()}) is None  # the JSON is only ever in `alert`
    assert Alert.from_entry({b"service": b"users", b"kind": b"new"}) is None  # fields are not an alert
    assert Alert.from_entry({}) is None and Alert.from_entry(None) is None
    extended = json.loads(NEW_ALERT) | {"situation_id": "sit-1", "origins": ["db"]}
    alert = Alert.from_json(json.dumps(extended))
    assert alert.extra == {"situation_id": "sit-1", "origins": ["db"]} and alert.to_json() == extended


# --- silences -------------------------------------------------------------------------------------------------
def test_a_silence_record_of_today_loads_and_writes_back_byte_for_byte() -> None:
    silence = Silence.from_json(SILENCE)
    assert json.dumps(silence.to_json()) == SILENCE
    assert silence.covers("svc-7", 1500.0) and not silence.covers("svc-7", 2000.5) and not silence.covers("db", 1500)
    shown = silence.as_dict()
    assert shown["start"] == "1970-01-01T00:16:40.000Z" and shown["end_epoch"] == 2000.5
    assert Silence.from_json(shown) == silence  # the CLI's shape reads back too


# --- in a real Redis ------------------------------------------------------------------------------------------
def test_records_written_by_hand_in_todays_format_load_and_are_acted_on(r: redis.Redis) -> None:
    r.hset(K.incidents, mapping={"users:a100": SNOOZED, "payments:r500": RULE_RESOLVED})
    r.sadd(K.incidents_open, "users:a100")
    r.hset(K.silences, "abc123def456", SILENCE)
    r.xadd(K.alerts_log, {"alert": NEW_ALERT})

    assert [i.id for i in inc.list_incidents(r)] == ["payments:r500", "users:a100"]  # newest last window first
    assert [i.id for i in inc.list_incidents(r, open_only=True)] == ["users:a100"]
    assert inc.get(r, "payments:r500") == Incident.from_json(RULE_RESOLVED)
    assert inc.list_silences(r) == [Silence.from_json(SILENCE)]
    ((_, fields),) = r.xrange(K.alerts_log)
    assert Alert.from_entry(fields) == Alert.from_json(NEW_ALERT)

    acked = inc.ack(r, "users:a100", who="dana")
    stored = json.loads(r.hget(K.incidents, "users:a100"))
    before = {k: v for k, v in json.loads(SNOOZED).items() if k != "candidate"}
    assert stored == {**before, "acked": {"by": "dana", "at": stored["acked"]["at"]}, "rev": 4}
    assert acked == Incident.from_json(stored)


# --- the one vocabulary of incident states (the app's table and details, the CLI's list) ---------------
def test_state_at_names_every_state_once_with_its_label() -> None:
    from datetime import timedelta, timezone

    from anomalydesk.detect.incident_model import STATE_LABELS, IncidentState, local_time

    base = replace(Incident.open("payments", "anomaly", 20, 100.0), windows=1)
    mark = Mark("ops", "2026-01-31T22:00:00.000Z")
    cases = {
        IncidentState.OPEN: base,
        IncidentState.ACKNOWLEDGED: replace(base, acked=mark),
        IncidentState.SNOOZED: replace(base, acked=mark, snoozed_until="x", snoozed_until_epoch=1_800_000_000.0),
        IncidentState.RESOLVED: replace(base, status="resolved", resolved=Mark("detector", "t", "auto"), acked=mark),
        IncidentState.FALSE_POSITIVE: replace(base, status="resolved", resolved=Mark("ops", "t", "false positive"),
                                              false_positive=mark),
        IncidentState.ACCEPTED: replace(base, kind="level_shift", status="resolved", accepted=mark,
                                        resolved=Mark("ops", "t", "accepted")),
    }  # fmt: skip
    now = 1_799_999_000.0
    assert {state: incident.state_at(now) for state, incident in cases.items()} == {s: s for s in cases}
    assert set(STATE_LABELS) == set(IncidentState) and STATE_LABELS[IncidentState.FALSE_POSITIVE] == "false positive"
    assert [s for s in IncidentState if s.closed] == [IncidentState.RESOLVED, IncidentState.FALSE_POSITIVE,
                                                      IncidentState.ACCEPTED]
    assert cases[IncidentState.SNOOZED].state_at(1_800_000_001.0) is IncidentState.ACKNOWLEDGED  # it ran out
    plus_one = timezone(timedelta(hours=1), "CET")
    assert local_time(1_800_000_000.0, plus_one) == "2027-01-15 09:00:00 CET"
    assert local_time(1_800_000_000.0, UTC) == "2027-01-15 08:00:00 UTC"
    snoozed = cases[IncidentState.SNOOZED]
    assert snoozed.state_text(now, plus_one) == "snoozed until 2027-01-15 09:00:00 CET"
    assert cases[IncidentState.FALSE_POSITIVE].state_text(now) == "false positive"


def test_duration_runs_on_while_open_and_stops_at_the_last_window() -> None:
    incident = replace(Incident.open("payments", "anomaly", 20, 100.0), last_window=23, windows=4)
    assert incident.duration(5.0, now=110.0) == 20.0  # windows 20…23 of 5 s: until the end of the last one
    assert incident.duration(5.0, now=400.0) == 300.0  # still open: it lasts until now
    closed = replace(incident, status="resolved", resolved=Mark("detector", "t", "auto"))
    assert closed.duration(5.0, now=400.0) == 20.0


def test_a_score_that_never_reaches_100_never_reads_100() -> None:
    """The calibration's rising tail gives 99.997 for a 5xx ratio 1,000 × normal: it is stored as 99.99
    and shown as 99, and a score just under the threshold is not shown as the threshold."""
    from anomalydesk.detect.incident_model import score_text, stored_score

    assert stored_score(99.997) == 99.99 and score_text(99.997) == "99" and score_text(stored_score(99.9999)) == "99"
    assert score_text(69.6) == "69" and score_text(70.0) == "70" and stored_score(69.999) == 69.99
    assert score_text(float("nan")) == "–" and stored_score(35.129) == 35.12
    two_decimals = [i / 100 for i in range(10_001)]  # written once, read back and written again: unchanged
    assert [stored_score(x) for x in two_decimals] == two_decimals
    assert stored_score(72.07) == 72.07 and stored_score(81.85) == 81.85
