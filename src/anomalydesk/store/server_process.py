"""A redis-server process on this machine, as the embedded server needs it (nothing of its record here).

Finding the binary, telling a live redis-server working in a directory from a reused pid, waiting for
a process to exit, the inter-process lock two commands starting a server at once take, and files
written 0600 from their first byte. `children` holds the servers this process started (reaped on stop).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from anomalydesk import config

LOOPBACK = "127.0.0.1"
BINARY_NAMES = ("redis-server.exe", "memurai.exe") if os.name == "nt" else ("redis-server",)
INSTALL_HELP = (
    "redis-server was not found (looked at ${env}, next to the application and on PATH). Install it: "
    "Debian/Ubuntu `sudo apt-get install redis-server`; macOS `brew install redis`; Windows: install "
    "Memurai (https://www.memurai.com) or run Redis in WSL (`wsl sudo apt-get install redis-server`). "
    "Or use a server you run yourself with --redis URL or $ANOMALYDESK_REDIS_URL."
).replace("${env}", "$" + config.ENV_REDIS_SERVER)


class EmbeddedServerError(Exception):
    """The embedded server could not be found, started or stopped; the message says what to do."""


children: dict[int, subprocess.Popen[bytes]] = {}  # servers this process started, reaped on stop


def find_redis_server() -> str:
    """Path of the redis-server to run: $ANOMALYDESK_REDIS_SERVER, else bundled with the app, else PATH."""
    override = os.environ.get(config.ENV_REDIS_SERVER, "").strip()
    if override:
        if Path(override).is_file() and os.access(override, os.X_OK):
            return override
        raise EmbeddedServerError(f"${config.ENV_REDIS_SERVER} is {override!r}: not an executable file")
    bundled_dirs = [Path(sys.executable).resolve().parent / "redis"]
    if getattr(sys, "frozen", False) and hasattr(sys, "_MEIPASS"):
        meipass = Path(sys._MEIPASS)
        bundled_dirs += [meipass / "redis", meipass]
    for folder in bundled_dirs:
        for name in BINARY_NAMES:
            candidate = folder / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    for name in BINARY_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise EmbeddedServerError(INSTALL_HELP)


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically; the file is mode 0600 from its first byte."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def alive(pid: int) -> bool:
    if pid in children:
        return children[pid].poll() is None
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def serves(proc: psutil.Process, directory: str) -> bool:
    # redis-server rewrites its command line into a title and chdirs to its `dir`: match name and cwd
    return (
        proc.status() != psutil.STATUS_ZOMBIE
        and proc.name().lower().startswith(("redis-server", "memurai"))
        and os.path.samefile(proc.cwd(), directory)
    )


def runs_in(pid: int, directory: Path) -> bool:
    """Whether `pid` is a live redis-server working in `directory` (not some reused pid)."""
    try:
        return serves(psutil.Process(pid), str(directory))
    except (psutil.Error, OSError):
        return False


def server_pids(directory: Path) -> list[int]:
    """Pids of live redis-servers working in `directory` (recorded in the info file or not)."""
    if not Path(directory).is_dir():
        return []
    found = []
    for proc in psutil.process_iter(["pid", "name"]):
        if not (proc.info["name"] or "").lower().startswith(("redis-server", "memurai")):
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if serves(proc, str(directory)):
                found.append(proc.info["pid"])
    return found


def wait_exit(pid: int, timeout: float) -> bool:
    child = children.pop(pid, None)
    if child is not None:
        try:
            child.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            children[pid] = child
            return False
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def lock(timeout: float = config.EMBEDDED_LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """An exclusive inter-process lock on data_dir()/embedded.lock (released if the holder dies)."""
    path = config.data_dir() / config.EMBEDDED_LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                _try_lock(fd)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(
                        f"another anomalydesk command has held {path} for {timeout:.0f} s while starting or "
                        "stopping the embedded server; if none is running, delete that file"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        with contextlib.suppress(OSError):
            _unlock(fd)
        os.close(fd)


if os.name == "nt":
    import msvcrt

    def _try_lock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]
