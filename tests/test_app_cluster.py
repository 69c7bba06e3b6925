"""The desktop app on a real local Redis Cluster (3 primaries), and its readers' supervisor.

On a cluster the fingerprint streams of different services sit in different slots, which one XREAD
cannot span: the app reads them per stream (a pipeline) and must keep receiving live fingerprints
and alerts. Before that, the cross-slot XREAD raised `RedisClusterException` — not a `RedisError` —
which ended the supervisor silently: the window said "connected" and nothing arrived any more.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from anomalydesk.store import connection
from anomalydesk.store.keys import Keys
from app_support import qloop, run  # noqa: F401  (fixture)
from test_app_incidents import close_app, open_app, raise_alert
from test_cluster import LocalCluster

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_level_fail("WARNING"),
              pytest.mark.qt_log_ignore("This plugin does not support")]  # the offscreen platform says so


@pytest.fixture()
def cluster(tmp_path: Path):
    nodes = LocalCluster(tmp_path / "cluster", primaries=3)
    yield nodes
    nodes.stop()


def test_live_fingerprints_and_alerts_reach_the_app_on_a_cluster(qtbot, qloop, cluster):  # noqa: F811
    rc = connection.connect(cluster.url)
    assert isinstance(rc, redis.RedisCluster)
    app = open_app(qtbot, cluster.url)
    try:
        run(qtbot, app.actions.backfill(30 * 60, 3), timeout=120)
        services = {"gateway", "users", "orders"}
        qtbot.waitUntil(lambda: services <= set(app.state.services), timeout=20_000)
        slots = {rc.keyslot(Keys().fingerprints(s)) for s in services}
        owners = {rc.get_node_from_key(Keys().fingerprints(s)).port for s in services}
        assert len(slots) == 3 and len(owners) >= 2, owners  # one XREAD could not read these streams
        qtbot.waitUntil(lambda: all(len(app.state.live.buffer(s)) > 0 for s in services), timeout=20_000)

        # live traffic: new windows keep arriving in every service's buffer
        run(qtbot, app.actions.start_demo(300, 3))
        newest = {s: app.state.live.buffer(s).view()[-1, 0] for s in services}
        qtbot.waitUntil(lambda: all(app.state.live.buffer(s).view()[-1, 0] > newest[s] for s in services),
                        timeout=30_000)  # fmt: skip

        # an alert published on the cluster reaches the incidents table, and an ack is stored
        alert = raise_alert(rc, "payments", int(time.time() // 5))
        qtbot.waitUntil(lambda: alert["incident_id"] in app.state.incidents.incidents, timeout=20_000)
        assert run(qtbot, app.actions.incident_action("ack", alert["incident_id"])) == "acknowledged"
        assert b'"acked"' in rc.hget(Keys().incidents, alert["incident_id"])
        assert app.state.connection.status == "connected"
    finally:
        run(qtbot, app.actions.stop_demo())
        close_app(qtbot, app)
        rc.close()


def test_an_unexpected_reader_failure_reconnects_instead_of_ending(qtbot, qloop, redis_url, r, monkeypatch):  # noqa: F811
    from anomalydesk.app.services.session import Session

    original = Session._status_loop
    failures, restarts = [], []

    async def fails_once(self):
        if not failures:
            failures.append(time.time())
            raise ValueError("a reader bug")
        restarts.append(time.time())
        await original(self)

    monkeypatch.setattr(Session, "_status_loop", fails_once)
    app = open_app(qtbot, redis_url)
    try:
        qtbot.waitUntil(lambda: bool(restarts) and app.state.connection.status == "connected"
                        and app.session.caught_up.is_set(), timeout=20_000)  # fmt: skip
        assert app.state.connection.attempts == 0  # reconnected after the failure, readers running again
        alert = raise_alert(r, "payments", 4000)  # the readers run again: alerts still arrive
        qtbot.waitUntil(lambda: alert["incident_id"] in app.state.incidents.incidents, timeout=20_000)
    finally:
        close_app(qtbot, app)


def test_app_check_passes_on_a_cluster_and_leaves_no_key_on_any_primary(cluster):
    rc = connection.connect(cluster.url)
    rc.set("user:data", "keep me")
    before = sorted(rc.scan_iter("*", target_nodes=redis.RedisCluster.PRIMARIES))
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run([sys.executable, "-m", "anomalydesk.cli", "app", "--check", "120", "--redis", cluster.url],
                          capture_output=True, text=True, timeout=240, env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert all(check["ok"] for check in report["checks"].values()), report
    assert sorted(rc.scan_iter("*", target_nodes=redis.RedisCluster.PRIMARIES)) == before
    rc.close()
