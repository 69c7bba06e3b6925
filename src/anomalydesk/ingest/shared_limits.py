"""Rate limits shared by the processes of `anomalydesk collect --workers N`: one token bucket per key.

The buckets live in a table in shared memory (an anonymous `MAP_SHARED` mapping made before the
workers are forked) under one process-shared lock (`ProcessLock`: freed by the kernel when a worker
dies holding it), so a key gets the same `--rate-limit` and
`--rate-burst` whichever worker its connections land on — the limit is shared, not split by N.

Each slot holds an 8-byte digest of the bucket id, the tokens and the time of the last update
(`time.monotonic`, the same clock in every process of the machine). A bucket id goes to the slot of
its digest or one of the next `PROBES` (linear probing; slots are never emptied, so a probe can stop
at the first empty one). A bucket that has refilled to its burst is the same as no bucket at all,
so its slot is taken over by another id when needed. Only when every probed slot holds a bucket
that is not full (more than `PROBES` busy buckets in one neighbourhood of `SLOTS`) does that id fall
back to a bucket of this worker's own; `fallbacks` counts them.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from anomalydesk.ingest.http_auth import RateLimiter

SLOTS = 1 << 16  # 1.5 MiB of shared memory
PROBES = 32
_SLOT = struct.Struct("<Qdd")  # digest (0 = empty), tokens, updated


def _digest(bucket_id: str) -> int:
    value = int.from_bytes(hashlib.blake2b(bucket_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                           "little")
    return value or 1  # 0 marks an empty slot


class ProcessLock:
    """A lock between forked processes that the kernel releases when its holder dies.

    A POSIX record lock (`fcntl.lockf`) on a file opened before the fork: record locks belong to the
    process, so a worker killed inside its critical section (the OOM killer, `kill -9`) frees it at its
    exit, where a `multiprocessing.Lock` (a semaphore) stays taken and every other worker — and every
    worker started in its place — would block on it for good. Record locks do not exclude the threads
    of one process from each other: a thread lock does that.
    """

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the limiter; unlinked at once)
        self._thread = threading.Lock()

    def __enter__(self) -> ProcessLock:
        self._thread.acquire()
        try:
            fcntl.lockf(self._file.fileno(), fcntl.LOCK_EX, 1, 0)
        except BaseException:
            self._thread.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.lockf(self._file.fileno(), fcntl.LOCK_UN, 1, 0)
        finally:
            self._thread.release()


class SharedRateLimiter:
    """`http_auth.RateLimiter`'s interface over a table every forked worker sees."""

    def __init__(self, rate: float, burst: float, *, slots: int = SLOTS,
                 clock: Callable[[], float] = time.monotonic, lock: Any = None):
        self.rate = rate
        self.burst = burst
        self.slots = slots
        self.clock = clock
        self._table = mmap.mmap(-1, slots * _SLOT.size)  # anonymous and shared: inherited across fork
        self._lock = lock if lock is not None else ProcessLock()
        self._local = RateLimiter(rate, burst, clock=clock)
        self.fallbacks = 0

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, bucket_id: str, cost: float = 1.0) -> float:
        """0.0 if allowed (and charged), else the seconds until `cost` tokens are available."""
        if not self.enabled:
            return 0.0
        digest = _digest(bucket_id)
        table, size = self._table, _SLOT.size
        with self._lock:
            now = self.clock()
            free = None
            for probe in range(PROBES):
                offset = ((digest + probe) % self.slots) * size
                held, tokens, updated = _SLOT.unpack_from(table, offset)
                if held == digest:
                    break
                if held == 0:  # never used: the id is in no later slot either
                    if free is None:
                        free = offset
                    break
                if free is None and min(self.burst, tokens + (now - updated) * self.rate) >= self.burst:
                    free = offset  # a full bucket is the same as none: reusable
            if held != digest:
                if free is None:  # every probed bucket is in use: this worker's own bucket
                    self.fallbacks += 1
                    return self._local.acquire(bucket_id, cost)
                offset, tokens, updated = free, self.burst, now
            tokens = min(self.burst, tokens + (now - updated) * self.rate)
            if tokens >= cost:
                _SLOT.pack_into(table, offset, digest, tokens - cost, now)
                return 0.0
            _SLOT.pack_into(table, offset, digest, tokens, now)
            return (cost - tokens) / self.rate
