"""`anomalydesk app --check SECONDS` in a subprocess against a real redis-server: report shape, no data left."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gui


def _run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    return subprocess.run([sys.executable, "-m", "anomalydesk.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


def test_check_exercises_every_panel_and_leaves_no_data(redis_url, r):
    r.set("user:data", "keep me")
    before = sorted(r.scan_iter("*"))
    done = _run("app", "--check", "90", "--redis", redis_url)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert set(report) == {"ok", "checks", "duration_s"}
    assert report["ok"] is True
    expected = {"window", "connection", "subscription", "demo", "live", "sketches", "training",
                "incidents_and_notification", "cleanup"}  # fmt: skip
    assert set(report["checks"]) == expected
    for name, check in report["checks"].items():
        assert set(check) == {"ok", "detail"} and check["ok"], (name, check)
    assert "in-window banner" in report["checks"]["incidents_and_notification"]["detail"]  # offscreen: no tray
    assert sorted(r.scan_iter("*")) == before
    assert r.get("user:data") == b"keep me"


def test_check_notifies_under_the_app_title(redis_url):
    """Its test notification comes from `config.APP_TITLE`, as the app's own do: it came from the
    program's name (Qt names a notification's sender after the application), not "AnomalyDesk"."""
    from anomalydesk import config

    done = _run("app", "--check", "90", "--redis", redis_url)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    detail = json.loads(done.stdout)["checks"]["incidents_and_notification"]["detail"]
    sender = re.search(r"notified as (.+?) via ", detail)
    assert sender is not None, detail
    assert sender.group(1) == config.APP_TITLE == "AnomalyDesk", detail


def test_check_reports_an_unreachable_server_and_exits_1(redis_url):
    from conftest import free_port

    done = _run("app", "--check", "8", "--redis", f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 1, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["ok"] is False
    assert report["checks"]["connection"]["ok"] is False


def test_check_refuses_a_non_positive_duration():
    done = _run("app", "--check", "0", timeout=60)
    assert done.returncode == 2
    assert "--check takes a positive number" in done.stderr
