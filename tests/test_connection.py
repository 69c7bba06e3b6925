"""Connections from URLs against real redis-servers: ACL users, passwords, unix sockets, TLS; capabilities."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme

from anomalydesk import config
from anomalydesk.store import capabilities, connection
from anomalydesk.store.connection import ConnectionFailed, connect, connect_async, parse_url, redact_url
from conftest import RedisServer, free_port

PASSWORD = "s3cr3t-pw"


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A server whose default user needs PASSWORD and with an ACL user alice (password 'al1ce')."""
    server = RedisServer(tmp_path_factory.mktemp("acl"))
    admin = server.client()
    admin.execute_command("ACL", "SETUSER", "alice", "on", ">al1ce", "~*", "&*", "+@all")
    admin.config_set("requirepass", PASSWORD)  # from here on the fixture's own client needs it too
    admin.close()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def unix_server() -> Iterator[tuple[RedisServer, str]]:
    """A server that also listens on a unix socket (short path: sun_path holds ~100 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="ad-sock-"))
    sock = str(directory / "redis.sock")
    server = RedisServer(directory, "--unixsocket", sock, "--unixsocketperm", "700")
    yield server, sock
    server.stop()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A server with a TLS port that requires client certificates, all issued by a throwaway CA."""
    certs = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(certs / "ca.crt"))
    server_cert = ca.issue_cert("127.0.0.1")
    server_cert.cert_chain_pems[0].write_to_path(str(certs / "server.crt"))
    server_cert.private_key_pem.write_to_path(str(certs / "server.key"))
    client_cert = ca.issue_cert("anomalydesk-test-client")
    client_cert.cert_chain_pems[0].write_to_path(str(certs / "client.crt"))
    client_cert.private_key_pem.write_to_path(str(certs / "client.key"))
    tls_port = free_port()
    server = RedisServer(
        certs, "--tls-port", str(tls_port), "--tls-cert-file", str(certs / "server.crt"),
        "--tls-key-file", str(certs / "server.key"), "--tls-ca-cert-file", str(certs / "ca.crt"),
        "--tls-auth-clients", "yes",
    )  # fmt: skip
    yield tls_port, certs
    server.stop()


# --- URL parsing (pure) ---------------------------------------------------------------------------
def test_parse_redis_url_with_acl_user_port_and_db() -> None:
    kwargs = parse_url("redis://alice:p%40ss@db.example:6380/2")
    assert kwargs == {"username": "alice", "password": "p@ss", "host": "db.example", "port": 6380, "db": 2}


def test_parse_defaults_and_password_only() -> None:
    assert parse_url("redis://localhost") == {"host": "localhost", "port": 6379, "db": 0}
    assert parse_url("redis://:pw@localhost/0") == {"password": "pw", "host": "localhost", "port": 6379, "db": 0}


def test_parse_rediss_tls_options() -> None:
    kwargs = parse_url("rediss://h:6390/0?ssl_ca_certs=/c/ca.crt&ssl_certfile=/c/c.crt&ssl_keyfile=/c/c.key"
                       "&ssl_cert_reqs=optional")  # fmt: skip
    assert kwargs["ssl"] is True
    files = (kwargs["ssl_ca_certs"], kwargs["ssl_certfile"], kwargs["ssl_keyfile"])
    assert files == ("/c/ca.crt", "/c/c.crt", "/c/c.key")
    assert kwargs["ssl_cert_reqs"] == "optional"
    assert parse_url("rediss://h")["ssl_cert_reqs"] == "required"


def test_parse_unix_socket_with_db_and_password() -> None:
    kwargs = parse_url("unix://:pw@/run/redis/redis.sock?db=3")
    assert kwargs == {"password": "pw", "unix_socket_path": "/run/redis/redis.sock", "db": 3}


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://localhost:6379", "unsupported scheme 'http'"),
        ("localhost:6379", "unsupported scheme"),
        ("redis://localhost/0?ssl_ca_certs=/ca.crt", "need a rediss:// URL"),
        ("redis://localhost/0?timeout=3", "unknown URL option 'timeout'"),
        ("redis://localhost/x", "database must be a number"),
        ("redis://localhost/1?db=2", "database given twice"),
        ("redis://localhost:99999", "not a valid URL"),
        ("rediss://localhost?ssl_cert_reqs=maybe", "ssl_cert_reqs must be one of"),
        ("unix://", "needs a socket path"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(ConnectionFailed, match=reason):
        parse_url(url)


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("redis://alice:hunter2@h:1/0") == "redis://alice:***@h:1/0"
    assert redact_url("unix://:hunter2@/tmp/r.sock?db=1") == "unix://:***@/tmp/r.sock?db=1"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"
    err = ConnectionFailed("redis://alice:hunter2@h:1/0", "nope")
    assert "hunter2" not in str(err) and "alice:***@h:1" in str(err)


def test_resolve_url_prefers_explicit_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from anomalydesk.store import locate

    monkeypatch.setenv(config.ENV_REDIS_URL, "redis://from-env:1/0")
    for resolve in (connection.resolve_url, locate.resolve_url):
        assert resolve("redis://explicit:2/0") == "redis://explicit:2/0"
        assert resolve(None) == "redis://from-env:1/0"


def test_connect_never_starts_the_embedded_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from anomalydesk.store import embedded

    monkeypatch.delenv(config.ENV_REDIS_URL, raising=False)
    monkeypatch.setattr(embedded, "ensure_running", lambda: pytest.fail("connect() started a server"))
    with pytest.raises(ConnectionFailed, match="no Redis URL: pass one"):
        connect()
    with pytest.raises(ConnectionFailed, match="no Redis URL"):
        connection.connect_async()


def test_no_import_cycle_in_the_package() -> None:
    """Every module's imports (top level and inside functions) form no cycle (issue 20, step 5)."""
    import ast
    from pathlib import Path

    import anomalydesk

    root = Path(anomalydesk.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        name = ".".join(("anomalydesk", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        deps = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("anomalydesk"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if (root / Path(*full.split(".")[1:])).with_suffix(".py").exists() else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("anomalydesk"))
    cycles = []

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        if node in stack:
            cycles.append([*stack[stack.index(node):], node])
            return
        if node in done or node not in graph:
            return
        for dep in sorted(graph[node]):
            if dep != node and not node.startswith(dep + "."):
                visit(dep, [*stack, node], done)
        done.add(node)

    done: set[str] = set()
    for module in sorted(graph):
        visit(module, [], done)
    assert cycles == []


# --- real servers ---------------------------------------------------------------------------------
def test_client_options_are_set_on_purpose(redis_url: str) -> None:
    client = connect(redis_url)
    try:
        opts = client.connection_pool.connection_kwargs
        assert opts["socket_timeout"] == config.SOCKET_TIMEOUT_SECONDS
        assert opts["socket_connect_timeout"] == config.CONNECT_TIMEOUT_SECONDS
        assert opts["health_check_interval"] == config.HEALTH_CHECK_INTERVAL_SECONDS
        assert opts["retry"].get_retries() == config.RETRY_ATTEMPTS
        client.set("k", "v")
        assert client.get("k") == b"v"  # decode_responses=False: bytes back
    finally:
        client.close()


def test_acl_user_and_password_in_url(acl_server: RedisServer) -> None:
    client = connect(f"redis://alice:al1ce@127.0.0.1:{acl_server.port}/0")
    try:
        assert client.execute_command("ACL", "WHOAMI") == b"alice"
    finally:
        client.close()
    default = connect(f"redis://:{PASSWORD}@127.0.0.1:{acl_server.port}/1")
    try:
        assert default.execute_command("ACL", "WHOAMI") == b"default"
        assert default.client_info()["db"] == 1
    finally:
        default.close()


def test_wrong_password_is_a_clear_error_without_the_password(acl_server: RedisServer) -> None:
    url = f"redis://alice:not-her-password@127.0.0.1:{acl_server.port}/0"
    with pytest.raises(ConnectionFailed) as caught:
        connect(url)
    message = str(caught.value)
    assert "authentication failed" in message
    assert f"redis://alice:***@127.0.0.1:{acl_server.port}/0" in message
    assert "not-her-password" not in message


def test_missing_password_is_a_clear_error(acl_server: RedisServer) -> None:
    with pytest.raises(ConnectionFailed, match="the server needs a password and the URL has none"):
        connect(f"redis://127.0.0.1:{acl_server.port}/0")


def test_a_refused_password_is_not_retried(acl_server: RedisServer) -> None:
    watcher = connect(f"redis://:{PASSWORD}@127.0.0.1:{acl_server.port}/0")
    try:
        before = watcher.info("stats")["total_connections_received"]
        with pytest.raises(ConnectionFailed, match="authentication failed"):
            connect(f"redis://alice:wrong@127.0.0.1:{acl_server.port}/0")
        assert watcher.info("stats")["total_connections_received"] - before == 1
    finally:
        watcher.close()


def _blocked_client_ids(r: redis.Redis) -> list[int]:
    return [int(c["id"]) for c in r.client_list() if c.get("cmd") == "blpop"]


def _wait_for(condition: Callable[[], Any], what: str, limit: float = 30.0) -> Any:
    deadline = time.monotonic() + limit
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)
    return result


def test_a_connection_dropped_mid_command_is_retried(redis_url: str, r: redis.Redis) -> None:
    client = connect(redis_url, socket_timeout=60.0)  # BLPOP below must not hit the socket timeout
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(_try(lambda: client.blpop(["q"], timeout=30))))
    worker.start()
    try:
        first = _wait_for(lambda: _blocked_client_ids(r), "the BLPOP to block")[0]
        r.client_kill_filter(_id=first)  # the server drops the connection while the command waits
        _wait_for(lambda: [i for i in _blocked_client_ids(r) if i != first], "the retried BLPOP")
        r.lpush("q", "x")
    finally:
        worker.join(60)
        client.close()
    assert outcome == [(b"q", b"x")]


def _try(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except redis.RedisError as err:
        return err


def test_unix_socket(unix_server: tuple[RedisServer, str]) -> None:
    server, sock = unix_server
    client = connect(f"unix://{sock}?db=2")
    try:
        client.set("via-socket", "1")
        info = client.client_info()
        assert info["db"] == 2
        assert "unix" in client.execute_command("CLIENT", "INFO").decode() or info.get("addr", "").startswith("/")
    finally:
        client.close()
    assert server.client(db=2).get("via-socket") == b"1"  # the same server, seen over TCP


def test_rediss_with_ca_and_client_certificate(tls_server: tuple[int, Path]) -> None:
    port, certs = tls_server
    url = (f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certs / 'ca.crt'}"
           f"&ssl_certfile={certs / 'client.crt'}&ssl_keyfile={certs / 'client.key'}")  # fmt: skip
    client = connect(url)
    try:
        assert client.ping() is True
    finally:
        client.close()


def test_rediss_rejects_a_server_it_cannot_verify(tls_server: tuple[int, Path]) -> None:
    port, certs = tls_server  # no ssl_ca_certs: the throwaway CA is not trusted
    url = f"rediss://127.0.0.1:{port}/0?ssl_certfile={certs / 'client.crt'}&ssl_keyfile={certs / 'client.key'}"
    with pytest.raises(ConnectionFailed, match=r"certificate verify failed|CERTIFICATE_VERIFY_FAILED"):
        connect(url)


async def test_async_client(redis_url: str) -> None:
    client = connect_async(redis_url)
    try:
        assert await client.ping() is True
        await client.set("a", "b")
        assert await client.get("a") == b"b"
        assert client.connection_pool.connection_kwargs["socket_timeout"] == config.SOCKET_TIMEOUT_SECONDS
    finally:
        await client.aclose()


# --- capabilities -----------------------------------------------------------------------------------
def test_capabilities_of_the_session_server(r: redis.Redis, sketch_backend: str) -> None:
    caps = capabilities.detect(r)
    assert caps.version_tuple >= (7, 0)
    assert caps.server_version == r.info("server")["redis_version"]
    assert caps.redis_mode == "standalone"
    assert caps.has_functions is True
    assert caps.sketch_backend == sketch_backend  # Debian's redis-server has no RedisBloom
    assert caps.native_filter == ("bf" if sketch_backend == "native" else None)


def test_native_backend_when_the_probabilistic_commands_exist() -> None:
    redis8 = {"get", "function", "cf.reserve", "cf.add", "cf.exists", *capabilities.NATIVE_CMS,
              *capabilities.NATIVE_TOPK, *capabilities.NATIVE_FILTERS["bf"]}  # fmt: skip
    assert capabilities.choose_backend(redis8, {}) == ("native", "bf")
    no_bloom = redis8 - set(capabilities.NATIVE_FILTERS["bf"])  # the gears library calls BF.*
    assert capabilities.choose_backend(no_bloom, {}) == ("functions", None)
    no_topk = redis8 - {"topk.incrby"}
    assert capabilities.choose_backend(no_topk, {}) == ("functions", None)
    assert capabilities.choose_backend(None, {"bf": 20812}) == ("native", "bf")
    assert capabilities.choose_backend(None, {}) == ("functions", None)


class _OldServer:
    def info(self, section: str) -> dict:
        return {"redis_version": "6.2.14", "redis_mode": "standalone"}


def test_redis_6_is_refused_with_the_reason() -> None:
    with pytest.raises(capabilities.UnsupportedServer, match=r"Redis 6\.2\.14 is too old.*7\.0 or later"):
        capabilities.detect(_OldServer())  # type: ignore[arg-type]


# --- the retry policy: public redis-py API only (issue 20, step 5) --------------------------------
def test_policy_retry_resends_dropped_connections_but_never_a_refused_password() -> None:
    from redis.backoff import NoBackoff
    from redis.exceptions import AuthenticationError
    from redis.exceptions import ConnectionError as RedisConnectionError

    from anomalydesk.store.connection import PolicyRetry

    policy = PolicyRetry(NoBackoff(), 2, supported_errors=(RedisConnectionError,))
    calls: list[int] = []
    failures: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RedisConnectionError("dropped")
        return "ok"

    assert policy.call_with_retry(flaky, lambda err, n: failures.append(n), with_failure_count=True) == "ok"
    assert len(calls) == 3 and failures == [1, 2]

    def refused() -> None:
        calls.append(1)
        raise AuthenticationError("WRONGPASS")

    calls.clear()
    with pytest.raises(AuthenticationError):
        policy.call_with_retry(refused, lambda err: None)
    assert len(calls) == 1  # not retried
    calls.clear()
    with pytest.raises(RedisConnectionError):  # the caller's own is_retryable still applies
        policy.call_with_retry(flaky, lambda err: None, is_retryable=lambda err: False)
    assert len(calls) == 1


async def test_async_policy_retry_gives_up_after_its_attempts_and_never_retries_a_refused_password() -> None:
    from redis.backoff import NoBackoff
    from redis.exceptions import AuthenticationError
    from redis.exceptions import ConnectionError as RedisConnectionError

    from anomalydesk.store.connection import AsyncPolicyRetry

    policy = AsyncPolicyRetry(NoBackoff(), 2, supported_errors=(RedisConnectionError,))
    calls: list[type] = []

    async def failing(error: Exception) -> None:
        calls.append(type(error))
        raise error

    async def on_failure(_err: Exception) -> None:
        return None

    with pytest.raises(RedisConnectionError):
        await policy.call_with_retry(lambda: failing(RedisConnectionError("dropped")), on_failure)
    assert len(calls) == 3  # the first try and 2 retries
    calls.clear()
    with pytest.raises(AuthenticationError):
        await policy.call_with_retry(lambda: failing(AuthenticationError("WRONGPASS")), on_failure)
    assert len(calls) == 1
