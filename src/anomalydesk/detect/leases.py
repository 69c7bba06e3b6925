"""The detector's leases: "a detector runs" (global) and "this detector owns that service" (one per service).

Each lease is a key holding the holder's name with an expiry (SET NX PX), renewed every step by a
small script that takes it when free and extends it when held; released only by its holder. The
desktop app's in-process detector (`respect_lease=True`) takes the global lease only when nobody
holds it; a standalone detector sets it. Owning a service means its windows are handled in order by
this detector alone while others share the rest.
"""

from __future__ import annotations

import redis

from anomalydesk.store.keys import Keys

_RELEASE_LUA = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_RENEW_LUA = """
local v = redis.call('GET', KEYS[1])
if v == false then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""


class Leases:
    """The global lease and the per-service owner leases of one detector (`name`)."""

    def __init__(self, r: redis.Redis, keys: Keys, name: str, *, respect_lease: bool, lease_ms: int,
                 service_lease_ms: int, cluster: bool):
        self.r = r
        self.keys = keys
        self.name = name
        self.respect_lease = respect_lease
        self.lease_ms = lease_ms
        self.service_lease_ms = service_lease_ms
        self._cluster = cluster
        self._renew = r.register_script(_RENEW_LUA)
        self._release = r.register_script(_RELEASE_LUA)

    def hold_global(self) -> bool:
        """Take or renew "a detector runs"; False when another detector holds it and this one respects it."""
        if self.respect_lease:
            return bool(self._renew(keys=[self.keys.detector_lease], args=[self.name, self.lease_ms]))
        self.r.set(self.keys.detector_lease, self.name, px=self.lease_ms)
        return True

    def own(self, services: list[str]) -> list[str]:
        """Take or renew the owner lease of each service; the services this detector owns now."""
        args = [self.name, self.service_lease_ms]
        if self._cluster:  # redis-py refuses scripts in a cluster pipeline: one call per service
            held = [self._renew(keys=[self.keys.detector_owner(s)], args=args) for s in services]
        else:
            pipe = self.r.pipeline(transaction=False)
            for service in services:
                self._renew(keys=[self.keys.detector_owner(service)], args=args, client=pipe)
            held = pipe.execute()
        return [s for s, ok in zip(services, held, strict=True) if ok]

    def release(self, services: list[str]) -> None:
        """Give up the owner leases of `services` and the global lease (another detector takes over at once)."""
        for service in services:
            self._release(keys=[self.keys.detector_owner(service)], args=[self.name])
        self._release(keys=[self.keys.detector_lease], args=[self.name])
