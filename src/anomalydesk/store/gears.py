"""Loading the gears library (`gears/anomalydesk.lua`, a Redis Functions library) with its version check.

An older library on the server is replaced; a newer one is refused with a clear message (an older
AnomalyDesk must not downgrade the server under a newer one); the same version with different code
(a development build) is replaced.
"""

from __future__ import annotations

import os
import re
import sys
from functools import lru_cache
from pathlib import Path

import redis

from anomalydesk import contract
from anomalydesk.config import GEARS_LIBRARY

ENV_GEARS_FILE = "ANOMALYDESK_GEARS_FILE"
_VERSION_RE = re.compile(r"^local LIB_VERSION = '(\d+)'", re.MULTILINE)


class GearsError(RuntimeError):
    """The library cannot be loaded or the server holds an incompatible one."""


def library_path() -> Path:
    """Where the Lua source is: $ANOMALYDESK_GEARS_FILE, a packaged app's bundle, or the source tree."""
    candidates = []
    if os.environ.get(ENV_GEARS_FILE):
        candidates.append(Path(os.environ[ENV_GEARS_FILE]))
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        candidates.append(Path(bundle) / "gears" / "anomalydesk.lua")
    candidates.append(Path(__file__).resolve().parents[3] / "gears" / "anomalydesk.lua")
    for path in candidates:
        if path.is_file():
            return path
    raise GearsError(f"gears library not found (looked in: {', '.join(map(str, candidates))})")


@lru_cache(maxsize=1)
def library_source() -> tuple[str, int]:
    """(Lua source, version) of the library this AnomalyDesk ships."""
    code = library_path().read_text(encoding="utf-8")
    match = _VERSION_RE.search(code)
    if match is None:
        raise GearsError("gears library has no LIB_VERSION line")
    return code, int(match.group(1))


def server_library(r: redis.Redis) -> tuple[int, str] | None:
    """(version, code) of the library loaded on the server, or None."""
    libs = r.function_list(library=GEARS_LIBRARY, withcode=True)
    for lib in libs:
        info = {k.decode() if isinstance(k, bytes) else k: v for k, v in _pairs(lib)}
        name = info.get("library_name")
        if (name.decode() if isinstance(name, bytes) else name) != GEARS_LIBRARY:
            continue
        code = info.get("library_code", b"")
        code = code.decode() if isinstance(code, bytes) else code
        match = _VERSION_RE.search(code)
        return (int(match.group(1)) if match else 0), code
    return None


def _pairs(lib: object) -> list[tuple[object, object]]:
    if isinstance(lib, dict):
        return list(lib.items())
    items = list(lib)  # RESP2: flat list
    return list(zip(items[::2], items[1::2], strict=True))


def ensure_library(r: redis.Redis) -> int:
    """Load or upgrade the library on this server (on every primary of a cluster); returns the version."""
    from anomalydesk.store.cluster import is_cluster, node_client, primaries

    if is_cluster(r):
        return min(ensure_library(node_client(r, node)) for node in primaries(r))  # type: ignore[arg-type]
    code, version = library_source()
    try:
        loaded = server_library(r)
    except redis.ResponseError as err:
        raise GearsError(f"this server does not support Redis Functions (Redis >= 7 needed): {err}") from err
    if loaded is not None:
        server_version, server_code = loaded
        if server_version > version:
            raise GearsError(
                f"the server has gears library version {server_version}, newer than this AnomalyDesk's "
                f"{version}: upgrade AnomalyDesk (refusing to downgrade the server's library)"
            )
        if server_version == version and server_code == code:
            return version
    try:
        r.function_load(code, replace=True)
    except redis.ResponseError as err:
        raise GearsError(f"loading the gears library failed: {err}") from err
    return version


def is_missing_function(reply: object) -> bool:
    """Whether a reply says the server does not have our functions (lost them in a restart, a new node)."""
    return isinstance(reply, redis.ResponseError) and "function not found" in str(reply).lower()


STALE_CONFIG = contract.STALE_CONFIG
NEED_CONFIG = contract.NEED_CONFIG


def is_stale_config(reply: object) -> bool:
    """Whether a reply says the caller's config and the service's differ: older than the service's
    (re-read it, encode again, send again) or newer with another window length (`configure_services`
    first, then send again)."""
    return isinstance(reply, redis.ResponseError) and str(reply).startswith((STALE_CONFIG, NEED_CONFIG))
