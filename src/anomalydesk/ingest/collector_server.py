"""Running the collector against a Redis: prepare the store, bind the ingestion API, serve HTTP(S).

Redis may be down when the collector starts or later: it still starts, answers 503 with
Retry-After while Redis is unreachable, and prepares the store (gears library, default setup) on the
first ingest after Redis comes back.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.asyncio

from anomalydesk import config
from anomalydesk.config import SketchSettings, key_prefix
from anomalydesk.events import BusinessMetric
from anomalydesk.ingest.collector import Collector, CollectorSettings, load_keys, tls_context
from anomalydesk.ingest.microbatch import Event
from anomalydesk.ingest.store_port import REDIS_DOWN
from anomalydesk.store import admin, gears
from anomalydesk.store.connection import ConnectionFailed, connect, connect_async, redact_url
from anomalydesk.store.encoding import Config
from anomalydesk.store.keys import Keys
from anomalydesk.store.locate import resolve_url
from anomalydesk.store.sink import AsyncWriter, IngestResult, NotSetUp, Payloads, WindowAggregate, columns_of, encode

log = logging.getLogger(__name__)


def prepare_store(url: str) -> int:
    """Load (or upgrade) the gears library and write the default setup if there is none; the version."""
    r = connect(url)
    try:
        version = gears.ensure_library(r)
        if not admin.read_settings(r).configured:
            admin.setup(r, SketchSettings())
        return version
    finally:
        r.close()


class StoreBinding:
    """The collector's store port (`ingest.store_port.StorePort`) over one Redis: ingest, rejected-event
    counter, health, and what the OTLP receiver needs."""

    def __init__(self, url: str, ar: redis.asyncio.Redis | None = None):
        self.url = url
        self.ar = ar if ar is not None else connect_async(url)
        self.keys = Keys(key_prefix())
        self.writer = AsyncWriter(self.ar, self.keys)
        self.gears_version: int | None = None
        self._preparing: asyncio.Future[None] | None = None

    async def prepare(self) -> None:
        """Make sure the store is ready for ingest (once; again after a failure).

        One preparation at a time, shared by every request waiting for it: a request whose deadline
        passes stops waiting, the preparation (a blocking call in a thread) goes on for the others.
        """
        if self.gears_version is not None:
            return
        if self._preparing is None or self._preparing.done():
            self._preparing = asyncio.ensure_future(self._prepare_once())
            self._preparing.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
        await asyncio.shield(self._preparing)

    def forget_setup(self) -> None:
        """The server lost its setup (flushed or replaced under us): the next `prepare` does it again."""
        self.gears_version = None

    async def _prepare_once(self) -> None:
        try:
            self.gears_version = await asyncio.to_thread(prepare_store, self.url)
        except ConnectionFailed as err:  # unreachable now: the caller answers 503
            raise redis.ConnectionError(str(err)) from err

    async def ingest(self, events: list[Event], batch_id: str) -> dict[str, IngestResult]:
        """Write validated events (live mode); what the store did with them, per service."""
        await self.prepare()
        try:
            return await self._write(events, batch_id)
        except NotSetUp:  # someone flushed the server under us: set it up again, same batch id
            self.forget_setup()
            await self.prepare()
            return await self._write(events, batch_id)

    async def _write(self, events: list[Event], batch_id: str) -> dict[str, IngestResult]:
        columns = columns_of(events)

        def reencode(config: Config, services: set[str] | None) -> Payloads:
            chosen = columns if services is None else {s: c for s, c in columns.items() if s in services}
            return encode(chosen, config, False, batch_id)

        per_service: dict[str, IngestResult] = {}
        await self.writer.write(reencode(await self.writer.config(), None), reencode, per_service=per_service)
        return per_service

    async def ingest_aggregates(self, service: str, windows: Sequence[WindowAggregate], *,
                                kpis: Sequence[BusinessMetric] = (), batch_id: str | None = None,
                                sparse: bool = False) -> IngestResult:
        """Write pre-aggregated windows of one service (OTLP histograms; the caller prepared the store)."""
        return await self.writer.ingest_aggregates(service, windows, kpis=kpis, batch_id=batch_id, sparse=sparse)

    async def count_rejected(self, n: int) -> None:
        """Add invalid events to the store's `events_rejected` counter (best effort)."""
        try:
            async with asyncio.timeout(config.COLLECTOR_DEADLINE_SECONDS):
                await self.ar.hincrby(self.keys.stats, "events_rejected", n)
        except REDIS_DOWN:  # TimeoutError (the deadline) among them
            pass  # the answer to the client says what was rejected; the counter is a statistic

    async def health(self) -> dict[str, Any]:
        """`redis` (reachable, latency_ms or error) and `gears_version` for GET /health."""
        started = time.perf_counter()
        try:
            await self.ar.ping()
        except (*REDIS_DOWN, redis.RedisError) as err:
            return {"redis": {"reachable": False, "error": str(err) or type(err).__name__},
                    "gears_version": None}
        latency = (time.perf_counter() - started) * 1000
        version = None
        try:
            version = (await self.ar.fcall("ad_version", 0)).decode()
        except redis.RedisError:
            version = None  # not loaded yet: the first ingest loads it
        return {"redis": {"reachable": True, "latency_ms": round(latency, 3)}, "gears_version": version}

    async def aclose(self) -> None:
        await self.ar.aclose()


async def _prepare_or_warn(binding: StoreBinding) -> None:
    try:
        await binding.prepare()
    except (*REDIS_DOWN, redis.RedisError) as err:
        log.warning("Redis at %s is not reachable yet (%s); answering 503 until it is",
                    redact_url(binding.url), err)


def build(settings: CollectorSettings, url: str) -> tuple[Collector, StoreBinding]:
    """A collector bound to the store at `url` (SettingsError for unusable settings)."""
    keys = load_keys(settings)
    binding = StoreBinding(url)
    collector = Collector(binding, settings, keys)
    return collector, binding


async def serve(
    settings: CollectorSettings, url: str | None, on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (or `stop` is set); `on_ready(url)` once listening."""
    from aiohttp import web

    url = resolve_url(url)
    ssl_context = tls_context(settings)
    collector, binding = build(settings, url)
    await _prepare_or_warn(binding)
    runner = web.AppRunner(collector.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=ssl_context,
                       backlog=1024, reuse_address=True)
    await site.start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass  # not the main thread (tests, bench)
    port = site._server.sockets[0].getsockname()[1] if site._server else settings.port  # type: ignore[union-attr]
    scheme = "https" if ssl_context else "http"
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    listening = f"{scheme}://{host}:{port}"
    log.info("collector listening on %s (Redis %s, keys %s)", listening, redact_url(url),
                "required" if collector.keys.required else "not required: loopback only")
    if on_ready is not None:
        on_ready(listening)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()  # stops accepting, drains the micro-batcher
        await binding.aclose()


def run(settings: CollectorSettings, url: str | None, on_ready: Callable[[str], None] | None = None) -> None:
    """`serve` in this thread until SIGINT/SIGTERM, on uvloop where it is installed (cheaper I/O per request)."""
    try:
        import uvloop
    except ImportError:  # uvloop has no Windows build: the standard loop serves the same answers
        asyncio.run(serve(settings, url, on_ready))
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings, url, on_ready))


class BackgroundCollector:
    """A collector on its own event loop in a daemon thread (tests, bench, embedding in an app).

    `make` builds the Collector inside that loop (default: bound to the store at `url`); `url` is
    where it listens once `start()` returned.
    """

    def __init__(self, settings: CollectorSettings, redis_url: str | None = None,
                 make: Callable[[], tuple[Collector, StoreBinding | None]] | None = None):
        self.settings = settings
        self.redis_url = redis_url
        self._make = make
        self.collector: Collector | None = None
        self.url = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="anomalydesk-collector", daemon=True)

    def start(self, timeout: float = 30.0) -> BackgroundCollector:
        """Start and wait until it listens (re-raises a start-up failure)."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the collector did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as err:  # reported by start()
            self._error = err
            self._ready.set()

    async def _serve(self) -> None:
        from aiohttp import web

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        collector, binding = self._make() if self._make else build(self.settings, resolve_url(self.redis_url))
        self.collector = collector
        if binding is not None:
            await _prepare_or_warn(binding)
        runner = web.AppRunner(collector.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port,
                           ssl_context=tls_context(self.settings))
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"{'https' if self.settings.tls_cert else 'http'}://{self.settings.host}:{port}"
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            if binding is not None:
                await binding.aclose()

    def stop(self) -> None:
        """Stop serving (drains waiting events) and join the thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def __enter__(self) -> BackgroundCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
