"""The store as the collector's routes see it: the port they are given, instead of reaching into each other.

`collector_server.StoreBinding` implements it over one redis.asyncio client; the JSON routes use
`ingest`, `count_rejected` and `health`, the OTLP receiver `prepare`/`forget_setup`, `ar`, `keys` and
`ingest_aggregates` (its series state lives in Redis beside the aggregates).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import redis.asyncio
import redis.exceptions

from anomalydesk.events import BusinessMetric
from anomalydesk.ingest.microbatch import Event
from anomalydesk.store.keys import Keys
from anomalydesk.store.sink import IngestResult, WindowAggregate

# what "Redis is unreachable" looks like from redis-py and asyncio: the collector answers 503
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ConnectionError, TimeoutError)


class StorePort(Protocol):
    """What a collector and its OTLP receiver need of a store."""

    @property
    def ar(self) -> redis.asyncio.Redis:
        """The long-lived asyncio client (OTLP keeps its cumulative series state through it)."""

    @property
    def keys(self) -> Keys:
        """The key layout (prefix) the store writes under."""

    async def prepare(self) -> None:
        """Make sure the store is ready for ingest (gears library, setup); shared by concurrent callers."""

    def forget_setup(self) -> None:
        """The server lost its setup (flushed or replaced): the next `prepare` does it again."""

    async def ingest(self, events: list[Event], batch_id: str) -> Mapping[str, IngestResult]:
        """Write validated events (live mode) under `batch_id`; what the store did with them, per service."""

    async def ingest_aggregates(self, service: str, windows: Sequence[WindowAggregate], *,
                                kpis: Sequence[BusinessMetric] = (), batch_id: str | None = None,
                                sparse: bool = False) -> IngestResult:
        """Write pre-aggregated windows of one service (OTLP histograms)."""

    async def count_rejected(self, n: int) -> None:
        """Add invalid events to the store's `events_rejected` counter (best effort)."""

    async def health(self) -> dict[str, Any]:
        """`redis` (reachable, latency_ms or error) and `gears_version` for GET /health."""
