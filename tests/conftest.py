"""Shared fixtures: a real redis-server started by the test session on a free port.

Tests never touch the user's data or settings: ANOMALYDESK_DATA_DIR / ANOMALYDESK_CONFIG_DIR point
into a session temp dir, and the keyring uses a file backend.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

_SESSION_HOME = Path(os.environ.get("ANOMALYDESK_TEST_HOME", "")) if os.environ.get(
    "ANOMALYDESK_TEST_HOME"
) else None


def pytest_configure(config: pytest.Config) -> None:
    import tempfile

    home = _SESSION_HOME or Path(tempfile.mkdtemp(prefix="anomalydesk-tests-"))
    os.environ["ANOMALYDESK_DATA_DIR"] = str(home / "data")
    os.environ["ANOMALYDESK_CONFIG_DIR"] = str(home / "config")
    os.environ.pop("ANOMALYDESK_REDIS_URL", None)
    os.environ.setdefault("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server process on loopback, owned by the test that started it."""

    def __init__(self, directory: Path, *extra: str, port: int | None = None):
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed: run `make setup` (apt-get install redis-server)")
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "redis.log",
            *self.extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.2).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self, sig: int | None = None) -> None:
        if self.proc and self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            self.proc.wait(timeout=15)
        self.proc = None

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(port=self.port, **kwargs)


# --- opt-in: an external server -------------------------------------------------------------------
# Hosted CI runs the suite once more against a `redis:8` service container (the only place the native
# CMS/CF/TOPK sketch path runs): with $ANOMALYDESK_TEST_REDIS_URL set, the session's `redis_server` (and so
# `redis_url` and `r`) is that server instead of one started here. Tests that start servers of their own
# (RedisServer(...)) still start them. Unset (the default), nothing changes.
ENV_TEST_REDIS_URL = "ANOMALYDESK_TEST_REDIS_URL"


class ExternalRedis:
    """A server somebody else runs, at $ANOMALYDESK_TEST_REDIS_URL: same attributes as RedisServer, never stopped."""

    def __init__(self, url: str):
        self.url = url
        kwargs = redis.connection.parse_url(url)
        self.host = kwargs.get("host", "127.0.0.1")
        self.port = int(kwargs.get("port", 6379))
        try:
            self.client().ping()
        except redis.RedisError as err:
            pytest.exit(f"${ENV_TEST_REDIS_URL} is {url!r} but that server does not answer: {err}", returncode=2)

    def stop(self, sig: int | None = None) -> None:
        """Not ours to stop."""

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis.from_url(self.url, **kwargs)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer | ExternalRedis]:
    if os.environ.get(ENV_TEST_REDIS_URL):
        yield ExternalRedis(os.environ[ENV_TEST_REDIS_URL])
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture()
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A URL to an empty database on the session's redis-server (flushed before each test)."""
    client = redis_server.client()
    client.flushall()
    client.function_flush()
    client.close()
    yield redis_server.url


@pytest.fixture()
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on an empty database."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def kill_at_random_then_finish(start: Callable[[str], subprocess.Popen[bytes]], progress: Callable[[], object],
                               target: object, kills: int, seed: int) -> None:
    """SIGKILL `kills` detectors started by `start(name)`, each at a random moment once it has begun
    working, then let a survivor finish the backlog (`progress()` reaches `target`) and stop it."""
    rng = random.Random(seed)
    for victim in range(kills):
        assert progress() != target, f"the backlog was done after {victim} kills: make it longer"
        before = progress()
        proc = start(f"victim-{victim}")
        deadline = time.monotonic() + 120
        while progress() == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # until it has started working
        assert proc.poll() is None, _stderr(proc)
        time.sleep(rng.uniform(0.0, 0.3))  # a random moment while it works
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert progress() != target, "the last kill came after the end of the backlog"
    survivor = start("survivor")
    deadline = time.monotonic() + 600
    while progress() != target and time.monotonic() < deadline:
        assert survivor.poll() is None, _stderr(survivor)
        time.sleep(0.1)
    survivor.send_signal(signal.SIGTERM)
    survivor.wait(timeout=60)
    assert progress() == target  # no fingerprint skipped


def _stderr(proc: subprocess.Popen[bytes]) -> str:
    return proc.stderr.read().decode() if proc.stderr else ""
