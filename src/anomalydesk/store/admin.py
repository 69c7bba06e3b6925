"""Setup, status and service administration: what `anomalydesk setup|status|services` do."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import redis

from anomalydesk.config import SketchSettings, key_prefix
from anomalydesk.fingerprint import SCHEMA_VERSION
from anomalydesk.store import capabilities
from anomalydesk.store.encoding import Config, config_from
from anomalydesk.store.gears import STALE_CONFIG, ensure_library
from anomalydesk.store.keys import Keys

# config hash field → SketchSettings attribute (the stored sizes are always explicit dims)
_SIZE_FIELDS = {
    "window_seconds": "window_seconds",
    "cms_width": "cms_width",
    "cms_depth": "cms_depth",
    "filter_capacity": "filter_capacity",
    "filter_error": "filter_error",
    "topk": "topk",
    "retention": "retention",
    "raw_sample": "raw_sample",
}
# what a change of each setting resets (said before --force and after it)
_RESETS = {
    "window_seconds": ("the window length of every service: open windows are carried into windows of the new "
                       "length (no event is dropped); fingerprints and models of the old length are no longer "
                       "used for training, so every service learns again"),
    "cms_width": "Count-Min Sketches (endpoint and status counts) of every service",
    "cms_depth": "Count-Min Sketches (endpoint and status counts) of every service",
    "filter_capacity": "interaction filters of every service (every endpoint counts as new once more)",
    "filter_error": "interaction filters of every service (every endpoint counts as new once more)",
    "topk": "Top-K lists of every service",
}


class SetupConflict(RuntimeError):
    """New sizes on an existing setup without --force; `changes` and `resets` say what and what it resets."""

    def __init__(self, changes: str, resets: list[str]):
        self.changes = changes
        self.resets = list(resets)
        super().__init__(f"the existing setup differs ({changes}); rerun with --force to recreate, which resets: "
                         + "; ".join(self.resets))  # fmt: skip


@dataclass(frozen=True)
class StoredSettings:
    settings: SketchSettings
    backend: str
    configured: bool
    generation: int = 0  # moves on every change of the window length or the sketches (gears refuses older ones)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def detect_backend(r: redis.Redis) -> str:
    """'native' when the server has RedisBloom's CMS/BF/TOPK commands (Redis 8, Stack), else 'functions'."""
    return capabilities.detect(r).sketch_backend


def read_settings(r: redis.Redis, keys: Keys | None = None) -> StoredSettings:
    """The settings `setup` stored (defaults, `configured=False`, when setup never ran)."""
    keys = keys or Keys(key_prefix())
    raw = {_text(k): _text(v) for k, v in r.hgetall(keys.config).items()}
    if not raw:
        defaults = SketchSettings()
        width, depth = defaults.cms_dims()
        return StoredSettings(SketchSettings(cms_width=width, cms_depth=depth), "functions", False)
    values: dict[str, Any] = {}
    for field, attr in _SIZE_FIELDS.items():
        if field in raw:
            values[attr] = float(raw[field]) if attr in ("filter_error", "raw_sample") else int(raw[field])
    return StoredSettings(SketchSettings(**values), raw.get("backend", "functions"), True,
                          int(raw.get("config_gen", 0)))


def window_seconds(r: redis.Redis, keys: Keys | None = None) -> int:
    """The window length `setup` stored (the default before setup ran): one field, for hot paths."""
    raw = r.hget((keys or Keys(key_prefix())).config, "window_seconds")
    return int(raw) if raw else SketchSettings().window_seconds


def _explicit(settings: SketchSettings) -> dict[str, Any]:
    width, depth = settings.cms_dims()
    return {
        "window_seconds": settings.window_seconds,
        "cms_width": width,
        "cms_depth": depth,
        "filter_capacity": settings.filter_capacity,
        "filter_error": settings.filter_error,
        "topk": settings.topk,
        "retention": settings.retention,
        "raw_sample": settings.raw_sample,
    }


def setup(r: redis.Redis, settings: SketchSettings, force: bool = False, keys: Keys | None = None) -> dict:
    """Idempotent setup: load gears, store sizes; changed sizes need `force` and reset what they size."""
    keys = keys or Keys(key_prefix())
    version = ensure_library(r)
    wanted = _explicit(settings)
    current = read_settings(r, keys)
    changed: dict[str, list[Any]] = {}
    if current.configured:
        old = _explicit(current.settings)
        changed = {k: [old[k], v] for k, v in wanted.items() if old[k] != v}
    resets = sorted({_RESETS[k] for k in changed if k in _RESETS})
    if changed and resets and not force:
        what = ", ".join(f"{k} {a} → {b}" for k, (a, b) in changed.items())
        raise SetupConflict(what, resets)
    backend = detect_backend(r)
    generation = current.generation
    if current.configured and ((changed and resets) or backend != current.backend):
        generation += 1  # every service is brought to it: its next call with an older config is refused
    mapping = {**wanted, "backend": backend, "schema": SCHEMA_VERSION, "library_version": version,
               "config_gen": generation}
    if not current.configured:
        mapping["created_at"] = time.time()
    r.hset(keys.config, mapping={k: str(v) for k, v in mapping.items()})
    reset_services: list[str] = []
    if generation != current.generation:
        every = sorted(_text(s) for s in r.smembers(keys.services) | r.smembers(keys.retired))
        reset_services = configure_services(r, every, config_from(read_settings(r, keys).settings, backend,
                                                                  generation), keys)  # fmt: skip
    migrated = migrate_incident_keys(r, keys)
    return {
        "created": not current.configured,
        "incident_records_migrated": migrated,
        "changed": changed,
        "reset": resets if changed else [],
        "reset_services": reset_services,
        "settings": wanted,
        "sketch_backend": backend,
        "library_version": version,
    }


def configure_services(r: redis.Redis, services: Iterable[str], config: Config, keys: Keys | None = None) -> list[str]:
    """Bring services to `config`'s generation (`ad_configure`: sketches dropped when their sizes changed,
    windows carried into a new window length); the services it changed. A service already at a newer
    generation is left as it is (the caller's next call is refused as stale and re-reads)."""
    keys = keys or Keys(key_prefix())
    names = list(services)
    if not names:
        return []
    cfg = orjson.dumps(config.payload_cfg)
    pipe = r.pipeline(transaction=False)
    for service in names:
        pipe.fcall("ad_configure", 1, keys.state(service), keys.prefix, service, cfg)
    changed = []
    for service, reply in zip(names, pipe.execute(raise_on_error=False), strict=True):
        if isinstance(reply, redis.ResponseError) and not str(reply).startswith(STALE_CONFIG):
            raise RuntimeError(f"configuring {service} for the new setup failed: {reply}")
        if reply == 1:
            changed.append(service)
    return changed


def _service_states(r: redis.Redis, keys: Keys, services: list[str]) -> dict[str, dict[str, str]]:
    pipe = r.pipeline(transaction=False)
    for service in services:
        pipe.hgetall(keys.state(service))
    return {
        service: {_text(k): _text(v) for k, v in state.items()}
        for service, state in zip(services, pipe.execute(), strict=True)
    }


def list_services(r: redis.Redis, keys: Keys | None = None) -> list[dict[str, Any]]:
    """Every known service (retired ones too) with its counters."""
    keys = keys or Keys(key_prefix())
    active = {_text(s) for s in r.smembers(keys.services)}
    retired = {_text(s) for s in r.smembers(keys.retired)}
    names = sorted(active | retired)
    states = _service_states(r, keys, names)
    window_s = read_settings(r, keys).settings.window_seconds
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.xlen(keys.fingerprints(name))
        pipe.xlen(keys.history(name, window_s))
    counts = pipe.execute()
    lengths, histories = counts[0::2], counts[1::2]
    return [
        {
            "name": name,
            "retired": name in retired and name not in active,
            "events": int(states[name].get("events", 0)),
            "late": int(states[name].get("late", 0)),
            "windows_sealed": int(states[name].get("windows_sealed", 0)),
            "last_sealed_window": int(states[name]["sealed"]) if "sealed" in states[name] else None,
            "fingerprints": length,
            "kpi_reports": int(states[name].get("kpis", 0)),
            "history_events": int(states[name].get("history_events", 0)),
            "history_fingerprints": history,
        }
        for name, length, history in zip(names, lengths, histories, strict=True)
    ]


def covered_spans(r: redis.Redis, services: list[str], keys: Keys | None = None) -> dict[str, tuple[float, float]]:
    """service → [start, end) epoch seconds its live stream already covers, for services whose stream is
    under way: from its first window (at an earlier window length, if it changed) to the end of its last
    sealed one (to no end once live traffic runs).

    A backfill leaves that span out: earlier windows are history, the span is late (or live traffic's),
    windows after a replayed stream's last sealed one continue it. Other services take any window.
    """
    keys = keys or Keys(key_prefix())
    pipe = r.pipeline(transaction=False)
    for service in services:
        pipe.hmget(keys.state(service), "first", "sealed", "live", "W", "lfrom")
    out: dict[str, tuple[float, float]] = {}
    window_s = read_settings(r, keys).settings.window_seconds
    for service, (first, sealed, live, w, live_from) in zip(services, pipe.execute(), strict=True):
        if first is None or (sealed is None and live is None):
            continue
        length = int(w) if w is not None else window_s
        end = math.inf if live is not None else (int(sealed) + 1) * length
        start = int(first) * length
        if live_from is not None:  # the stream began before a window-length change: covered since then
            start = min(start, int(float(live_from)))
        out[service] = (start, end)
    return out


def retire_service(r: redis.Redis, name: str, keys: Keys | None = None) -> bool:
    """Stop sealing and alerting for a service that no longer exists; it returns if it sends again."""
    keys = keys or Keys(key_prefix())
    known = r.sismember(keys.services, name) or r.sismember(keys.retired, name)
    if not known:
        return False
    from anomalydesk.store.cluster import is_cluster

    # on a cluster the two sets live in different slots (no MULTI across them); retired first, so a
    # crash in between leaves the service in both sets, which still counts as active
    pipe = r.pipeline(transaction=not is_cluster(r))
    pipe.sadd(keys.retired, name)
    pipe.srem(keys.services, name)
    pipe.execute()
    r.hdel(keys.traffic_stops, name)  # a stop on purpose of a service that is gone says nothing any more
    return True


def service_names(r: redis.Redis, keys: Keys | None = None) -> list[str]:
    """Every known service's name, retired ones too (the names `list_services` lists), sorted."""
    keys = keys or Keys(key_prefix())
    return sorted({_text(s) for s in r.smembers(keys.services)} | {_text(s) for s in r.smembers(keys.retired)})


def active_services(r: redis.Redis, keys: Keys | None = None) -> list[str]:
    keys = keys or Keys(key_prefix())
    return sorted(_text(s) for s in r.smembers(keys.services))


def status(r: redis.Redis, keys: Keys | None = None) -> dict[str, Any]:
    """The `status --json` document (DESIGN.md keys, plus a few more)."""
    keys = keys or Keys(key_prefix())
    stored = read_settings(r, keys)
    services = list_services(r, keys)
    stats = {_text(k): _text(v) for k, v in r.hgetall(keys.stats).items()}
    models = {_text(k): int(v) for k, v in r.hgetall(keys.models_index).items()}
    late = sum(s["late"] for s in services)
    info = r.info("server")
    memory = r.info("memory")
    from anomalydesk.store.cluster import is_cluster, node_client, primaries

    if is_cluster(r):  # INFO answers for one node: the data is spread over every primary
        memory = {"used_memory": sum(int(node_client(r, n).info("memory")["used_memory"])  # type: ignore[arg-type]
                                     for n in primaries(r))}  # type: ignore[arg-type]
    counted = [r.hget(keys.alert_stats, "alerts_total"), stats.get("alerts_total")]  # the latter: older data
    if any(c is not None for c in counted):
        alerts_total = sum(int(c) for c in counted if c is not None)
    else:
        alerts_total = int(r.xlen(keys.alerts_log))
    return {
        "window_seconds": stored.settings.window_seconds,
        "sketch_backend": stored.backend if stored.configured else detect_backend(r),
        "events_total": sum(s["events"] for s in services),
        "history_events_total": sum(s["history_events"] for s in services),  # of events_total: backfilled
        "events_rejected": int(stats.get("events_rejected", 0)) + late,
        "events_late": late,
        "windows_sealed": sum(s["windows_sealed"] for s in services),
        "services": [s["name"] for s in services if not s["retired"]],
        "retired_services": [s["name"] for s in services if s["retired"]],
        "fingerprints": sum(s["fingerprints"] for s in services),
        "history_fingerprints": sum(s["history_fingerprints"] for s in services),
        "models": models,
        "incidents_open": int(r.scard(keys.incidents_open)),
        "alerts_total": alerts_total,
        "configured": stored.configured,
        "settings": asdict(stored.settings),
        "server_version": info.get("redis_version"),
        "used_memory": int(memory.get("used_memory", 0)),
        "prefix": keys.prefix,
    }


def migrate_incident_keys(r: redis.Redis, keys: Keys | None = None) -> int:
    """Move incidents, open ids and detector states written before the incident slot; how many moved.

    Older releases kept them in `ad:incidents`, `ad:incidents:open`, `ad:{service}:det` (and the
    webhook keys in `ad:alerts:dead`, `ad:webhooks:stats`); they now share the alert log's slot
    (`Keys.incident_tag`). Copies never overwrite a newer record (HSETNX),
    the old key goes only after its copy, so an interrupted run is finished by the next one (`setup`
    and every detector run it). The old `alerts_total` in `ad:stats` stays where it is and is added.
    """
    keys = keys or Keys(key_prefix())
    moved = 0
    old = r.hgetall(keys.legacy_incidents)
    if old:
        pipe = r.pipeline(transaction=False)
        for incident_id, raw in old.items():
            pipe.hsetnx(keys.incidents, incident_id, raw)
        pipe.execute()
        moved += len(old)
    opened = r.smembers(keys.legacy_incidents_open)
    if opened:
        r.sadd(keys.incidents_open, *opened)
    if old or opened:
        r.delete(keys.legacy_incidents)
        r.delete(keys.legacy_incidents_open)
    moved += _move_webhook_keys(r, keys)
    for service in r.smembers(keys.services):
        service = _text(service)
        legacy = keys.legacy_detector_state(service)
        raw = r.get(legacy)
        if raw is not None:
            r.hsetnx(keys.detector_states, service, raw)
            r.delete(legacy)
            moved += 1
    return moved


def _move_webhook_keys(r: redis.Redis, keys: Keys) -> int:
    """Webhook counters (added up) and dead letters (same entry ids) into the incident slot."""
    moved = 0
    counters = r.hgetall(keys.legacy_webhook_stats)
    if counters:
        r.delete(keys.legacy_webhook_stats)  # first: an interrupted move loses counts, never doubles them
        pipe = r.pipeline(transaction=False)
        for name, count in counters.items():
            pipe.hincrby(keys.webhook_stats, name, int(count))
        pipe.execute()
        moved += len(counters)
    entries = r.xrange(keys.legacy_alerts_dead)
    for entry_id, fields in entries:
        if r.xrange(keys.alerts_dead, min=entry_id, max=entry_id):
            continue  # copied by an interrupted run
        try:
            r.xadd(keys.alerts_dead, fields, id=entry_id)
        except redis.ResponseError:  # newer dead letters are there already: append it after them
            r.xadd(keys.alerts_dead, fields)
    if entries:
        r.delete(keys.legacy_alerts_dead)
        moved += len(entries)
    return moved
