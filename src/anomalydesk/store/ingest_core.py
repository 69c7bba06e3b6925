"""The direct sink's write logic, once, without I/O: the sync `Writer` and the `AsyncWriter` both run it.

A write is a generator (`WriterCore.write`, `WriterCore.config`) that yields the Redis work it needs as
plain requests (`ReadSettings`, `IngestCalls`, `ConfigureCalls`, `ReloadLibrary`) and gets each answer
sent back; `run` and `run_async` drive one with a blocking or an awaiting `perform`. What to do with
a reply (stale config → re-read, configure, re-encode, resend; lost functions → reload once, resend;
refusals → `InvalidBatch`) and when to re-read the settings is decided here, so the two writers
cannot drift apart. The shells only talk to Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from typing import Any, NamedTuple

import orjson
import redis

from anomalydesk.contract import IngestReply
from anomalydesk.events import BusinessMetric
from anomalydesk.store.admin import StoredSettings
from anomalydesk.store.encoding import (
    Columns,
    Config,
    Event,
    WindowAggregate,
    columns_of,
    config_from,
    encode,
    encode_aggregates,
)
from anomalydesk.store.gears import STALE_CONFIG, is_missing_function, is_stale_config
from anomalydesk.store.keys import Keys

log = logging.getLogger(__name__)

CONFIG_TTL_SECONDS = 5.0
CONFIG_RETRY_SECONDS = 1.0  # a failed re-read is tried again after this long (the cached config serves)
RETRYABLE = (redis.ConnectionError, redis.TimeoutError)
# replies of a Redis Cluster during a failover (CLUSTERDOWN, TRYAGAIN): nothing of the call was written
_TRANSIENT = (redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError)
# a setup that changed the window length or sketch sizes makes gears refuse older configs: re-read the
# config, encode again and resend this many times (one is enough unless setup runs again meanwhile)
CONFIG_RETRIES = 3
Payloads = list[tuple[str, bytes]]
# encodes (again) for a config: all services, or only those named (None = all)
Reencode = Callable[[Config, "set[str] | None"], Payloads]


class IngestResult(NamedTuple):
    """What the server did with a batch. `accepted`/`late` count request events and KPI reports;
    `kpis_accepted`/`kpis_late` the KPI reports among them; `sealed`/`history_sealed` windows sealed
    into the live stream / into history."""

    accepted: int = 0
    late: int = 0
    duplicate_batches: int = 0
    sealed: int = 0
    kpis_accepted: int = 0
    kpis_late: int = 0
    history_sealed: int = 0

    @property
    def events_accepted(self) -> int:
        """Request events accepted (KPI reports not counted)."""
        return self.accepted - self.kpis_accepted

    @property
    def events_late(self) -> int:
        """Request events refused as late (KPI reports not counted)."""
        return self.late - self.kpis_late

    def __add__(self, other: tuple) -> IngestResult:  # type: ignore[override]
        return IngestResult(*(a + b for a, b in zip(self, other, strict=True)))


class NotSetUp(RuntimeError):
    """`anomalydesk setup` never ran on this server."""


class InvalidBatch(ValueError):
    """The server refused a batch as invalid (nothing of it was written)."""


class ConfigChanged(RuntimeError):
    """The server's setup kept changing while a batch was re-encoded and resent (nothing of it was lost:
    the batch stays with the producer)."""


# --- the Redis work a write asks its shell for --------------------------------------------------------
class ReadSettings(NamedTuple):
    """Read the config hash (`store.admin.read_settings`); `first`: nothing is cached yet."""

    first: bool


class IngestCalls(NamedTuple):
    """One `ad_ingest` FCALL per payload. The answer: one reply per payload (a server error as its
    exception object, not raised)."""

    payloads: tuple[tuple[str, bytes], ...]

    @property
    def single(self) -> bool:
        """One call: sent without a pipeline (it costs more client CPU than the call)."""
        return len(self.payloads) == 1


class RegisterServices(NamedTuple):
    """Add services to the service set and take them out of the retired set (a service that sends again
    is no longer retired). Asked for only after their `ad_ingest` stored something: a refused or failed
    batch must not make a service appear, or bring a retired one back, with nothing stored."""

    services: tuple[str, ...]


class ConfigureCalls(NamedTuple):
    """One `ad_configure` FCALL per service with `cfg`; the answer: one reply per service (errors not raised)."""

    services: tuple[str, ...]
    cfg: bytes


class ReloadLibrary(NamedTuple):
    """The server lost the gears functions (a restart without persistence): load them again."""


Request = ReadSettings | IngestCalls | RegisterServices | ConfigureCalls | ReloadLibrary
Steps = Generator[Request, Any, Any]


def queue_ingest(pipe: Any, keys: Keys, calls: IngestCalls) -> None:
    """Queue `calls` on a pipeline (sync or asyncio: queuing is synchronous in both)."""
    for service, body in calls.payloads:
        pipe.fcall("ad_ingest", 1, keys.state(service), keys.prefix, service, body)


def queue_register(pipe: Any, keys: Keys, calls: RegisterServices) -> None:
    """Queue a registration on a pipeline. The service set is a global key (its own slot on a cluster),
    so the library's `ad_ingest`, which touches one service's slot, cannot do this in its own write."""
    pipe.sadd(keys.services, *calls.services)
    pipe.srem(keys.retired, *calls.services)


def stored_services(payloads: Payloads, replies: Sequence[Any], among: set[str]) -> tuple[str, ...]:
    """The services of `among` whose `ad_ingest` reply says it stored something (accepted events, or a
    duplicate of a batch stored before); refusals, errors and all-late batches store nothing."""
    stored: set[str] = set()
    for (service, _), reply in zip(payloads, replies, strict=True):
        if service in among and not isinstance(reply, Exception):
            try:
                n = IngestReply.parse(reply)
            except (TypeError, ValueError, IndexError, KeyError):
                continue  # tally() says what is wrong with it
            if n.accepted or n.duplicate:
                stored.add(service)
    return tuple(sorted(stored))


def queue_configure(pipe: Any, keys: Keys, calls: ConfigureCalls) -> None:
    """Queue `calls` on a pipeline."""
    for service in calls.services:
        pipe.fcall("ad_configure", 1, keys.state(service), keys.prefix, service, calls.cfg)


def ingest_args(keys: Keys, service: str, body: bytes) -> tuple:
    """The FCALL arguments of one payload (the single-call path)."""
    return ("ad_ingest", 1, keys.state(service), keys.prefix, service, body)


def run(steps: Steps, perform: Callable[[Request], Any]) -> Any:
    """Drive a write with a blocking `perform`; its exceptions are raised inside the write, where they
    may be handled (a failed settings re-read keeps the cached ones)."""
    answer: Any = None
    error: Exception | None = None
    while True:
        try:
            request = steps.throw(error) if error is not None else steps.send(answer)
        except StopIteration as done:
            return done.value
        try:
            answer, error = perform(request), None
        except Exception as err:  # handed to the write: it decides what is fatal
            answer, error = None, err


async def run_async(steps: Steps, perform: Callable[[Request], Awaitable[Any]]) -> Any:
    """`run` with an awaiting `perform`."""
    answer: Any = None
    error: Exception | None = None
    while True:
        try:
            request = steps.throw(error) if error is not None else steps.send(answer)
        except StopIteration as done:
            return done.value
        try:
            answer, error = await perform(request), None
        except Exception as err:
            answer, error = None, err


def only(columns: dict[str, Columns], services: set[str] | None) -> dict[str, Columns]:
    """The columns of the services named (all of them for None)."""
    return columns if services is None else {s: c for s, c in columns.items() if s in services}


def tally(payloads: Payloads, replies: Sequence[Any],
          per_service: dict[str, IngestResult] | None = None) -> tuple[IngestResult, set[str]]:
    """The server's answers added up (also per service into `per_service`), and the services that refused
    the config as stale."""
    total = IngestResult()
    stale: set[str] = set()
    for (service, _), reply in zip(payloads, replies, strict=True):
        if is_stale_config(reply):
            stale.add(service)
            continue
        if isinstance(reply, _TRANSIENT):  # a failover in progress: retried like an unreachable server
            raise redis.ConnectionError(f"{service}: {reply}")
        if isinstance(reply, redis.ResponseError):
            raise InvalidBatch(f"{service}: {reply}")
        n = IngestReply.parse(reply)
        result = IngestResult(n.accepted, n.late, n.duplicate, n.sealed, n.kpis_accepted, n.kpis_late,
                              n.history_sealed)
        total = total + result
        if per_service is not None:
            per_service[service] = per_service.get(service, IngestResult()) + result
    return total, stale


class WriterCore:
    """The state of one writer (the server's settings, the services it registered) and its write logic."""

    def __init__(self, keys: Keys):
        self.keys = keys
        self._known: set[str] = set()
        self._config: Config | None = None
        self._retry_at = 0.0

    def config(self, *, fresh: bool = False) -> Steps:
        """The server's settings, re-read every few seconds (or now, `fresh`).

        A routine re-read that fails serves the cached settings (tried again a second later): during a
        Redis outage a producer keeps encoding with what it knows, and its write is what fails and is
        retried. The first read, and a fresh one (the server said the cached ones are stale), raise.
        """
        now = time.monotonic()
        cached = self._config
        if not fresh and cached is not None and (now - cached.read_at <= CONFIG_TTL_SECONDS or now < self._retry_at):
            return cached
        try:
            stored: StoredSettings = yield ReadSettings(first=cached is None)
        except RETRYABLE as err:
            if cached is None or fresh:
                raise
            log.debug("keeping the cached settings: re-reading them failed (%s)", err)
            self._retry_at = now + CONFIG_RETRY_SECONDS
            return cached
        if not stored.configured:
            raise NotSetUp("AnomalyDesk is not set up on this server: run `anomalydesk setup`")
        self._config = config_from(stored.settings, stored.backend, stored.generation)
        self._known.clear()  # re-register services now and then: the server may have lost them
        return self._config

    def write(self, payloads: Payloads, reencode: Reencode | None = None, *,
              per_service: dict[str, IngestResult] | None = None) -> Steps:
        """Send encoded payloads (from `encode` or `encode_aggregates`): one FCALL each, pipelined. Services
        that refuse the config as changed get `reencode`'s payloads for the config read again (ConfigChanged
        without it, or if it keeps changing). The answers are also added up per service into `per_service`."""
        total = IngestResult()
        for attempt in range(CONFIG_RETRIES + 1):
            result, stale = yield from self._send(payloads, per_service)
            total = total + result
            if not stale:
                return total
            if reencode is None or attempt == CONFIG_RETRIES:
                raise ConfigChanged(f"the server's setup kept changing while sending to {', '.join(sorted(stale))}; "
                                    f"the batch was not stored")
            log.info("setup changed on the server: re-encoding for %s", ", ".join(sorted(stale)))
            config = yield from self.config(fresh=True)
            yield from self._configure(sorted(stale), config)
            payloads = reencode(config, stale)
        raise AssertionError("unreachable")

    def ingest(self, events: Iterable[Event], batch_id: str, replay: bool, sparse: bool) -> Steps:
        """Encode validated events for the server's settings and write them."""
        columns = columns_of(events)

        def reencode(config: Config, services: set[str] | None) -> Payloads:
            return encode(only(columns, services), config, replay, batch_id, sparse)

        payloads = reencode((yield from self.config()), None)
        return (yield from self.write(payloads, reencode))

    def ingest_aggregates(self, service: str, windows: Sequence[WindowAggregate], kpis: Sequence[BusinessMetric],
                          batch_id: str, replay: bool, sparse: bool) -> Steps:
        """Encode pre-aggregated windows of one service and write them."""
        def reencode(config: Config, _services: set[str] | None) -> Payloads:
            return encode_aggregates(service, windows, config, kpis=kpis, replay=replay, batch_id=batch_id,
                                     sparse=sparse)

        payloads = reencode((yield from self.config()), None)
        return (yield from self.write(payloads, reencode))

    def _send(self, payloads: Payloads, per_service: dict[str, IngestResult] | None,
              reloaded: bool = False) -> Steps:
        if not payloads:
            return IngestResult(), set()
        new = {s for s, _ in payloads if s not in self._known}
        replies = yield IngestCalls(tuple(payloads))
        yield from self._register(stored_services(payloads, replies, new))
        if not reloaded and any(is_missing_function(x) for x in replies):
            # a primary lost the library (a restart, a failover to a replica without it): what reached the
            # others is stored and counted; only what met the missing function goes again once the library
            # is back (sending everything again would answer the stored part as duplicates)
            missed = [is_missing_function(x) for x in replies]
            landed = [(p, x) for p, x, m in zip(payloads, replies, missed, strict=True) if not m]
            first, stale = tally([p for p, _ in landed], [x for _, x in landed], per_service)
            yield ReloadLibrary()  # a second miss is refused as invalid
            self._known.clear()
            again, stale_again = yield from self._send([p for p, m in zip(payloads, missed, strict=True) if m],
                                                       per_service, reloaded=True)
            return first + again, stale | stale_again
        return tally(payloads, replies, per_service)

    def _register(self, services: tuple[str, ...]) -> Steps:
        """Register services whose batch was stored. A failure is logged, not raised: the events are stored
        and their answer must say so; the services stay unknown, so the next write registers them again."""
        if not services:
            return
        try:
            yield RegisterServices(services)
        except redis.RedisError as err:
            log.warning("stored events of %s but could not register them as services (%s); "
                        "the next write tries again", ", ".join(services), err)
            return
        self._known.update(services)

    def _configure(self, services: list[str], config: Config) -> Steps:
        """Bring services to `config`'s generation (`store.admin.configure_services`); a service already at a
        newer one is left as it is (the next send is refused as stale and re-reads)."""
        replies = yield ConfigureCalls(tuple(services), orjson.dumps(config.payload_cfg))
        for service, reply in zip(services, replies, strict=True):
            if isinstance(reply, redis.ResponseError) and not str(reply).startswith(STALE_CONFIG):
                raise InvalidBatch(f"{service}: configuring it for the new setup failed: {reply}")
