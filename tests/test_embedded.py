"""The embedded server: a real private redis-server started, found by other commands, and stopped."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from anomalydesk import config
from anomalydesk.store import embedded
from anomalydesk.store.embedded import EmbeddedServer, EmbeddedServerError
from conftest import free_port

CLI = [sys.executable, "-m", "anomalydesk.cli"]
TIMEOUT = 120  # seconds any one command may take on a busy machine before the test gives up


@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private data dir for this test (subprocesses inherit it); every server started in it is stopped."""
    directory = tmp_path / "data"
    monkeypatch.setenv(config.ENV_DATA_DIR, str(directory))
    monkeypatch.delenv(config.ENV_REDIS_URL, raising=False)
    monkeypatch.delenv(config.ENV_REDIS_SERVER, raising=False)
    yield directory
    try:
        embedded.stop()
    finally:
        for folder in (directory / config.EMBEDDED_SUBDIR, tmp_path / "custom"):
            for pid in embedded.server_pids(folder):
                psutil.Process(pid).kill()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=TIMEOUT, env=env)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)
    return result


def client(server: EmbeddedServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, password=server.password)


def test_starts_a_private_persistent_server(data_dir: Path) -> None:
    server = embedded.ensure_running()
    info_file = data_dir / config.EMBEDDED_INFO_FILE
    redis_dir = data_dir / config.EMBEDDED_SUBDIR
    assert stat.S_IMODE(info_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((redis_dir / "redis.conf").stat().st_mode) == 0o600
    assert stat.S_IMODE(redis_dir.stat().st_mode) == 0o700
    assert json.loads(info_file.read_text())["pid"] == server.pid
    assert server.password and server.password not in server.public_url
    assert server.password not in " ".join(psutil.Process(server.pid).cmdline())  # not visible in `ps`

    r = client(server)
    try:
        assert r.config_get("bind")["bind"] == "127.0.0.1"
        assert r.config_get("appendonly")["appendonly"] == "yes"
        assert r.config_get("appendfsync")["appendfsync"] == "everysec"
        assert Path(r.config_get("dir")["dir"]) == redis_dir.resolve()
        r.set("kept", "yes")
    finally:
        r.close()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=server.port).ping()
    aof = redis_dir / "appendonlydir"
    assert (aof / "appendonly.aof.manifest").is_file()
    assert list(aof.glob("*.incr.aof"))
    assert (redis_dir / "redis.log").is_file()


def test_another_command_finds_and_reuses_it(data_dir: Path) -> None:
    server = embedded.ensure_running()
    status = cli("server", "--status", "--json")
    assert status.returncode == 0, status.stderr
    described = json.loads(status.stdout)
    assert described["running"] is True
    assert described["pid"] == server.pid
    assert server.password not in status.stdout

    done = cli("status", "--json")  # a command that needs Redis and was given no URL
    assert done.returncode == 0, done.stderr
    assert "window_seconds" in json.loads(done.stdout)
    assert embedded.read_info() == server
    assert embedded.server_pids(data_dir / config.EMBEDDED_SUBDIR) == [server.pid]


def test_two_commands_started_at_once_share_one_server(data_dir: Path) -> None:
    procs = [subprocess.Popen([*CLI, "server", "--detach", "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    answers = [json.loads(out) for out, _ in outputs]
    assert answers[0]["pid"] == answers[1]["pid"]
    assert sorted(a["started"] for a in answers) == [False, True]
    assert embedded.server_pids(data_dir / config.EMBEDDED_SUBDIR) == [answers[0]["pid"]]


def test_stop_is_clean_and_the_data_survives(data_dir: Path) -> None:
    server = embedded.ensure_running()
    r = client(server)
    r.set("survivor", "1")
    r.close()
    assert embedded.stop() is True
    assert gone(server.pid)
    assert not (data_dir / config.EMBEDDED_INFO_FILE).exists()
    assert embedded.running() is None
    assert embedded.stop() is False  # nothing left to stop

    again = embedded.ensure_running()
    assert again.pid != server.pid
    r = client(again)
    try:
        assert r.get("survivor") == b"1"  # loaded back from the AOF
    finally:
        r.close()


def test_a_stale_info_file_is_replaced(data_dir: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = EmbeddedServer(url="redis://:x@127.0.0.1:1/0", password="x", pid=dead.pid, port=free_port(),
                           directory=str(data_dir / "redis"), binary="redis-server", started_at=0.0)  # fmt: skip
    data_dir.mkdir(parents=True, exist_ok=True)
    embedded.write_private(data_dir / config.EMBEDDED_INFO_FILE, json.dumps(stale.__dict__))
    server = embedded.ensure_running()
    assert server.pid != dead.pid and server.port != stale.port
    assert client(server).ping() is True
    assert embedded.read_info() == server


def test_missing_redis_server_says_how_to_install_it(data_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    empty = tmp_path / "empty-path"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}
    done = cli("status", env=env)
    assert done.returncode == 2
    for hint in ("apt-get install redis-server", "brew install redis", "Memurai", "WSL", "--redis URL"):
        assert hint in done.stderr
    assert not (data_dir / config.EMBEDDED_INFO_FILE).exists()

    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(EmbeddedServerError, match="apt-get install redis-server"):
        embedded.find_redis_server()
    monkeypatch.setenv(config.ENV_REDIS_SERVER, str(tmp_path / "no-such-binary"))
    with pytest.raises(EmbeddedServerError, match="not an executable file"):
        embedded.find_redis_server()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_server_command_runs_in_the_foreground_until_a_signal(data_dir: Path, sig: signal.Signals) -> None:
    proc = subprocess.Popen([*CLI, "server", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        server = wait_for(embedded.running, "the foreground server to answer")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    described = json.loads(out)
    assert described["pid"] == server.pid and described["port"] == server.port
    assert server.password not in out
    assert gone(server.pid)
    assert not (data_dir / config.EMBEDDED_INFO_FILE).exists()


def test_detach_status_stop_commands(data_dir: Path, tmp_path: Path) -> None:
    custom = tmp_path / "custom"
    port = free_port()
    started = cli("server", "--detach", "--port", str(port), "--dir", str(custom), "--json")
    assert started.returncode == 0, started.stderr
    answer = json.loads(started.stdout)
    assert answer["started"] is True and answer["port"] == port
    assert Path(answer["directory"]) == custom.resolve()
    assert (custom / "appendonlydir").is_dir()

    assert cli("--json", "server", "--status").returncode == 0  # global option before the subcommand
    stopped = cli("server", "--stop", "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout) == {"stopped": True}
    assert gone(answer["pid"])
    status = cli("server", "--status", "--json")
    assert status.returncode == 1
    assert json.loads(status.stdout) == {"running": False}


def test_stop_and_status_refuse_start_options(data_dir: Path) -> None:
    done = cli("server", "--stop", "--port", "7000")
    assert done.returncode == 2
    assert "--port and --dir only apply when starting" in done.stderr
