"""Redis Cluster support: a cluster client that routes FCALL by its declared key, and per-primary helpers.

Every per-service key carries the service as hash tag and every gears function declares exactly one
key (the service's state hash), so an FCALL belongs to one slot. redis-py's stock RedisCluster finds
FCALL's key with an extra `COMMAND GETKEYS` round trip that ships the whole payload a second time;
`ClusterClient` reads the key from the FCALL arguments instead (`FCALL name numkeys key…`).

Functions live per node: `FUNCTION LOAD` must reach every primary, including one that joins later
or a replica promoted after a failover (replicas receive the library from their primary, but the
library loader checks each primary anyway).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio.cluster
from redis._parsers.commands import AsyncCommandsParser, CommandsParser
from redis.cluster import ClusterNode, RedisCluster

_FCALLS = ("FCALL", "FCALL_RO")


class FcallKeysParser(CommandsParser):
    """CommandsParser that reads FCALL/FCALL_RO keys from the arguments (no COMMAND GETKEYS round trip)."""

    def get_keys(self, redis_conn: Any, *args: Any) -> list[Any] | None:
        """Keys of a command: FCALL's declared keys locally, everything else as redis-py does."""
        keys = _fcall_keys(args)
        if keys is not None:
            return keys
        return super().get_keys(redis_conn, *args)


class ClusterClient(RedisCluster):
    """RedisCluster with FCALL routed by its declared key; pipelines share the parser."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        # The parser redis-py built, with whatever state its version keeps (8.2 added compiled key
        # specs), becomes ours: only get_keys changes.
        self.commands_parser.__class__ = FcallKeysParser


def _fcall_keys(args: tuple[Any, ...]) -> list[Any] | None:
    if len(args) >= 3 and str(args[0]).upper() in _FCALLS:
        return list(args[3:3 + int(args[2])]) or None
    return None


class AsyncFcallKeysParser(AsyncCommandsParser):
    """The asyncio twin of FcallKeysParser."""

    async def get_keys(self, *args: Any) -> tuple[Any, ...] | None:
        """Keys of a command: FCALL's declared keys locally, everything else as redis-py does."""
        keys = _fcall_keys(args)
        if keys is not None:
            return tuple(keys)
        return await super().get_keys(*args)


class AsyncClusterClient(redis.asyncio.cluster.RedisCluster):
    """The asyncio RedisCluster with FCALL routed by its declared key."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.commands_parser = AsyncFcallKeysParser()


def async_cluster_client(options: dict[str, Any]) -> AsyncClusterClient:
    """An asyncio cluster client for connection options (db 0 only; not yet connected)."""
    options = dict(options)
    if options.pop("db", 0) != 0:
        raise ValueError("Redis Cluster has only database 0")
    return AsyncClusterClient(**options)


def is_cluster(r: object) -> bool:
    """True for a Redis Cluster client (sync or asyncio, or one of their pipelines)."""
    return isinstance(r, RedisCluster | redis.asyncio.cluster.RedisCluster)


def primaries(r: RedisCluster) -> list[ClusterNode]:
    """The cluster's primaries as the client sees them now (slots refreshed first)."""
    r.nodes_manager.initialize()
    return list(r.get_primaries())


def node_client(r: RedisCluster, node: ClusterNode) -> redis.Redis:
    """A plain client to one cluster node (shares the cluster client's connection pool for that node)."""
    client = r.get_redis_connection(node)
    if client is None:
        raise redis.ConnectionError(f"no connection to cluster node {node.name}")
    return client


def cluster_enabled(r: redis.Redis) -> bool:
    """True when the server behind a plain client runs in cluster mode (`cluster_enabled:1` in INFO)."""
    try:
        return bool(int(r.info("cluster").get("cluster_enabled", 0)))
    except redis.ResponseError:  # INFO section refused (e.g. an ACL user without INFO): assume standalone
        return False


def shard_of(r: RedisCluster, key: str) -> str:
    """`host:port` of the primary that holds `key`."""
    return r.get_node_from_key(key).name


def describe(r: RedisCluster) -> dict[str, Any]:
    """Shards as the client sees them: {primary name: number of slots}, for `status` and diagnostics."""
    slots: dict[str, int] = {}
    for _slot, nodes in r.nodes_manager.slots_cache.items():
        if nodes:
            slots[nodes[0].name] = slots.get(nodes[0].name, 0) + 1
    return {"primaries": sorted(slots), "slots": slots}
