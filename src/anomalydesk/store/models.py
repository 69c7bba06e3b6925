"""The model registry: versioned models per service in Redis, with metadata, activation and rollback.

Layout (store/keys.py): `Keys.models(service)` is a hash holding, per version `v`, the field `v` (the
model blob: the data-only JSON of `detect.forest`, never pickle) and the field `v:meta` (metadata
JSON: created, windows, schema, params, quantiles, metrics), plus the counter field `seq`;
`Keys.model_versions(service)` lists the kept versions, newest last; the global hash
`Keys.models_index` maps each service to its active version.

This module is blob-agnostic: it stores and returns bytes. Decoding (and refusing a tampered blob)
is the caller's job through `load(..., decode=...)`, so the store layer never imports `detect`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis

from anomalydesk import config
from anomalydesk.fingerprint import SCHEMA_VERSION
from anomalydesk.store.keys import Keys

T = TypeVar("T")
_SEQ_FIELD = "seq"


class ModelNotFound(LookupError):
    """No such model (service without models, or a version that was never kept)."""


class ModelLoadError(ValueError):
    """A stored model could not be decoded (tampered, truncated or of an unknown format)."""


@dataclass(frozen=True)
class ModelInfo:
    """One stored model version as listed by `models list`."""

    service: str
    version: int
    created: float  # epoch seconds
    schema: int
    windows: int
    active: bool
    params: dict[str, Any] = field(default_factory=dict)
    quantiles: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def stale(self) -> bool:
        """A model of an older fingerprint schema cannot score today's fingerprints."""
        return self.schema != SCHEMA_VERSION

    @property
    def model_format(self) -> int:
        """The model's format (detect/model.py): 2 follows a moving baseline, 1 (and unrecorded) does not."""
        return int(self.extra.get("model_format") or 1)

    @property
    def window_seconds(self) -> int | None:
        """The window length it was trained at (None: a model from before that was recorded)."""
        value = self.extra.get("window_seconds")
        return int(value) if value is not None else None

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape `models list --json` prints."""
        return {
            "service": self.service, "version": self.version, "created": self.created,
            "schema": self.schema, "windows": self.windows, "active": self.active, "stale": self.stale,
            "params": self.params, "quantiles": self.quantiles, "metrics": self.metrics, **self.extra,
            "model_format": self.model_format,
        }  # fmt: skip


@dataclass(frozen=True)
class LoadedModel:
    """A decoded model with its registry metadata."""

    info: ModelInfo
    model: Any


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _info(service: str, version: int, meta_raw: bytes | str | None, active: int | None) -> ModelInfo:
    try:
        meta = json.loads(_text(meta_raw) or "{}")
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a JSON object")
    except ValueError as err:
        raise ModelLoadError(f"model {service} v{version}: unreadable metadata ({err})") from err
    known = ("created", "schema", "windows", "params", "quantiles", "metrics")
    return ModelInfo(
        service=service,
        version=version,
        created=float(meta.get("created", 0.0)),
        schema=int(meta.get("schema", 0)),
        windows=int(meta.get("windows", 0)),
        active=version == active,
        params=dict(meta.get("params") or {}),
        quantiles=dict(meta.get("quantiles") or {}),
        metrics=dict(meta.get("metrics") or {}),
        extra={k: v for k, v in meta.items() if k not in known},
    )


def save(
    r: redis.Redis,
    service: str,
    blob: bytes | str,
    metadata: dict[str, Any],
    *,
    activate: bool = True,
    keep: int = config.MODEL_KEEP_VERSIONS,
    keys: Keys | None = None,
) -> int:
    """Store a new model version for `service` (optionally activating it); return its version."""
    keys = keys or Keys(config.key_prefix())
    meta = {"created": time.time(), "schema": SCHEMA_VERSION, **metadata}
    version = int(r.hincrby(keys.models(service), _SEQ_FIELD, 1))
    pipe = r.pipeline(transaction=True)  # both keys share the service's hash slot
    pipe.hset(keys.models(service), mapping={str(version): blob, f"{version}:meta": json.dumps(meta)})
    pipe.rpush(keys.model_versions(service), version)
    pipe.execute()
    if activate:
        r.hset(keys.models_index, service, version)
    _trim(r, service, keep, keys)
    return version


def _trim(r: redis.Redis, service: str, keep: int, keys: Keys) -> None:
    versions = versions_of(r, service, keys=keys)
    active = active_version(r, service, keys=keys)
    drop = [v for v in versions[: max(0, len(versions) - keep)] if v != active]
    if not drop:
        return
    pipe = r.pipeline(transaction=True)
    for v in drop:
        pipe.lrem(keys.model_versions(service), 0, v)
        pipe.hdel(keys.models(service), str(v), f"{v}:meta")
    pipe.execute()


def versions_of(r: redis.Redis, service: str, *, keys: Keys | None = None) -> list[int]:
    """Kept versions of a service, oldest first."""
    keys = keys or Keys(config.key_prefix())
    return [int(v) for v in r.lrange(keys.model_versions(service), 0, -1)]


def active_version(r: redis.Redis, service: str, *, keys: Keys | None = None) -> int | None:
    """The active version of a service, or None when it has none."""
    keys = keys or Keys(config.key_prefix())
    value = r.hget(keys.models_index, service)
    return int(value) if value is not None else None


def active_versions(r: redis.Redis, *, keys: Keys | None = None) -> dict[str, int]:
    """Service → active version, for every service with an active model."""
    keys = keys or Keys(config.key_prefix())
    return {_text(k) or "": int(v) for k, v in r.hgetall(keys.models_index).items()}


def list_models(r: redis.Redis, service: str, *, keys: Keys | None = None) -> list[ModelInfo]:
    """Metadata of every kept version of one service, oldest first (blobs are not read)."""
    keys = keys or Keys(config.key_prefix())
    versions = versions_of(r, service, keys=keys)
    if not versions:
        return []
    metas = r.hmget(keys.models(service), [f"{v}:meta" for v in versions])
    active = active_version(r, service, keys=keys)
    return [_info(service, v, m, active) for v, m in zip(versions, metas, strict=True)]


def info(r: redis.Redis, service: str, version: int | None = None, *, keys: Keys | None = None) -> ModelInfo:
    """Metadata of one version (default: the active one); ModelNotFound when there is none."""
    keys = keys or Keys(config.key_prefix())
    active = active_version(r, service, keys=keys)
    version = active if version is None else version
    if version is None:
        raise ModelNotFound(f"service {service!r} has no active model (run `anomalydesk train`)")
    meta = r.hget(keys.models(service), f"{version}:meta")
    if meta is None:
        raise ModelNotFound(f"service {service!r} has no model version {version}")
    return _info(service, version, meta, active)


def load_blob(
    r: redis.Redis, service: str, version: int | None = None, *, keys: Keys | None = None
) -> tuple[ModelInfo, bytes]:
    """Metadata and raw blob of one version (default: the active one)."""
    keys = keys or Keys(config.key_prefix())
    meta = info(r, service, version, keys=keys)
    blob = r.hget(keys.models(service), str(meta.version))
    if blob is None:
        raise ModelNotFound(f"service {service!r}: model version {meta.version} has metadata but no data")
    return meta, blob if isinstance(blob, bytes) else blob.encode()


def load(
    r: redis.Redis,
    service: str,
    decode: Callable[[bytes], T],
    version: int | None = None,
    *,
    keys: Keys | None = None,
) -> tuple[ModelInfo, T]:
    """Load and decode one version; a blob `decode` refuses becomes ModelLoadError naming the model."""
    meta, blob = load_blob(r, service, version, keys=keys)
    try:
        return meta, decode(blob)
    except (ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"model {service} v{meta.version} refused: {err}") from err


def activate(r: redis.Redis, service: str, version: int, *, keys: Keys | None = None) -> ModelInfo:
    """Make a kept version the active one; ModelNotFound when it is not kept."""
    keys = keys or Keys(config.key_prefix())
    if not r.hexists(keys.models(service), f"{version}:meta"):
        kept = versions_of(r, service, keys=keys)
        raise ModelNotFound(
            f"service {service!r} has no model version {version} (kept: {kept or 'none'})"
        )
    r.hset(keys.models_index, service, version)
    return info(r, service, version, keys=keys)


def rollback(r: redis.Redis, service: str, *, keys: Keys | None = None) -> ModelInfo:
    """Activate the kept version just before the active one; ModelNotFound when there is none."""
    keys = keys or Keys(config.key_prefix())
    versions = versions_of(r, service, keys=keys)
    active = active_version(r, service, keys=keys)
    if active is None:
        raise ModelNotFound(f"service {service!r} has no active model to roll back from (kept: {versions or 'none'})")
    older = [v for v in versions if v < active]
    if not older:
        raise ModelNotFound(
            f"service {service!r}: no version older than the active one ({active}) to roll back to"
        )
    return activate(r, service, older[-1], keys=keys)


def remove_service(r: redis.Redis, service: str, *, keys: Keys | None = None) -> None:
    """Forget every model of a service (used when a service is retired and purged)."""
    keys = keys or Keys(config.key_prefix())
    r.delete(keys.models(service), keys.model_versions(service))
    r.hdel(keys.models_index, service)
