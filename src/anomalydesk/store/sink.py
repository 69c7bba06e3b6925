"""The ingestion API (direct sink): validated events → pre-aggregated batches → one FCALL per service.

A batch of thousands of events becomes one small payload per service (per window in replay mode,
`store.encoding`) and one atomic FCALL. A batch id per service makes a retry after a lost reply a
no-op on the server. This module is the sink's public face; the work is split by job:

- `store.ingest_core`: the write logic without I/O (settings cache, stale-config resend, lost
  functions, refusals), the result and error types;
- `store.writer`: the synchronous shell over redis.Redis (`ingest`, `ingest_aggregates`);
- `store.async_writer`: the asyncio shell over redis.asyncio.Redis (`AsyncWriter`, `ingest_async`);
- `store.ingest_buffer`: the buffered, thread-safe producer (`IngestSink`);
- `store.sealing`: `seal_all`/`SealTicker`, re-exported here for producers.
"""

from __future__ import annotations

from anomalydesk.store.async_writer import AsyncWriter, ingest_async
from anomalydesk.store.encoding import WindowAggregate, columns_of, encode
from anomalydesk.store.ingest_buffer import BufferFull, IngestSink
from anomalydesk.store.ingest_core import ConfigChanged, IngestResult, InvalidBatch, NotSetUp, Payloads, Reencode
from anomalydesk.store.sealing import SealTicker, seal_all
from anomalydesk.store.writer import Writer, ingest, ingest_aggregates

__all__ = [
    "AsyncWriter", "BufferFull", "ConfigChanged", "IngestResult", "IngestSink", "InvalidBatch", "NotSetUp",
    "Payloads", "Reencode", "SealTicker", "WindowAggregate", "Writer", "columns_of", "encode", "ingest",
    "ingest_aggregates", "ingest_async", "seal_all",
]
