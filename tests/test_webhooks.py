"""Webhook routing of alerts against local HTTP receivers and a real Redis."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from anomalydesk.config import ALERT_LOG_MAXLEN
from anomalydesk.detect.incident_model import Alert, Incident
from anomalydesk.detect.webhooks import (
    Notifier,
    Route,
    RoutesError,
    dead_letter_key,
    load_routes,
    parse_routes,
    payload,
    route_status,
    routes_summary,
)
from anomalydesk.store.connection import connect_async
from anomalydesk.store.keys import Keys
from conftest import free_port

KEYS = Keys()
FAST = {"backoff_base": 0.05, "backoff_max": 0.2, "block_ms": 100}


class Receiver:
    """A webhook receiver on a fixed port; `answer(n_for_this_alert)` picks the status code."""

    def __init__(self, port: int | None = None, answer: Callable[[int], int] = lambda _n: 200):
        self.port = port or free_port()
        self.answer = answer
        self.received: list[tuple[dict, dict]] = []  # (headers, body)
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.received.append((headers, body))
                seen = sum(1 for h, _ in receiver.received if h["idempotency-key"] == headers["idempotency-key"])
                self.send_response(receiver.answer(seen))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def ids(self) -> list[str]:
        return [h["idempotency-key"] for h, _ in self.received]


class RunningNotifier:
    """A Notifier on its own event loop in a thread, as `anomalydesk notify` runs it."""

    def __init__(self, redis_url: str, routes: list[Route], **kwargs: object):
        self.redis_url, self.routes, self.kwargs = redis_url, routes, kwargs
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        ar = connect_async(self.redis_url)
        notifier = Notifier(ar, self.routes, consumer="test-notifier", start_id="0", **self.kwargs)  # type: ignore[arg-type]
        await notifier.ensure_groups()
        self._ready.set()
        try:
            await notifier.run(self._stop)
        finally:
            await ar.aclose()

    def __enter__(self) -> RunningNotifier:
        self._thread.start()
        assert self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive()


def log_alert(r: redis.Redis, service: str, severity: str, kind: str = "new", window: int = 100) -> dict:
    """Append an alert to the alert stream the way detect/incidents.py does."""
    incident = Incident.open(service, "anomaly", window, window * 5.0)
    alert = Alert.about(incident, kind=kind, window=window, window_start=window * 5.0, score=93.0,
                        severity=severity, reasons=[{"feature": "latency_p95_ms", "actual": 900.0, "expected": 120.0,
                                                     "text": "p95 latency 900 ms, usually 120 ms"}],
                        model_version=1, message="p95 latency 900 ms, usually 120 ms").to_json()
    r.xadd(KEYS.alerts_log, {"alert": json.dumps(alert)}, maxlen=ALERT_LOG_MAXLEN, approximate=True)
    return alert


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


def test_routes_by_severity_and_service_json_and_slack(redis_url: str, r: redis.Redis, receiver: Receiver) -> None:
    slack = Receiver().start()
    routes = [Route("all-json", receiver.url),
              Route("oncall", slack.url, format="slack", severities=("critical",), services=("pay*",))]
    try:
        with RunningNotifier(redis_url, routes, **FAST):
            a1 = log_alert(r, "payments", "critical")
            a2 = log_alert(r, "users", "critical", window=101)
            a3 = log_alert(r, "payments", "warning", window=102)
            wait_for(lambda: len(receiver.received) == 3 and len(slack.received) == 1, "deliveries")
    finally:
        slack.stop()
    assert [body for _, body in receiver.received] == [a1, a2, a3]  # the alert exactly, in order
    headers, message = slack.received[0]
    assert headers["x-anomalydesk-incident-id"] == a1["incident_id"]
    assert "payments" in message["text"] and "critical" in message["text"] and a1["id"] in message["text"]
    assert message["blocks"][0]["type"] == "section"
    status = {s["name"]: s for s in route_status(r, routes)}
    assert status["all-json"]["delivered"] == 3 and status["oncall"]["delivered"] == 1
    assert status["oncall"]["skipped"] == 2 and status["oncall"]["pending"] == 0


def test_a_failed_answer_is_retried_and_duplicates_carry_the_same_ids(redis_url: str, r: redis.Redis) -> None:
    # the receiver stores the alert but answers 500 the first time: the notifier must send it again
    flaky = Receiver(answer=lambda n: 500 if n == 1 else 200).start()
    try:
        with RunningNotifier(redis_url, [Route("flaky", flaky.url)], **FAST):
            alerts = [log_alert(r, "orders", "warning", window=w) for w in (200, 201)]
            wait_for(lambda: len(flaky.received) == 4, "two attempts per alert")
    finally:
        flaky.stop()
    for alert in alerts:
        copies = [(h, b) for h, b in flaky.received if b["id"] == alert["id"]]
        assert len(copies) == 2
        assert {b["incident_id"] for _, b in copies} == {alert["incident_id"]}
        assert {h["x-anomalydesk-incident-id"] for h, _ in copies} == {alert["incident_id"]}
        assert {h["idempotency-key"] for h, _ in copies} == {alert["id"]}
    assert r.xlen(dead_letter_key(KEYS)) == 0


def test_a_receiver_down_for_a_while_gets_everything_after_it_recovers(redis_url: str, r: redis.Redis) -> None:
    down = Receiver()  # not started: connections are refused
    route = Route("later", down.url)
    with RunningNotifier(redis_url, [route], **FAST):
        alerts = [log_alert(r, "inventory", "critical", window=w) for w in range(300, 305)]
        wait_for(lambda: int(r.hget(KEYS.webhook_stats, "later:failed_attempts") or 0) >= 3,
                 "failed attempts while the receiver is down")
        down.start()
        try:
            wait_for(lambda: {b["id"] for _, b in down.received} == {a["id"] for a in alerts}, "all alerts")
        finally:
            down.stop()
    first_seen = list(dict.fromkeys(down.ids()))
    assert first_seen == [a["id"] for a in alerts]  # in the order they were logged
    assert r.xlen(dead_letter_key(KEYS)) == 0


def test_the_notifier_resumes_pending_deliveries_after_a_restart(redis_url: str, r: redis.Redis) -> None:
    down = Receiver()
    route = Route("resume", down.url)
    with RunningNotifier(redis_url, [route], **FAST):
        alert = log_alert(r, "gateway", "warning", window=400)
        wait_for(lambda: int(r.hget(KEYS.webhook_stats, "resume:failed_attempts") or 0) >= 1,
                 "a failed attempt")
    assert route_status(r, [route])[0]["pending"] == 1  # read, not delivered: still pending
    down.start()
    try:
        with RunningNotifier(redis_url, [route], **FAST):
            wait_for(lambda: alert["id"] in down.ids(), "delivery after the restart")
    finally:
        down.stop()
    assert route_status(r, [route])[0]["pending"] == 0


def test_a_permanently_failing_route_ends_in_the_dead_letter_stream(redis_url: str, r: redis.Redis) -> None:
    broken = Receiver(answer=lambda _n: 503).start()
    gone = Receiver(answer=lambda _n: 404).start()
    routes = [Route("broken", broken.url), Route("gone", gone.url)]
    try:
        with RunningNotifier(redis_url, routes, give_up_after=0.5, **FAST):
            alerts = [log_alert(r, "payments", "critical", window=w) for w in (500, 501)]
            wait_for(lambda: r.xlen(dead_letter_key(KEYS)) == 4, "four dead letters")
    finally:
        broken.stop()
        gone.stop()
    dead = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in r.xrange(dead_letter_key(KEYS))]
    by_route: dict[str, list[dict]] = {}
    for d in dead:
        by_route.setdefault(d["route"], []).append(d)
    assert sorted(json.loads(d["alert"])["id"] for d in by_route["broken"]) == sorted(a["id"] for a in alerts)
    assert all("HTTP 503" in d["error"] for d in by_route["broken"])
    # retried with backoff until too old; the next one, already as old by then, is given up after one try
    assert int(by_route["broken"][0]["attempts"]) >= 2 and int(by_route["broken"][1]["attempts"]) >= 1
    assert all("HTTP 404" in d["error"] and d["attempts"] == "1" for d in by_route["gone"])  # refused for good
    assert len(gone.received) == 2
    assert all(s["pending"] == 0 and s["dead"] == 2 for s in route_status(r, routes))


def test_silenced_alerts_are_not_sent(redis_url: str, r: redis.Redis, receiver: Receiver) -> None:
    with RunningNotifier(redis_url, [Route("quiet", receiver.url)], **FAST):
        alert = log_alert(r, "users", "critical", window=600)
        alert["silenced"] = True
        r.xadd(KEYS.alerts_log, {"alert": json.dumps(alert | {"id": "silenced-one"})})
        loud = log_alert(r, "users", "critical", window=601)
        wait_for(lambda: loud["id"] in receiver.ids(), "the alert after the silenced one")
    assert "silenced-one" not in receiver.ids()


def test_routes_file_is_validated_and_summarised_without_secrets(tmp_path) -> None:
    good = tmp_path / "routes.toml"
    good.write_text('[[route]]\nname = "slack"\nurl = "https://hooks.slack.com/services/T0/B0/SECRET"\n'
                    'format = "slack"\nseverities = ["critical"]\nheaders = { Authorization = "Bearer s3cret" }\n')
    summary = routes_summary(load_routes(good))
    assert summary == [{"name": "slack", "url": "https://hooks.slack.com/…", "format": "slack",
                        "severities": ["critical"], "services": ["*"],
                        "kinds": ["new", "escalated", "resolved", "rule", "level_shift"], "headers": ["Authorization"]}]
    assert "SECRET" not in json.dumps(summary) and "s3cret" not in json.dumps(summary)
    for raw, words in (
        ({"route": [{"name": "x", "url": "ftp://h/x"}]}, "url must be an http(s) URL"),
        ({"route": [{"name": "x", "url": "http://h/x", "severities": ["urgent"]}]}, "route[0].severities"),
        ({"route": [{"name": "x", "url": "http://h/x"}, {"name": "x", "url": "http://h/y"}]}, "repeated: x"),
        ({"route": []}, "no routes"),
    ):
        with pytest.raises(RoutesError, match=re.escape(words)):
            parse_routes(raw)


def test_notify_check_command(redis_url: str, tmp_path) -> None:
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"route": [{"name": "ops", "url": "http://127.0.0.1:9/hook"}]}))
    proc = subprocess.run([sys.executable, "-m", "anomalydesk.cli", "notify", "--routes", str(routes), "--check",
                           "--json", "--redis", redis_url], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["routes"][0]["name"] == "ops" and out["routes"][0]["started"] is False
    routes.write_text("{")
    bad = subprocess.run([sys.executable, "-m", "anomalydesk.cli", "notify", "--routes", str(routes), "--check",
                          "--redis", redis_url], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr


def test_the_notifier_survives_a_redis_restart(tmp_path, receiver: Receiver) -> None:
    from conftest import RedisServer

    server = RedisServer(tmp_path / "redis")
    try:
        with RunningNotifier(server.url, [Route("steady", receiver.url)], **FAST):
            first = log_alert(server.client(), "users", "warning", window=700)
            wait_for(lambda: first["id"] in receiver.ids(), "the alert before the restart")
            server.stop()  # without persistence: the stream and the consumer groups are gone
            server.start()
            r = server.client()
            wait_for(lambda: r.exists(KEYS.alerts_log) == 1, "the notifier recreating its group")
            second = log_alert(r, "users", "critical", window=701)
            wait_for(lambda: second["id"] in receiver.ids(), "the alert after the restart")
    finally:
        server.stop()


def test_a_slack_message_shows_the_score_in_whole_points_as_the_app_does() -> None:
    """The calibration's rising tail never reaches 100 (99.99 stored): a Slack message says "score 99",
    as the notification and the incident table do, not "99.99" or a rounded "100"."""
    incident = Incident.open("payments", "anomaly", 7, 35.0)
    alert = Alert.about(incident, kind="new", window=7, window_start=35.0, score=99.99, severity="critical",
                        reasons=[], model_version=1, message="requests 5 per window, usually 200")
    text = payload(Route("oncall", "http://127.0.0.1:9/hook", format="slack"), alert)["text"]
    assert "score 99 ·" in text, text
    assert payload(Route("all", "http://127.0.0.1:9/hook"), alert)["score"] == 99.99  # json: the alert as stored
