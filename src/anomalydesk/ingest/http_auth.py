"""API keys and per-key rate limits for the HTTP collector.

Keys come from `--api-key` (repeatable) and `--api-keys-file` (one key per line, `#` comments); the
file is re-read when it changes, so removing a line revokes that key without a restart. Keys are
compared in constant time (`hmac.compare_digest` against every known key, no early exit).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from anomalydesk.config import COLLECTOR_API_KEY_MIN_LENGTH

log = logging.getLogger(__name__)


class KeyFileError(ValueError):
    """The API keys file cannot be used (unreadable, or a key is too short)."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def read_keys_file(path: Path) -> list[str]:
    """Keys in `path`: one per line, blank lines and `#` comments ignored; short keys are an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise KeyFileError(f"cannot read API keys file {path}: {err}") from None
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if len(key) < COLLECTOR_API_KEY_MIN_LENGTH:
            raise KeyFileError(
                f"{path}:{number}: an API key needs at least {COLLECTOR_API_KEY_MIN_LENGTH} characters"
            )
        keys.append(key)
    return keys


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ApiKeys:
    """The set of accepted API keys; `required` is False only when no key source is configured."""

    def __init__(self, keys: Iterable[str] = (), keys_file: str | os.PathLike[str] | None = None):
        self._static = list(keys)
        for key in self._static:
            if len(key) < COLLECTOR_API_KEY_MIN_LENGTH:
                raise KeyFileError(f"--api-key needs at least {COLLECTOR_API_KEY_MIN_LENGTH} characters")
        self.keys_file = Path(keys_file) if keys_file is not None else None
        self._signature: tuple[int, int, int] | None = None
        self._digests: list[bytes] = [_digest(k) for k in self._static]
        if self.keys_file is not None:
            self._signature = _file_signature(self.keys_file)
            self._load_file(read_keys_file(self.keys_file))  # a bad file at start-up is fatal

    @property
    def required(self) -> bool:
        return bool(self._static) or self.keys_file is not None

    def __len__(self) -> int:
        return len(self._digests)

    def _load_file(self, file_keys: list[str]) -> None:
        self._digests = [_digest(k) for k in [*self._static, *file_keys]]

    def reload_if_changed(self) -> bool:
        """Re-read the keys file if it changed; True when the key set was replaced.

        A file that disappears or becomes unreadable leaves only the `--api-key` keys (fail closed:
        a revoked key must not come back because the file is being rewritten).
        """
        if self.keys_file is None:
            return False
        signature = _file_signature(self.keys_file)
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            file_keys = read_keys_file(self.keys_file)
        except KeyFileError as err:
            log.error("%s; only --api-key keys are accepted until it is fixed", err)
            file_keys = []
        self._load_file(file_keys)
        log.info("API keys reloaded from %s: %d keys", self.keys_file, len(self._digests))
        return True

    def identify(self, presented: str | None) -> str | None:
        """The key's id (a short hash, safe to log and use as a rate-limit bucket) or None if unknown."""
        if presented is None:
            return None
        digest = _digest(presented)
        match = False
        for known in self._digests:  # no early exit: the time taken does not depend on which key
            match |= hmac.compare_digest(digest, known)
        return digest[:6].hex() if match else None


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The API key of a request: `Authorization: Bearer KEY` or `X-API-Key: KEY`."""
    auth = headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("X-API-Key")
    return key.strip() if key else None


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    """Token bucket per key: `rate` requests per second on average, bursts up to `burst`."""

    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, bucket_id: str, cost: float = 1.0) -> float:
        """0.0 if allowed (and charged), else the seconds until `cost` tokens are available."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(bucket_id)
        if bucket is None:
            if len(self._buckets) > 100_000:  # many client addresses: forget the full buckets
                self._buckets = {k: b for k, b in self._buckets.items() if b.tokens < self.burst}
            bucket = self._buckets[bucket_id] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0.0
        return (cost - bucket.tokens) / self.rate
