"""`CoreClient`: the app's one way into the core (store / detect / ingest), Qt-free.

It owns the process's Redis clients — one synchronous client for the core's synchronous APIs (setup,
status, incidents, sketches, the model registry), run in a small I/O thread pool so nothing blocks
the loop, and one `redis.asyncio` client for the readers on the qasync loop (pub/sub takes one
dedicated connection of that client's pool, as Redis requires; it is not another client) — and the
executor of the long jobs (training). Demo traffic writes from its own thread through the synchronous client;
training, backfill and the app's detector run in child processes with clients of their own.

Every method is a coroutine returning plain values (dicts, lists, numpy arrays) or the core's frozen
incident types, ready for the model layer; errors the operator should read are `CoreError`s.
`Keys` travels with the client, so `--check` works under a private prefix.

Why this module is long: it is one job, the app's one door into the core — each method a short
coroutine over one store/detect call, and the two Redis clients and executors they share.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import redis
import redis.asyncio
from redis.exceptions import RedisError

from anomalydesk import config
from anomalydesk.app.model.state import READY_TO_TRAIN
from anomalydesk.app.services import jobs
from anomalydesk.detect.incident_model import Alert, Incident, Silence
from anomalydesk.store import connection
from anomalydesk.store.keys import Keys

if TYPE_CHECKING:
    from anomalydesk.fingerprint import Fingerprint
    from anomalydesk.ingest.demo import DemoTraffic

log = logging.getLogger(__name__)
T = TypeVar("T")
CLOSE_TIMEOUT_SECONDS = 3.0
IO_WORKERS = 2  # the readers' status poll and one operator action at a time, side by side
INCIDENT_READ_CHUNK = 500  # incident ids per HMGET when alerts name many (the catch-up at start-up)
FINGERPRINT_READ_CHUNK = 2_000  # stream entries per XRANGE of a service's windows
SKETCH_FIELDS = ("window_seconds", "cms_width", "cms_depth", "cms_error", "cms_prob", "filter_capacity",
                 "filter_error", "topk", "retention")  # fmt: skip
INCIDENT_ACTIONS = ("ack", "snooze", "resolve", "false_positive", "accept")


class CoreError(Exception):
    """A core call failed in a way the UI should show as a reason (not a crash)."""


class JobCancelled(CoreError):
    """A child job was ended because the app closed its connection (quit, or a switch of server)."""


class SketchConflict(CoreError):
    """New sketch sizes would recreate sketches: `changes` (old → new) and what that `resets`."""

    def __init__(self, changes: str, resets: list[str]):
        self.changes = changes
        self.resets = list(resets)
        super().__init__(f"changing {changes} recreates sketches, which resets: {'; '.join(self.resets)}")


@dataclass(frozen=True)
class ServerFacts:
    """What `prepare` found: the server's version, the sketch backend, whether it created the sketches."""

    server_version: str
    sketch_backend: str
    created: bool


@dataclass(frozen=True)
class NewWindows:
    """One read of a service's live windows after a time (`CoreClient.fingerprints_after`)."""

    rows: np.ndarray  # (n, 1 + features) [start, features…], oldest first
    read_to: float  # the newest window start of the entries read, readable or not (`after` when none)
    more: bool  # the read stopped at its chunk: newer entries are left for the next read


def _window_fp(service: str, fields: Any, window_s: int) -> Fingerprint | None:
    """The fingerprint of a stream entry of this window length; None for another length or an
    unreadable entry (skipped, as the live reader skips it)."""
    from anomalydesk.fingerprint import from_stream_entry

    try:
        fp = from_stream_entry(service, fields)
    except (KeyError, TypeError, ValueError):
        return None
    return fp if fp.window_seconds in (None, window_s) else None


def _window_row(service: str, fields: Any, window_s: int) -> list[float] | None:
    """[start, features…] of a fingerprint entry of this window length (None: see `_window_fp`)."""
    fp = _window_fp(service, fields, window_s)
    return None if fp is None else [fp.start, *fp.vector]


def _as_rows(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float64).reshape(len(rows), -1) if rows else np.empty((0, 0))


def redact(url: str) -> str:
    """The URL without its password."""
    return connection.redact_url(url) if url else ""


def describe(err: BaseException) -> str:
    """A short reason for an error, for the connection panel."""
    if isinstance(err, redis.RedisError):
        return connection.describe_error(err)
    return str(err) or type(err).__name__


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class CoreClient:
    """One connection of the app to the core: build, `await open(url)`, use, `await close()`."""

    def __init__(self, keys: Keys | None = None) -> None:
        self.keys = keys or Keys(config.key_prefix())
        self.url = ""
        self._sync: redis.Redis | None = None
        self._aio: redis.asyncio.Redis | None = None
        self.io = concurrent.futures.ThreadPoolExecutor(max_workers=IO_WORKERS, thread_name_prefix="ad-io")
        self.jobs = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ad-train")
        self._closing = threading.Event()  # set by close(): a running backfill ends

    # --- life cycle ---------------------------------------------------------------------------
    async def open(self, requested_url: str | None) -> str:
        """Resolve the URL (explicit, else $ANOMALYDESK_REDIS_URL, else the embedded server, started on
        demand) and open both clients, off the GUI thread; returns the URL in use."""
        from anomalydesk.store.locate import resolve_url

        self.url = await self.run(resolve_url, requested_url or None)
        # both may probe whether the server is a cluster (a blocking round trip): in the pool
        self._aio = await self.run(connection.connect_async, self.url)
        self._sync = await self.run(lambda: connection.connect(self.url, check=False))  # the supervisor pings
        return self.url

    async def close(self) -> None:
        """Close both clients and shut the executors down (a running training was asked to stop before;
        a running backfill is ended here, so quitting does not wait for it)."""
        self._closing.set()
        if self._aio is not None:
            try:
                await asyncio.wait_for(self._aio.aclose(), timeout=CLOSE_TIMEOUT_SECONDS)
            except (TimeoutError, RedisError, OSError) as err:
                log.warning("closing the Redis client: %s", describe(err) if str(err) else "timed out")
        self.io.shutdown(wait=True, cancel_futures=True)
        self.jobs.shutdown(wait=True, cancel_futures=True)
        if self._sync is not None:
            self._sync.close()

    @property
    def aio(self) -> redis.asyncio.Redis:
        """The asyncio client (the readers' and `--check`'s); open() first."""
        if self._aio is None:
            raise CoreError("not connected")
        return self._aio

    @property
    def sync(self) -> redis.Redis:
        """The synchronous client (run it in `io` only); open() first."""
        if self._sync is None:
            raise CoreError("not connected")
        return self._sync

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call in the I/O pool."""
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    # --- start-up and status (the sync client) -------------------------------------------------
    async def prepare(self, first_run_setup: bool) -> ServerFacts:
        """Check the server, load the gears library and, on first run, create the sketches."""
        return await self.run(self._prepare, first_run_setup)

    def _prepare(self, first_run_setup: bool) -> ServerFacts:
        from anomalydesk.store import admin, capabilities, gears

        r = self.sync
        try:
            caps = capabilities.detect(r)
        except capabilities.UnsupportedServer as err:
            raise CoreError(str(err)) from err
        gears.ensure_library(r)
        created = False
        if first_run_setup and not admin.read_settings(r, self.keys).configured:
            admin.setup(r, config.SketchSettings(), keys=self.keys)
            created = True
        return ServerFacts(str(caps.server_version), str(caps.sketch_backend), created)

    async def status(self) -> dict[str, Any]:
        """The `status --json` document."""
        from anomalydesk.store import admin

        return await self.run(admin.status, self.sync, self.keys)

    async def traffic_stops(self) -> dict[str, Any]:
        """service → its latest traffic stop on purpose (`store.traffic_stops.Stop`; ended ones too)."""
        from anomalydesk.store import traffic_stops

        return await self.run(lambda: traffic_stops.read(self.sync, keys=self.keys))

    async def detector_holder(self) -> str:
        """Who holds the detector lease ("" when no detector is alive)."""
        return _text(await self.aio.get(self.keys.detector_lease) or "")

    # --- the readers' reads (the async client) --------------------------------------------------
    async def ping(self) -> None:
        """PING (raises when the server is not there)."""
        await self.aio.ping()

    async def used_memory(self) -> int:
        """The server's `used_memory` (of the node the client talks to)."""
        return int((await self.aio.info("memory")).get("used_memory", 0))

    async def window_seconds(self) -> int:
        """The stored window length (the default before `setup`)."""
        raw = await self.aio.hget(self.keys.config, "window_seconds")
        return int(float(raw)) if raw else config.DEFAULT_WINDOW_SECONDS

    async def services(self) -> list[str]:
        """Every known service, sorted."""
        return sorted(_text(s) for s in await self.aio.smembers(self.keys.services))

    def subscribe_alerts(self) -> redis.asyncio.client.PubSub:
        """A pub/sub object (its own connection of the async pool) for the alerts channel; subscribe it."""
        return self.aio.pubsub()

    async def alert_log(self, after: str | None, count: int) -> list[tuple[str, Alert | None]]:
        """(entry id, alert or None when unreadable) of the alerts log: the newest `count` when `after`
        is None, else up to `count` entries after that id; oldest first."""
        if after is None:
            entries = list(reversed(await self.aio.xrevrange(self.keys.alerts_log, count=count)))
        else:
            entries = await self.aio.xrange(self.keys.alerts_log, min=f"({after}", count=count)
        return [(_text(entry_id), Alert.from_entry(fields)) for entry_id, fields in entries]

    async def read_incidents(self, ids: list[str]) -> dict[str, Incident]:
        """The stored records of these incident ids (ids with no readable record are left out)."""
        found: dict[str, Incident] = {}
        for at in range(0, len(ids), INCIDENT_READ_CHUNK):
            chunk = ids[at : at + INCIDENT_READ_CHUNK]
            for incident_id, raw in zip(chunk, await self.aio.hmget(self.keys.incidents, chunk), strict=True):
                if raw is None:
                    continue
                try:
                    found[incident_id] = Incident.from_json(raw)
                except (ValueError, TypeError) as err:
                    log.warning("skipping the unreadable incident record %s: %s", incident_id, err)
        return found

    async def live_incidents(self, tracked: list[str]) -> list[Incident]:
        """The records of every open incident and of those `tracked` (to see them close)."""
        opened = {_text(x) for x in await self.aio.smembers(self.keys.incidents_open)}
        found = await self.read_incidents(sorted(opened | set(tracked)))
        return [found[i] for i in sorted(found)]

    async def read_streams(self, streams: dict[str, Any], block_ms: int) -> list[Any]:
        """New entries of every stream: one blocking XREAD, or on a cluster (streams in different slots,
        which one XREAD cannot span) a non-blocking read per stream in one pipeline and a pause when empty."""
        if not isinstance(self.aio, redis.asyncio.RedisCluster):
            return await self.aio.xread(streams, count=1000, block=block_ms) or []
        pipe = self.aio.pipeline(transaction=False)
        for stream, last in streams.items():
            pipe.xread({stream: last}, count=1000)
        found = [pair for reply in await pipe.execute() for pair in reply or []]
        if not any(entries for _stream, entries in found):
            await asyncio.sleep(block_ms / 1000)
        return found

    async def newest_entries(self, stream: str, count: int, before: Any = "+") -> list[Any]:
        """Up to `count` entries of `stream`, newest first, with ids up to `before` ("(id" excludes it)."""
        return await self.aio.xrevrange(stream, max=before, count=count)

    # --- incidents and silences (the sync client) ------------------------------------------------
    async def incident_action(self, action: str, incident_id: str, seconds: float = 0.0) -> Incident:
        """ack | snooze | resolve | false_positive | accept (a level shift as the new normal) on one
        incident; returns its record as stored now."""
        if action not in INCIDENT_ACTIONS:
            raise CoreError(f"unknown incident action {action!r}")
        return await self.run(self._incident_action, action, incident_id, seconds)

    def _incident_action(self, action: str, incident_id: str, seconds: float) -> Incident:
        from anomalydesk.detect import incidents

        try:
            if action == "snooze":
                return incidents.snooze(self.sync, incident_id, seconds, keys=self.keys)
            act = {"ack": incidents.ack, "resolve": incidents.resolve, "false_positive": incidents.false_positive,
                   "accept": incidents.accept}[action]  # fmt: skip
            return act(self.sync, incident_id, keys=self.keys)
        except incidents.IncidentError as err:
            raise CoreError(str(err)) from err

    async def silences(self) -> list[Silence]:
        """Stored silences, soonest-ending first."""
        from anomalydesk.detect import incidents

        return await self.run(lambda: incidents.list_silences(self.sync, keys=self.keys))

    async def add_silence(self, pattern: str, seconds: float, reason: str) -> Silence:
        """Silence services matching `pattern` from now for `seconds`."""
        from anomalydesk.detect import incidents

        def add() -> Silence:
            try:
                return incidents.add_silence(self.sync, pattern, time.time() + seconds, reason, keys=self.keys)
            except ValueError as err:
                raise CoreError(str(err)) from err

        return await self.run(add)

    async def remove_silence(self, silence_id: str) -> None:
        """Delete a silence."""
        from anomalydesk.detect import incidents

        def remove() -> None:
            try:
                incidents.remove_silence(self.sync, silence_id, keys=self.keys)
            except incidents.IncidentError as err:
                raise CoreError(str(err)) from err

        await self.run(remove)

    # --- fingerprints -----------------------------------------------------------------------------
    async def fingerprint_window(self, service: str, start: float, end: float) -> np.ndarray:
        """(n, 1 + features) rows [start, features…] of `service` between two epoch times (every window,
        read in chunks)."""
        rows, _, _ = await self.run(self._fingerprint_window, service, start, end)
        return rows

    async def normal_window(self, service: str, start: float, end: float) -> tuple[np.ndarray, np.ndarray]:
        """The rows of `fingerprint_window` and, per row, whether it is a normal window: outside every
        incident that training leaves out (`detect.incidents.anomalous_windows`; a false positive's windows
        are normal), and one training would use at all (with data, not stretched, not in a gap)."""
        return await self.run(self._normal_window, service, start, end)

    def _normal_window(self, service: str, start: float, end: float) -> tuple[np.ndarray, np.ndarray]:
        from anomalydesk.detect.incidents import anomalous_windows
        from anomalydesk.store.admin import window_seconds

        # a gap is a run of silent windows lasting TRAINING_GAP_SECONDS and 2 windows: read that much on
        # either side, so that a run crossing the span's edges is judged whole
        window_s = window_seconds(self.sync, self.keys)
        pad = max(config.TRAINING_GAP_SECONDS, 2 * window_s) + window_s
        rows, windows, unused = self._fingerprint_window(service, start - pad, end + pad)
        if rows.size == 0:
            return rows, np.zeros(0, dtype=bool)
        inside = (rows[:, 0] >= start) & (rows[:, 0] <= end)
        normal = ~anomalous_windows(self.sync, service, windows[inside], keys=self.keys) & ~unused[inside]
        return rows[inside], normal

    def _fingerprint_window(self, service: str, start: float, end: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, their window numbers, whether training leaves each out whatever the incidents: without
        data, stretched, or in a gap — `training_run.gap_mask` —), oldest first."""
        from anomalydesk.detect.training_run import gap_mask
        from anomalydesk.store.admin import window_seconds

        r, keys = self.sync, self.keys
        window_s = window_seconds(r, keys)
        found: dict[float, tuple[int, list[float], bool, bool]] = {}  # start → window, row, dropped, silent
        for stream in (keys.fingerprints(service), keys.history(service, window_s)):  # live, then history
            low, high = str(int(start * 1000)), str(int(end * 1000) + 1)
            while True:
                chunk = r.xrange(stream, min=low, max=high, count=FINGERPRINT_READ_CHUNK)
                for _id, fields in chunk:
                    fp = _window_fp(service, fields, window_s)
                    if fp is not None and fp.start not in found:
                        found[fp.start] = (fp.window, [fp.start, *fp.vector], fp.no_data or fp.stretched, fp.silent)
                if len(chunk) < FINGERPRINT_READ_CHUNK:
                    break
                low = "(" + _text(chunk[-1][0])
        chosen = [found[at] for at in sorted(found)]
        windows = np.array([c[0] for c in chosen], dtype=np.int64)
        dropped = np.array([c[2] for c in chosen], dtype=bool)
        silent = np.array([c[3] for c in chosen], dtype=bool)
        unused = dropped | gap_mask(windows, silent, window_s) if chosen else dropped
        return _as_rows([c[1] for c in chosen]), windows, unused

    async def fingerprints_after(self, service: str, after: float) -> NewWindows:
        """The windows of `service`'s live fingerprint stream that start after `after` (epoch seconds),
        oldest first, at most `FINGERPRINT_READ_CHUNK` entries: read again from `read_to` while `more`."""
        return await self.run(self._fingerprints_after, service, after)

    def _fingerprints_after(self, service: str, after: float) -> NewWindows:
        from anomalydesk.store.admin import window_seconds

        r, keys = self.sync, self.keys
        window_s = window_seconds(r, keys)
        # entry id = the window start in ms: any id of a later millisecond is a later window
        entries = r.xrange(keys.fingerprints(service), min=str(math.floor(after * 1000) + 1), max="+",
                           count=FINGERPRINT_READ_CHUNK)  # fmt: skip
        rows = [row for _id, fields in entries if (row := _window_row(service, fields, window_s)) is not None]
        read_to = max([after, *(int(_text(entry_id).split("-")[0]) / 1000 for entry_id, _f in entries)])
        return NewWindows(_as_rows(rows), read_to, len(entries) == FINGERPRINT_READ_CHUNK)

    # --- sketches ---------------------------------------------------------------------------------
    async def sketch_overview(self) -> dict[str, Any]:
        """Stored settings and, per service, its sketches' sizes and memory."""
        return await self.run(self._sketch_overview)

    def _sketch_overview(self) -> dict[str, Any]:
        from anomalydesk.store import admin, sketches

        r = self.sync
        stored = admin.read_settings(r, self.keys)
        per_service: dict[str, Any] = {}
        for service in admin.active_services(r, self.keys):
            try:
                per_service[service] = sketches.info(r, service, keys=self.keys)
            except sketches.NoSketches as err:
                per_service[service] = {"error": str(err)}
        return {"settings": asdict(stored.settings), "backend": stored.backend, "configured": stored.configured,
                "services": per_service}  # fmt: skip

    async def apply_setup(self, values: dict[str, Any], force: bool) -> dict[str, Any]:
        """`setup` with new sizes; a change that recreates sketches raises SketchConflict unless `force`."""
        unknown = set(values) - set(SKETCH_FIELDS)
        if unknown:
            raise CoreError(f"unknown sketch setting(s): {', '.join(sorted(unknown))}")
        try:
            settings = config.SketchSettings(**values)
        except (TypeError, ValueError) as err:
            raise CoreError(f"invalid sketch settings: {err}") from err
        return await self.run(self._setup, settings, force)

    def _setup(self, settings: config.SketchSettings, force: bool) -> dict[str, Any]:
        from anomalydesk.store import admin

        try:
            return admin.setup(self.sync, settings, force=force, keys=self.keys)
        except admin.SetupConflict as err:
            raise SketchConflict(err.changes, err.resets) from err
        except (TypeError, ValueError) as err:
            raise CoreError(f"invalid sketch settings: {err}") from err

    async def sketch_query(self, kind: str, service: str, items: list[str]) -> Any:
        """The inspector's queries: endpoint counts, status counts, interaction membership, Top-K."""
        if kind not in ("endpoint", "status", "interaction", "topk"):
            raise CoreError(f"unknown query {kind!r} (endpoint, status, interaction, topk)")
        codes: list[int] = []
        if kind == "status":
            try:
                codes = [int(c) for c in items]
            except ValueError:
                raise CoreError(f"status codes must be numbers, got {items!r}") from None
        return await self.run(self._sketch_query, kind, service, items, codes)

    def _sketch_query(self, kind: str, service: str, items: list[str], codes: list[int]) -> Any:
        from anomalydesk.events import EventError
        from anomalydesk.store import sketches

        r, keys = self.sync, self.keys
        try:
            if kind == "endpoint":
                return sketches.endpoint_counts(r, service, items, keys=keys)
            if kind == "status":
                return sketches.status_counts(r, service, codes, keys=keys)
            if kind == "interaction":
                return dict(zip(items, sketches.has_interactions(r, service, items, keys=keys), strict=True))
            return sketches.topk(r, service, keys=keys)
        except (sketches.NoSketches, EventError) as err:
            raise CoreError(str(err)) from err
        except redis.ResponseError as err:
            raise CoreError(f"query failed: {err}") from err

    # --- models -----------------------------------------------------------------------------------
    async def model_threshold(self, service: str) -> float | None:
        """The threshold of the service's active model, if the detector scores with it (None when it has
        none, it cannot be loaded, or it is not used: of another window length or an older schema)."""
        return await self.run(self._model_threshold, service)

    def _model_threshold(self, service: str) -> float | None:
        from anomalydesk.detect.service_state import load_model, model_state
        from anomalydesk.store import admin
        from anomalydesk.store import models as registry

        try:
            meta, model = load_model(self.sync, service, keys=self.keys)
        except (registry.ModelNotFound, registry.ModelLoadError):
            return None
        if model is None or model_state(meta, admin.window_seconds(self.sync, self.keys))[0] != "ready":
            return None
        return float(model.threshold)

    async def model_overview(self, services: list[str]) -> dict[str, dict[str, Any]]:
        """service → {state, active, unused (why the detector does not use the active model, else None),
        needed, windows, versions: [ModelInfo as dict + threshold]}."""
        return await self.run(self._model_overview, services)

    def _model_overview(self, services: list[str]) -> dict[str, dict[str, Any]]:
        from anomalydesk.detect.service_state import service_states
        from anomalydesk.store import models as registry

        r = self.sync
        states = service_states(r, keys=self.keys)
        overview: dict[str, dict[str, Any]] = {}
        for service in sorted(set(services) | set(states)):
            entry = states.get(service, {"state": "learning", "needed": config.MIN_TRAINING_WINDOWS})
            versions = []
            for m in registry.list_models(r, service, keys=self.keys):
                d = m.as_dict()
                d["threshold"] = config.SEVERITY_WARNING  # scores are calibrated: the threshold maps here
                versions.append(d)
            state = entry.get("state", "learning")
            needed = int(entry.get("needed") or 0) if state == "learning" else 0
            if state == "learning":  # the windows training would use, counted as it counts them
                state = f"learning ({needed:,} more windows)" if needed else READY_TO_TRAIN
            overview[service] = {"state": state, "active": entry.get("model_version"), "versions": versions,
                                 "unused": entry.get("reason"),
                                 "windows": entry.get("windows", 0), "needed": needed}  # fmt: skip
        return overview

    async def activate(self, service: str, version: int) -> None:
        """Make a kept version the service's active model."""
        from anomalydesk.store import models as registry

        await self.run(lambda: registry.activate(self.sync, service, version, keys=self.keys))

    async def rollback(self, service: str) -> None:
        """Activate the version before the active one."""
        from anomalydesk.store import models as registry

        await self.run(lambda: registry.rollback(self.sync, service, keys=self.keys))

    # --- jobs: training, backfill, the detector, demo traffic ---------------------------------------
    async def train(self, services: list[str], params: dict[str, Any], progress: Callable[[float, str], None],
                    cancel: threading.Event) -> dict[str, Any]:  # fmt: skip
        """Train each service in a child process (`jobs.train`) from the job executor; `progress` is
        called from that executor's thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.jobs, jobs.train, self.url, self.keys, services, params,
                                          progress, cancel)  # fmt: skip

    async def backfill(self, seconds: float, services: int) -> dict[str, Any]:
        """`demo --fast` in a child process: `seconds` of history ending now (`jobs.backfill`)."""
        try:
            return await self.run(jobs.backfill, self.url, self.keys, seconds, services, self._closing)
        except jobs.JobCancelled as err:
            raise JobCancelled(str(err)) from err
        except jobs.JobFailed as err:
            raise CoreError(str(err)) from err

    def start_detector(self) -> subprocess.Popen[bytes]:
        """The app's detector in a child process (`jobs.start_detector`); raises OSError when it cannot start."""
        return jobs.start_detector(self.url, self.keys)

    async def start_demo(self, rate: int, services: int) -> DemoTraffic:
        """Start live demo traffic (its own thread, writing through the synchronous client)."""
        from anomalydesk.ingest.demo import DemoTraffic

        def start() -> DemoTraffic:
            try:
                return DemoTraffic(self.sync, rate=rate, services=services, keys=self.keys).start()
            except ValueError as err:
                raise CoreError(str(err)) from err

        return await self.run(start)

    async def stop_demo(self, demo: DemoTraffic) -> None:
        """Stop demo traffic and wait for its thread (it sends what it buffered first)."""
        await self.run(demo.stop)
