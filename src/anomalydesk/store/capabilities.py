"""What the connected server can do: its version, mode, modules, and which sketch backend to use.

Redis 8 and Redis Stack have the probabilistic commands (`CMS.*`, `CF.*`/`BF.*`, `TOPK.*`) built in
(Redis 8 lists no module for them in MODULE LIST), stock Redis 7 and Valkey do not: the gears library
then uses its own Lua sketches ("functions" backend). Redis Functions need Redis 7 or later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis
from redis.exceptions import ResponseError

from anomalydesk.config import MIN_REDIS_VERSION

# The commands the gears library calls on the native backend (gears/anomalydesk.lua): the interaction
# filter is a scalable Bloom filter there (BF.RESERVE … EXPANSION), like the library's own.
NATIVE_CMS = ("cms.initbydim", "cms.incrby", "cms.query", "cms.info")
NATIVE_TOPK = ("topk.reserve", "topk.incrby", "topk.list")
NATIVE_FILTERS = {
    "bf": ("bf.reserve", "bf.add", "bf.exists"),
}


class UnsupportedServer(Exception):
    """The server cannot run AnomalyDesk (too old, or Functions missing); the message says why."""


@dataclass(frozen=True)
class Capabilities:
    """What `detect` found on one server."""

    server_version: str
    redis_mode: str  # standalone | cluster | sentinel
    modules: dict[str, int] = field(default_factory=dict)  # MODULE LIST: name → version
    sketch_backend: str = "functions"  # native | functions
    has_functions: bool = True
    native_filter: str | None = None  # "cf" or "bf" when native, else None

    @property
    def version_tuple(self) -> tuple[int, ...]:
        """The server version as numbers, e.g. (7, 0, 15)."""
        return parse_version(self.server_version)


def parse_version(text: str) -> tuple[int, ...]:
    """'7.0.15' → (7, 0, 15); non-numeric parts end the tuple."""
    numbers = []
    for part in text.split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _command_names(r: redis.Redis) -> set[str] | None:
    """Lower-case names of every command the server knows, or None when COMMAND is not allowed."""
    try:
        return {_text(name).lower() for name in r.command_list()}
    except ResponseError:  # an ACL user without @connection/@slow may not run COMMAND LIST
        return None


def _modules(r: redis.Redis) -> dict[str, int]:
    try:
        listed = r.module_list()
    except ResponseError:
        return {}
    modules = {}
    for entry in listed:
        entry = {_text(k): v for k, v in entry.items()}
        modules[_text(entry.get("name", "?"))] = int(entry.get("ver", 0))
    return modules


def choose_backend(commands: set[str] | None, modules: dict[str, int]) -> tuple[str, str | None]:
    """('native', filter kind) when the probabilistic commands are all there, else ('functions', None)."""
    if commands is None:  # cannot list commands: trust MODULE LIST (RedisBloom calls itself "bf")
        if "bf" in {name.lower() for name in modules}:
            return "native", "bf"
        return "functions", None
    if not all(c in commands for c in (*NATIVE_CMS, *NATIVE_TOPK)):
        return "functions", None
    for kind, needed in NATIVE_FILTERS.items():
        if all(c in commands for c in needed):
            return "native", kind
    return "functions", None


def detect(r: redis.Redis) -> Capabilities:
    """Probe the server behind `r`; raises UnsupportedServer for Redis older than 7 (no Functions)."""
    info = r.info("server")
    version = _text(info.get("redis_version", "0"))
    mode = _text(info.get("redis_mode", "standalone"))
    if parse_version(version) < MIN_REDIS_VERSION:
        wanted = ".".join(map(str, MIN_REDIS_VERSION))
        raise UnsupportedServer(
            f"Redis {version} is too old: AnomalyDesk needs Redis {wanted} or later (Redis Functions); "
            "upgrade the server, or leave --redis unset to use the embedded server"
        )
    commands = _command_names(r)
    has_functions = commands is None or "function" in commands
    if not has_functions:
        raise UnsupportedServer(f"the server (version {version}) has no FUNCTION command (Redis Functions)")
    modules = _modules(r)
    backend, native_filter = choose_backend(commands, modules)
    return Capabilities(
        server_version=version,
        redis_mode=mode,
        modules=modules,
        sketch_backend=backend,
        has_functions=has_functions,
        native_filter=native_filter,
    )
