"""Reading fingerprint streams through the detectors' consumer group (`config.DETECTOR_GROUP`).

The group of a service's stream is created a little way back (`config.DETECTOR_CATCHUP_WINDOWS`), so a
first detector scores the recent past too. New entries come from one blocking XREADGROUP over every
owned stream; a Redis Cluster refuses a read across slots, so there each stream is read without
blocking (one pipeline, grouped per node) and an empty round waits as the blocking read would.
A detector taking a service over first claims (XAUTOCLAIM) what the previous owner left pending.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import redis

from anomalydesk import config
from anomalydesk.store.keys import Keys


class StreamReader:
    """One detector's (consumer `name`'s) reads of the fingerprint streams."""

    def __init__(self, r: redis.Redis, keys: Keys, name: str, *, block_ms: int, cluster: bool):
        self.r = r
        self.keys = keys
        self.name = name
        self.block_ms = block_ms
        self._cluster = cluster
        self._groups: set[str] = set()

    def ensure_group(self, service: str) -> None:
        """Create the service's consumer group (once per process; BUSYGROUP is fine)."""
        if service in self._groups:
            return
        stream = self.keys.fingerprints(service)
        back = self.r.xrevrange(stream, count=config.DETECTOR_CATCHUP_WINDOWS)
        start = before(text(back[-1][0]) if back else "0")
        try:
            self.r.xgroup_create(stream, config.DETECTOR_GROUP, id=start, mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise
        self._groups.add(service)

    def read(self, streams: list[str], *, idle: bool) -> list:
        """New entries of the owned streams: one blocking XREADGROUP, or on a cluster one per stream
        (an `idle` round that finds nothing waits `block_ms`)."""
        if not self._cluster:
            return self.r.xreadgroup(config.DETECTOR_GROUP, self.name, dict.fromkeys(streams, ">"),
                                     count=config.DETECTOR_READ_COUNT, block=self.block_ms) or []  # fmt: skip
        pipe = self.r.pipeline(transaction=False)
        for stream in streams:
            pipe.xreadgroup(config.DETECTOR_GROUP, self.name, {stream: ">"}, count=config.DETECTOR_READ_COUNT)
        replies = [reply for found in pipe.execute() for reply in found or []]
        if idle and not any(entries for _, entries in replies):
            time.sleep(self.block_ms / 1000)
        return replies

    def claim_pending(self, service: str) -> Iterator[list]:
        """Every entry pending in the service's group, claimed for this consumer page by page (entries
        deleted from the stream meanwhile are acknowledged and left out)."""
        stream, cursor = self.keys.fingerprints(service), "0-0"
        while True:
            reply = self.r.xautoclaim(stream, config.DETECTOR_GROUP, self.name, min_idle_time=0,
                                      start_id=cursor, count=config.DETECTOR_READ_COUNT)  # fmt: skip
            cursor, entries = text(reply[0]), reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:
                self.r.xack(stream, config.DETECTOR_GROUP, *deleted)
            yield [e for e in entries if e and e[1]]
            if cursor == "0-0":
                return


def live_services(r: redis.Redis, *, keys: Keys | None = None) -> list[str]:
    """Known services minus retired ones, sorted."""
    keys = keys or Keys(config.key_prefix())
    pipe = r.pipeline(transaction=False)
    pipe.smembers(keys.services)
    pipe.smembers(keys.retired)
    known, retired = pipe.execute()
    return sorted(text(s) for s in known - retired)


def text(value: bytes | str) -> str:
    """A stream id or name as str."""
    return value.decode() if isinstance(value, bytes) else value


def before(entry_id: str) -> str:
    """The id just before `entry_id` (so a group created there delivers `entry_id` itself)."""
    ms, _, seq = entry_id.partition("-")
    if seq and int(seq) > 0:
        return f"{ms}-{int(seq) - 1}"
    return f"{int(ms) - 1}-18446744073709551615" if int(ms) > 0 else "0"
