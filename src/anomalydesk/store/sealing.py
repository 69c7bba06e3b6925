"""Sealing: the ticker step that turns every service's closed windows into fingerprints.

`ad_ingest` seals its own service's closed windows; this also seals silent ones (zero traffic is a
signal). The demo, the detector and the desktop app run it.
"""

from __future__ import annotations

import threading

import orjson
import redis

from anomalydesk.config import REPLAY_CLOCK_HOLD_SECONDS, key_prefix
from anomalydesk.contract import MAX_SILENT_WINDOWS_SEALED
from anomalydesk.store.admin import configure_services, read_settings
from anomalydesk.store.encoding import config_from
from anomalydesk.store.gears import ensure_library, is_missing_function, is_stale_config
from anomalydesk.store.keys import Keys


def seal_all(r: redis.Redis, now: float | None = None, keys: Keys | None = None, *, _retried: bool = False) -> int:
    """Seal every known, non-retired service's closed windows (`now`: epoch seconds, None = server time).

    Seals each service's history too (docs/engine.md "History"). A setup that changed the window
    length meanwhile makes gears refuse the settings read here: they are read again, once.
    """
    keys = keys or Keys(key_prefix())
    stored = read_settings(r, keys)
    window_s = stored.settings.window_seconds
    services = [s.decode() if isinstance(s, bytes) else s for s in r.smembers(keys.services)]
    if not services:
        return 0
    cfg = orjson.dumps(config_from(stored.settings, stored.backend, stored.generation).payload_cfg)
    now_window = "" if now is None else str(int(now // window_s))
    pipe = r.pipeline(transaction=False)
    for service in services:
        pipe.fcall("ad_seal", 1, keys.state(service), keys.prefix, service, cfg, now_window,
                   MAX_SILENT_WINDOWS_SEALED, REPLAY_CLOCK_HOLD_SECONDS)
    replies = pipe.execute(raise_on_error=False)
    if any(is_missing_function(x) for x in replies):
        ensure_library(r)
        return seal_all(r, now, keys)
    stale = [service for service, reply in zip(services, replies, strict=True) if is_stale_config(reply)]
    if stale and not _retried:  # setup changed meanwhile: the config again, the services brought to it
        fresh = read_settings(r, keys)
        configure_services(r, stale, config_from(fresh.settings, fresh.backend, fresh.generation), keys)
        return sum(int(x) for x in replies if not isinstance(x, Exception)) + seal_all(r, now, keys, _retried=True)
    for service, reply in zip(services, replies, strict=True):
        if isinstance(reply, Exception):
            raise RuntimeError(f"sealing {service} failed: {reply}")
    return sum(int(x) for x in replies)


class SealTicker:
    """Runs `seal_all` every half window in a thread, so silent windows are sealed too."""

    def __init__(self, r: redis.Redis, keys: Keys | None = None, interval: float | None = None):
        self.r = r
        self.keys = keys or Keys(key_prefix())
        self.interval = interval
        self.sealed = 0
        self.last_error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SealTicker:
        if self.interval is None:
            self.interval = read_settings(self.r, self.keys).settings.window_seconds / 2
        self._thread = threading.Thread(target=self._run, name="anomalydesk-seal", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sealed += seal_all(self.r, keys=self.keys)
                self.last_error = None
            except Exception as err:
                self.last_error = err

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
