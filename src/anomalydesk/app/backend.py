"""The app's calls into the core (store / detect / ingest), as plain synchronous functions (Qt-free).

The session runs these in its I/O thread pool (`Session.call`) and the training job in its own
executor; every function takes the sync client and the key layout explicitly so `--check` can work
under a private prefix. Results are plain values (dicts, lists, or the core's frozen incident types),
ready for the state objects.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import redis
import redis.asyncio

from anomalydesk import config
from anomalydesk.store import connection
from anomalydesk.store.keys import Keys

if TYPE_CHECKING:
    from anomalydesk.detect.incident_model import Incident, Silence


class BackendError(Exception):
    """A core call failed in a way the UI should show as a reason (not a crash)."""


class SketchConflict(BackendError):
    """New sketch sizes would recreate sketches: `changes` (old → new) and what that `resets`."""

    def __init__(self, changes: str, resets: list[str]):
        self.changes = changes
        self.resets = list(resets)
        super().__init__(f"changing {changes} recreates sketches, which resets: {'; '.join(self.resets)}")


def prefix() -> str:
    """The key prefix in force (`$ANOMALYDESK_PREFIX` or the default)."""
    return config.key_prefix()


def resolve_url(url: str | None) -> str:
    """Explicit URL, else $ANOMALYDESK_REDIS_URL, else the embedded server (started on demand)."""
    from anomalydesk.store.locate import resolve_url as locate

    return locate(url or None)


def redact(url: str) -> str:
    """The URL without its password."""
    return connection.redact_url(url) if url else ""


def connect_async(url: str) -> redis.asyncio.Redis:
    """The app's one long-lived asyncio client."""
    return connection.connect_async(url)


def connect_sync(url: str) -> redis.Redis:
    """The client the I/O pool uses for the synchronous store APIs (not checked: the supervisor pings)."""
    return connection.connect(url, check=False)


def describe(err: BaseException) -> str:
    """A short reason for an error, for the connection panel."""
    if isinstance(err, redis.RedisError):
        return connection.describe_error(err)
    return str(err) or type(err).__name__


# --- start-up ---------------------------------------------------------------------------------
def prepare(r: redis.Redis, keys: Keys, first_run_setup: bool) -> dict[str, Any]:
    """Check the server, load the gears library and, on first run, create the sketches."""
    from anomalydesk.store import admin, capabilities, gears

    try:
        caps = capabilities.detect(r)
    except capabilities.UnsupportedServer as err:
        raise BackendError(str(err)) from err
    gears.ensure_library(r)
    created = False
    if first_run_setup and not admin.read_settings(r, keys).configured:
        admin.setup(r, config.SketchSettings(), keys=keys)
        created = True
    return {"server_version": caps.server_version, "sketch_backend": caps.sketch_backend, "created": created}


def status(r: redis.Redis, keys: Keys) -> dict[str, Any]:
    """The `status --json` document."""
    from anomalydesk.store import admin

    return admin.status(r, keys)


def detector_holder(r: redis.Redis, keys: Keys) -> str:
    """Who holds the detector lease ("" when no detector is alive)."""
    value = r.get(keys.detector_lease)
    return value.decode() if isinstance(value, bytes) else (value or "")


# --- incidents --------------------------------------------------------------------------------
def live_incident_records(r: redis.Redis, keys: Keys, tracked: list[str]) -> list[Incident]:
    """The records of every open incident and of those `tracked` (to see them close)."""
    from anomalydesk.detect.incident_model import Incident

    ids = sorted({*(x.decode() if isinstance(x, bytes) else x for x in r.smembers(keys.incidents_open)), *tracked})
    if not ids:
        return []
    return [Incident.from_json(raw) for raw in r.hmget(keys.incidents, ids) if raw]


def incident_action(r: redis.Redis, keys: Keys, action: str, incident_id: str, seconds: float = 0.0) -> Incident:
    """ack | snooze | resolve | false_positive | accept (a level shift as the new normal) on one incident;
    returns its record as stored now."""
    from anomalydesk.detect import incidents

    try:
        if action == "ack":
            return incidents.ack(r, incident_id, keys=keys)
        if action == "snooze":
            return incidents.snooze(r, incident_id, seconds, keys=keys)
        if action == "resolve":
            return incidents.resolve(r, incident_id, keys=keys)
        if action == "false_positive":
            return incidents.false_positive(r, incident_id, keys=keys)
        if action == "accept":
            return incidents.accept(r, incident_id, keys=keys)
    except incidents.IncidentError as err:
        raise BackendError(str(err)) from err
    raise BackendError(f"unknown incident action {action!r}")


def incident_record(r: redis.Redis, keys: Keys, incident_id: str) -> Incident | None:
    """The stored incident record, or None."""
    from anomalydesk.detect import incidents

    try:
        return incidents.get(r, incident_id, keys=keys)
    except incidents.IncidentError:
        return None


def silences(r: redis.Redis, keys: Keys) -> list[Silence]:
    """Stored silences, soonest-ending first."""
    from anomalydesk.detect import incidents

    return incidents.list_silences(r, keys=keys)


def add_silence(r: redis.Redis, keys: Keys, pattern: str, seconds: float, reason: str) -> Silence:
    """Silence services matching `pattern` from now for `seconds`."""
    from anomalydesk.detect import incidents

    try:
        return incidents.add_silence(r, pattern, time.time() + seconds, reason, keys=keys)
    except ValueError as err:
        raise BackendError(str(err)) from err


def remove_silence(r: redis.Redis, keys: Keys, silence_id: str) -> None:
    """Delete a silence."""
    from anomalydesk.detect import incidents

    try:
        incidents.remove_silence(r, silence_id, keys=keys)
    except incidents.IncidentError as err:
        raise BackendError(str(err)) from err


# --- fingerprints -----------------------------------------------------------------------------
def fingerprint_window(r: redis.Redis, keys: Keys, service: str, start: float, end: float) -> np.ndarray:
    """(n, 1 + features) rows [start, features…] of `service` between two epoch times."""
    from anomalydesk.fingerprint import from_stream_entry
    from anomalydesk.store.admin import window_seconds

    window_s = window_seconds(r, keys)
    rows, seen = [], set()
    for stream in (keys.fingerprints(service), keys.history(service, window_s)):  # live, then history
        for _id, fields in r.xrange(stream, min=int(start * 1000), max=int(end * 1000) + 1, count=2000):
            fp = from_stream_entry(service, fields)
            if fp.window_seconds in (None, window_s) and fp.start not in seen:
                seen.add(fp.start)
                rows.append([fp.start, *fp.vector])
    rows.sort(key=lambda row: row[0])
    return np.array(rows, dtype=np.float64).reshape(len(rows), -1) if rows else np.empty((0, 0))


# --- sketches ---------------------------------------------------------------------------------
SKETCH_FIELDS = ("window_seconds", "cms_width", "cms_depth", "cms_error", "cms_prob", "filter_capacity",
                 "filter_error", "topk", "retention")  # fmt: skip


def sketch_overview(r: redis.Redis, keys: Keys) -> dict[str, Any]:
    """Stored settings and, per service, its sketches' sizes and memory."""
    from dataclasses import asdict

    from anomalydesk.store import admin, sketches

    stored = admin.read_settings(r, keys)
    per_service: dict[str, Any] = {}
    for service in admin.active_services(r, keys):
        try:
            per_service[service] = sketches.info(r, service, keys=keys)
        except sketches.NoSketches as err:
            per_service[service] = {"error": str(err)}
    return {"settings": asdict(stored.settings), "backend": stored.backend, "configured": stored.configured,
            "services": per_service}  # fmt: skip


def apply_setup(r: redis.Redis, keys: Keys, values: dict[str, Any], force: bool) -> dict[str, Any]:
    """`setup` with new sizes; a change that recreates sketches raises BackendError unless `force`."""
    from anomalydesk.store import admin

    unknown = set(values) - set(SKETCH_FIELDS)
    if unknown:
        raise BackendError(f"unknown sketch setting(s): {', '.join(sorted(unknown))}")
    try:
        settings = config.SketchSettings(**values)
        return admin.setup(r, settings, force=force, keys=keys)
    except admin.SetupConflict as err:
        raise SketchConflict(err.changes, err.resets) from err
    except (TypeError, ValueError) as err:
        raise BackendError(f"invalid sketch settings: {err}") from err


def sketch_query(r: redis.Redis, keys: Keys, kind: str, service: str, items: list[str]) -> Any:
    """The inspector's queries: endpoint counts, status counts, interaction membership, Top-K."""
    from anomalydesk.events import EventError
    from anomalydesk.store import sketches

    try:
        if kind == "endpoint":
            return sketches.endpoint_counts(r, service, items, keys=keys)
        if kind == "status":
            try:
                codes = [int(c) for c in items]
            except ValueError:
                raise BackendError(f"status codes must be numbers, got {items!r}") from None
            return sketches.status_counts(r, service, codes, keys=keys)
        if kind == "interaction":
            return dict(zip(items, sketches.has_interactions(r, service, items, keys=keys), strict=True))
        if kind == "topk":
            return sketches.topk(r, service, keys=keys)
    except (sketches.NoSketches, EventError) as err:
        raise BackendError(str(err)) from err
    except redis.ResponseError as err:
        raise BackendError(f"query failed: {err}") from err
    raise BackendError(f"unknown query {kind!r} (endpoint, status, interaction, topk)")


# --- demo, detector, models -------------------------------------------------------------------
def start_demo(url: str, keys: Keys, rate: int, services: int) -> Any:
    """Start live demo traffic (its own client and thread); returns the running DemoTraffic."""
    from anomalydesk.ingest.demo import DemoTraffic

    try:
        return DemoTraffic(url, rate=rate, services=services, keys=keys).start()
    except ValueError as err:
        raise BackendError(str(err)) from err


def describe_fault(fault: Any, now: float | None = None) -> str:
    """'latency on payments, 42 s left'."""
    now = time.time() if now is None else now
    return f"{fault.kind} on {fault.service}, {max(0, fault.end - now):.0f} s left"


def backfill(url: str, keys: Keys, seconds: float, services: int) -> dict[str, Any]:
    """`demo --fast`: `seconds` of history ending now, in simulated time, in a child process.

    In this process its generator held the interpreter lock for seconds at a time and starved the live
    demo traffic thread (a dip of a few windows that opened "requests fluctuating" incidents).
    """
    import json
    import subprocess

    from anomalydesk.app.training_job import self_command

    argv = [*self_command(), "--json", "demo", "--fast", "--duration", str(float(seconds)),
            "--services", str(int(services))]  # fmt: skip
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=3600,
        env={**os.environ, config.ENV_REDIS_URL: url, config.ENV_PREFIX: keys.prefix},  # a password stays off argv
        creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
    )  # fmt: skip
    if done.returncode != 0:
        words = done.stderr.strip().splitlines()
        raise BackendError(f"backfill failed: {words[-1] if words else f'exit code {done.returncode}'}")
    return json.loads(done.stdout)


def start_detector_process(url: str, keys: Keys) -> Any:
    """The app's detector: `anomalydesk detect --worker` in a child process (it yields while another
    detector holds the lease, and stops when its stdin closes). In a thread of the app it shared the
    interpreter lock with the GUI thread: 100 services scored at each window boundary stalled the GUI
    loop for hundreds of ms (docs/benchmarks.md, the fleet case)."""
    import subprocess

    from anomalydesk.app.training_job import self_command

    argv = [*self_command(), "detect", "--worker", "--name", f"app-{os.getpid()}"]
    return subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        env={**os.environ, config.ENV_REDIS_URL: url, config.ENV_PREFIX: keys.prefix},  # a password stays off argv
        creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
    )  # fmt: skip


def load_model(r: redis.Redis, keys: Keys, service: str) -> Any:
    """The service's active model (None when it has none or it cannot be loaded)."""
    from anomalydesk.detect.service_state import load_model as load
    from anomalydesk.store import models as registry

    try:
        return load(r, service, keys=keys)[1]
    except (registry.ModelNotFound, registry.ModelLoadError):
        return None
