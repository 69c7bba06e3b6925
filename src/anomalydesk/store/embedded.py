"""The embedded server: a private `redis-server` used when no Redis URL is configured.

It listens on loopback only (a free port), requires a random password, persists with AOF in
`data_dir()/redis/`, and runs detached so it outlives the command that started it. Its URL (with the
password), pid and port sit in `data_dir()/embedded.json`, created with mode 0600, so every
`anomalydesk` command finds and reuses it; a lock file keeps two commands started at the same moment
from starting two servers. The password never appears on a command line: it goes to `redis.conf`
(also 0600) beside the data.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import redis
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, RedisError
from redis.retry import Retry

from anomalydesk import config
from anomalydesk.store.connection import redact_url
from anomalydesk.store.server_process import (
    BINARY_NAMES,
    INSTALL_HELP,
    LOOPBACK,
    EmbeddedServerError,
    children,
    find_redis_server,
    free_port,
    lock,
    runs_in,
    server_pids,
    wait_exit,
    write_private,
)

__all__ = [
    "BINARY_NAMES", "INSTALL_HELP", "LOOPBACK", "EmbeddedServer", "EmbeddedServerError", "default_directory",
    "ensure_running", "find_redis_server", "info_path", "read_info", "running", "serve_foreground",
    "server_pids", "start", "stop", "write_private",
]


@dataclass(frozen=True)
class EmbeddedServer:
    """A running embedded server, as recorded in the info file."""

    url: str  # includes the password: never print it, print `public_url`
    password: str
    pid: int
    port: int
    directory: str
    binary: str
    started_at: float

    @property
    def public_url(self) -> str:
        """The URL without its password."""
        return redact_url(self.url)

    @property
    def log_file(self) -> Path:
        return Path(self.directory) / "redis.log"


def info_path() -> Path:
    """The 0600 file holding the running server's URL, password and pid."""
    return config.data_dir() / config.EMBEDDED_INFO_FILE


def default_directory() -> Path:
    """Where the embedded server keeps its AOF, config and log."""
    return config.data_dir() / config.EMBEDDED_SUBDIR


def read_info() -> EmbeddedServer | None:
    """The server recorded in the info file, or None (no file, or one this version cannot read)."""
    try:
        data = json.loads(info_path().read_text(encoding="utf-8"))
        return EmbeddedServer(**{name: data[name] for name in EmbeddedServer.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _client(server: EmbeddedServer) -> redis.Redis:
    return redis.Redis(
        host=LOOPBACK, port=server.port, password=server.password, socket_connect_timeout=1.0,
        socket_timeout=config.SOCKET_TIMEOUT_SECONDS, retry=Retry(NoBackoff(), 0),
    )  # fmt: skip


def _answers(server: EmbeddedServer) -> bool | None:
    """True: PING with the password works; None: the server is up but still loading; False: no."""
    client = _client(server)
    try:
        return bool(client.ping())
    except BusyLoadingError:
        return None
    except RedisError:
        return False
    finally:
        client.close()


def _quote(value: str) -> str:
    """A redis.conf string argument (paths may hold spaces, e.g. macOS 'Application Support')."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _config_text(port: int, password: str, directory: Path) -> str:
    return "\n".join([
        "# written by anomalydesk for its embedded server; regenerated at every start",
        f"bind {LOOPBACK}", f"port {port}", "protected-mode yes", f"requirepass {password}",
        f"dir {_quote(str(directory))}", f"logfile {_quote(str(directory / 'redis.log'))}",
        "appendonly yes", "appendfsync everysec", 'save ""', "daemonize no", "",
    ])  # fmt: skip


def _launch(port: int, directory: Path, detach: bool) -> tuple[EmbeddedServer, subprocess.Popen[bytes]]:
    """Start redis-server and wait until it answers; EmbeddedServerError with the log's tail if not."""
    binary = find_redis_server()
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        directory.chmod(0o700)
    password = secrets.token_urlsafe(config.EMBEDDED_PASSWORD_BYTES)
    conf = directory / "redis.conf"
    write_private(conf, _config_text(port, password, directory))
    log = directory / "redis.log"
    log_start = log.stat().st_size if log.exists() else 0
    # the session of its own keeps a terminal's Ctrl+C from reaching it: we shut it down ourselves
    extra: dict = {"start_new_session": True} if os.name != "nt" else {
        "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | (subprocess.DETACHED_PROCESS if detach else 0)
    }
    with open(log, "ab") as log_out:
        proc = subprocess.Popen([binary, str(conf)], stdin=subprocess.DEVNULL, stdout=log_out,
                                stderr=log_out, cwd=directory, **extra)  # fmt: skip
    children[proc.pid] = proc
    server = EmbeddedServer(
        url=f"redis://:{password}@{LOOPBACK}:{port}/0", password=password, pid=proc.pid, port=port,
        directory=str(directory), binary=binary, started_at=time.time(),
    )  # fmt: skip
    deadline = time.monotonic() + config.EMBEDDED_START_TIMEOUT_SECONDS
    while proc.poll() is None and time.monotonic() < deadline:
        if _answers(server):
            return server, proc
        time.sleep(0.05)
    if proc.poll() is None:
        proc.terminate()
        proc.wait(config.EMBEDDED_STOP_TIMEOUT_SECONDS)
    children.pop(proc.pid, None)
    tail = _log_tail(log, log_start)
    raise EmbeddedServerError(f"{binary} did not start on {LOOPBACK}:{port} (see {log}): {tail}")


def _log_tail(log: Path, start: int, lines: int = 3) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        return "no log"
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:]) or "no log output"


def _record(server: EmbeddedServer) -> None:
    write_private(info_path(), json.dumps(asdict(server), indent=2) + "\n")


def _start_locked(port: int | None, directory: Path | None, detach: bool = True) -> EmbeddedServer:
    directory = (directory or default_directory()).resolve()
    running = server_pids(directory)
    if running:
        raise EmbeddedServerError(
            f"a redis-server (pid {running[0]}) already runs on {directory} but {info_path()} does not "
            "describe it; stop it with `anomalydesk server --stop` and try again"
        )
    attempts = 1 if port else 3  # a free port can be taken between choosing it and binding it
    for attempt in range(attempts):
        try:
            server, _ = _launch(port or free_port(), directory, detach)
            _record(server)
            return server
        except EmbeddedServerError as err:
            if attempt == attempts - 1 or "Address already in use" not in str(err):
                raise
    raise AssertionError("unreachable")


def _usable(server: EmbeddedServer) -> bool:
    """Whether the recorded server answers, waiting while it is alive but still loading its data."""
    deadline = time.monotonic() + config.EMBEDDED_START_TIMEOUT_SECONDS
    while True:
        state = _answers(server)
        if state:
            return True
        if not runs_in(server.pid, Path(server.directory)) or time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def running() -> EmbeddedServer | None:
    """The recorded embedded server if it answers PING with its password, else None (starts nothing)."""
    server = read_info()
    return server if server is not None and _answers(server) else None


def ensure_running() -> EmbeddedServer:
    """The embedded server, started if none answers; two commands at once share one server."""
    server = running()
    if server is not None:
        return server
    with lock():
        server = read_info()
        if server is not None and _usable(server):
            return server
        return _start_locked(None, None)


def start(port: int | None = None, directory: Path | None = None) -> tuple[EmbeddedServer, bool]:
    """Start a detached server (or find the running one): (server, whether this call started it)."""
    with lock():
        server = read_info()
        if server is not None and _usable(server):
            return server, False
        return _start_locked(port, directory), True


def stop(timeout: float = config.EMBEDDED_STOP_TIMEOUT_SECONDS) -> bool:
    """Shut the embedded server down (SHUTDOWN SAVE), wait for its process, remove the info file.

    Returns False when no embedded server was running.
    """
    with lock():
        server = read_info()
        pids: list[int] = []
        if server is not None and _answers(server) is not False:
            client = _client(server)
            try:
                client.shutdown(save=True)
            except RedisError as err:
                raise EmbeddedServerError(f"{server.public_url} refused SHUTDOWN: {err}") from err
            finally:
                client.close()
            pids.append(server.pid)
        else:  # no answer: a stale file, or a server that lost its file; ask ours to stop by signal
            directory = Path(server.directory) if server else default_directory()
            pids = server_pids(directory)
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).terminate()  # SIGTERM: redis-server saves and exits cleanly
        for pid in pids:
            if not wait_exit(pid, timeout):
                raise EmbeddedServerError(f"the embedded server (pid {pid}) did not exit in {timeout:.0f} s")
        with contextlib.suppress(FileNotFoundError):
            info_path().unlink()
        return bool(pids)


def serve_foreground(
    port: int | None = None,
    directory: Path | None = None,
    on_ready: Callable[[EmbeddedServer], None] | None = None,
) -> int:
    """Run the embedded server until SIGINT/SIGTERM, then SHUTDOWN SAVE it; returns its exit status."""
    with lock():
        existing = read_info()
        if existing is not None and _usable(existing):
            raise EmbeddedServerError(
                f"an embedded server already runs at {existing.public_url} (pid {existing.pid}); "
                "stop it with `anomalydesk server --stop` first"
            )
        server = _start_locked(port, directory, detach=False)
    proc = children[server.pid]
    stopping: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: stopping.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}  # fmt: skip
    try:
        if on_ready is not None:
            on_ready(server)
        while not stopping and proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.25)
        if proc.poll() is None:
            stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if read_info() == server:  # it exited on its own (e.g. SHUTDOWN from a client): forget it
        with contextlib.suppress(FileNotFoundError):
            info_path().unlink()
    children.pop(server.pid, None)
    return proc.wait()
