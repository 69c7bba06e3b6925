"""Whether a service's traffic is live: what the Live panel says instead of a score that is no longer news.

The score title read "now 39, threshold 70" after the demo stopped, or once a service fell silent: the
newest score in view was the last one before the stop (a silent window inside a stop on purpose is not
scored, nor is a system gap), shown as if live. `Traffic.note` names the state of the traffic first:

* stopped on purpose (`store.traffic_stops`, read by the status poll): "demo traffic stopped at …";
* no window arrived for `SILENT_FINGERPRINT_WARN_WINDOWS` windows (the connection warns then too):
  "no recent windows (newest …)";
* windows arrive, but `NO_TRAFFIC_WINDOWS` or more in a row had no event at all: "no traffic since …".

A score stays "now" only when its window began at or after the note's `since` (a silent window the
detector scored while other services still had traffic); a stop's windows and a stale buffer have none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from anomalydesk.app.model.settings import NO_TRAFFIC_WINDOWS, SILENT_FINGERPRINT_WARN_WINDOWS
from anomalydesk.detect.incident_model import local_time

if TYPE_CHECKING:
    from collections.abc import Mapping

    from anomalydesk.store.traffic_stops import Stop


@dataclass(frozen=True)
class TrafficNote:
    """What to say about a service's traffic, and from when a score is current again (None: no score is)."""

    words: str
    since: float | None


class Traffic:
    """Per service: its latest stop on purpose (`stops`, from the status poll), the start of its newest
    window with events and of its trailing run of windows without any (from the fingerprint reader)."""

    def __init__(self) -> None:
        self.stops: Mapping[str, Stop] = {}
        self.last_traffic: dict[str, float] = {}
        self.silent_since: dict[str, float] = {}

    def forget(self, service: str | None = None) -> None:
        """Drop what is known of one service's traffic (its buffer is filled again), or of all (another server)."""
        if service is None:
            self.stops = {}
            self.last_traffic.clear()
            self.silent_since.clear()
            return
        self.last_traffic.pop(service, None)
        self.silent_since.pop(service, None)

    def window(self, service: str, start: float, silent: bool) -> None:
        """A window of `service` had events (`silent` False) or none at all. (A sparse source's window
        marked no data is neither: the caller does not note it.)"""
        last = self.last_traffic.get(service, -math.inf)
        if not silent:
            if start > last:
                self.last_traffic[service] = start
                if self.silent_since.get(service, math.inf) <= start:
                    del self.silent_since[service]
            return
        since = self.silent_since.get(service)
        if start > last and (since is None or start < since):
            self.silent_since[service] = start

    def note(self, service: str, newest: float | None, now: float, window_seconds: float) -> TrafficNote | None:
        """What to say about `service`'s traffic at `now`, its newest buffered window starting at `newest`
        (None: none buffered); None while it is live."""
        stop = self.stops.get(service)
        # (a window with events from the stop on is traffic back: the detector ends the stop at it, and
        # the status poll reads that up to a poll later)
        back = self.last_traffic.get(service, -math.inf) >= (stop.since if stop is not None else math.inf)
        if stop is not None and stop.resumed is None and stop.since <= now and not back:
            return TrafficNote(f"{stop.by} traffic stopped at {local_time(stop.since)}", None)
        if newest is None:
            return None
        if now - newest > (SILENT_FINGERPRINT_WARN_WINDOWS + 1) * window_seconds:
            return TrafficNote(f"no recent windows (newest {local_time(newest)})", None)
        since = self.silent_since.get(service)
        if since is not None and newest - since >= (NO_TRAFFIC_WINDOWS - 1) * window_seconds:
            return TrafficNote(f"no traffic since {local_time(since)}", since)
        return None
