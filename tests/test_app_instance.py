"""One app per user, across processes: the real `anomalydesk app` twice, offscreen, against a real redis-server.

tests/test_app_panels.py::test_second_launch_focuses_the_first checks the socket handshake in one
process; this one runs two `python -m anomalydesk.cli app` processes with the same user config.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gui]

START_TIMEOUT_S = 120  # a deadline for a busy machine, not a measurement


def _wait_for_line(path: Path, text: str, pid: int, proc: subprocess.Popen) -> str:
    """The first line of the log at `path` written by process `pid` that contains `text`."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if text in line and f" {pid} " in line:
                    return line
        if proc.poll() is not None:
            pytest.fail(f"the first app exited with {proc.returncode} before logging {text!r}")
        time.sleep(0.1)
    pytest.fail(f"no {text!r} from process {pid} in {path} within {START_TIMEOUT_S} s")


def test_a_second_launch_exits_and_brings_the_first_to_the_front(tmp_path, redis_url):
    """The second process exits 0 saying the app is already running; the first logs the knock and raises its
    window (both lines carry the first's pid) and keeps running. Not proven: what a window manager does
    with the raise (offscreen has none)."""
    config_dir, log_dir = tmp_path / "config", tmp_path / "logs"
    config_dir.mkdir()
    (config_dir / "app.json").write_text(json.dumps({"version": 2, "run_detector": False}))
    env = {**os.environ, "ANOMALYDESK_CONFIG_DIR": str(config_dir), "ANOMALYDESK_LOG_DIR": str(log_dir),
           "QT_QPA_PLATFORM": "offscreen"}  # fmt: skip
    command = [sys.executable, "-m", "anomalydesk.cli", "app", "--redis", redis_url]
    log = log_dir / "app.log"
    with open(tmp_path / "first.err", "wb") as first_err:
        first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=first_err)
    try:
        _wait_for_line(log, "single instance: listening", first.pid, first)
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S)
        assert second.returncode == 0, second.stderr
        assert "already running" in second.stderr
        _wait_for_line(log, "a second launch asked this one to come to the front", first.pid, first)
        _wait_for_line(log, "main window brought to the front", first.pid, first)
        assert first.poll() is None  # the first keeps running
        listeners = [line for line in log.read_text(encoding="utf-8").splitlines() if "listening for later" in line]
        assert len(listeners) == 1 and f" {first.pid} " in listeners[0]  # the second never opened a window
        # `kill` quits like the menu's Quit: exit 0 with the window layout saved
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=START_TIMEOUT_S) == 0, (tmp_path / "first.err").read_text()
        assert json.loads((config_dir / "app.json").read_text())["geometry"]
    finally:
        first.terminate()
        try:
            first.wait(timeout=30)
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait()

