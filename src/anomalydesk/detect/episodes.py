"""Turning per-window anomalous flags into incidents: k-of-n confirmation with an opening margin, and a
cooldown.

One implementation for both sides, so the backtest measures exactly what the product does:
`EpisodeTracker.step(anomalous)` is fed one window at a time by the live detector (its state is a
small JSON-able dict, so it can be kept in Redis between windows), and `track(flags)` runs the same
tracker over a whole array for the backtest.

Rules:
- An episode **opens** at the window where at least `k` of the last `n` windows (this one included)
  are anomalous and at least one of them is **strong** (for the detector: scored at or above
  `config.INCIDENT_OPEN_SCORE`, a little past the threshold); it **starts** at the first anomalous
  window among those `n` (the incident covers the windows that confirmed it). Windows that only just
  pass the threshold open nothing by themselves (hysteresis: a higher bar to open than to go on).
- While open, an anomalous window **extends** it; normal windows in between are tolerated.
- It **resolves** after `cooldown` normal windows in a row; it **ends** at its last anomalous window.
  Windows from start to end count as "inside the incident".
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from anomalydesk import config


@dataclass
class Episode:
    """One incident's extent in window indices (end = last anomalous window so far)."""

    start: int
    end: int
    resolved_at: int | None = None  # index of the window that resolved it
    confirmed: int | None = None  # index of the window that opened it (its alert went out there)

    @property
    def length(self) -> int:
        """Windows from start to end, inclusive."""
        return self.end - self.start + 1


@dataclass(frozen=True)
class Step:
    """What one window did: `opened` / `extended` / `resolved` (at most one), and the episode."""

    opened: bool = False
    extended: bool = False
    resolved: bool = False
    episode: Episode | None = None


class EpisodeTracker:
    """k-of-n confirmation and cooldown over a stream of anomalous/normal windows."""

    def __init__(self, k: int = config.INCIDENT_CONFIRM_K, n: int = config.INCIDENT_CONFIRM_N,
                 cooldown: int = config.INCIDENT_COOLDOWN_WINDOWS):
        if not 1 <= k <= n:
            raise ValueError(f"confirmation needs 1 <= k <= n, got k={k}, n={n}")
        if cooldown < 1:
            raise ValueError(f"cooldown must be at least 1 window, got {cooldown}")
        self.k, self.n, self.cooldown = k, n, cooldown
        self.index = -1  # index of the last window stepped
        self.recent: deque[int] = deque()  # indices of anomalous windows among the last n
        self.strong: deque[int] = deque()  # … and of the strong ones among them
        self.open: Episode | None = None
        self.normal_run = 0

    def step(self, anomalous: bool, index: int | None = None, strong: bool | None = None) -> Step:
        """Feed the next window (index defaults to the previous one + 1). `strong`: whether an anomalous
        window may open an incident (default: every anomalous one may, plain k-of-n)."""
        self.index = self.index + 1 if index is None else int(index)
        for recent in (self.recent, self.strong):
            while recent and recent[0] <= self.index - self.n:
                recent.popleft()
        if anomalous:
            self.recent.append(self.index)
            if strong is None or strong:
                self.strong.append(self.index)
        if self.open is not None:
            if anomalous:
                self.open.end = self.index
                self.normal_run = 0
                return Step(extended=True, episode=self.open)
            self.normal_run += 1
            if self.normal_run >= self.cooldown:
                done, self.open = self.open, None
                done.resolved_at = self.index
                self.recent.clear()
                self.strong.clear()
                self.normal_run = 0
                return Step(resolved=True, episode=done)
            return Step(episode=self.open)
        if anomalous and len(self.recent) >= self.k and self.strong:
            self.open = Episode(start=self.recent[0], end=self.index, confirmed=self.index)
            self.normal_run = 0
            return Step(opened=True, episode=self.open)
        return Step()

    def state(self) -> dict[str, Any]:
        """A JSON-able snapshot (for keeping the live tracker of a service in Redis)."""
        return {
            "k": self.k, "n": self.n, "cooldown": self.cooldown, "index": self.index,
            "recent": list(self.recent), "strong": list(self.strong), "normal_run": self.normal_run,
            "open": None if self.open is None else [self.open.start, self.open.end],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpisodeTracker:
        """Rebuild a tracker from `state()`."""
        tracker = cls(int(state["k"]), int(state["n"]), int(state["cooldown"]))
        tracker.index = int(state["index"])
        tracker.recent = deque(int(i) for i in state["recent"])
        # a state saved before the opening margin: its anomalous windows keep the rule they were counted under
        tracker.strong = deque(int(i) for i in state.get("strong", state["recent"]))
        tracker.normal_run = int(state["normal_run"])
        if state.get("open") is not None:
            start, end = state["open"]
            tracker.open = Episode(start=int(start), end=int(end))
        return tracker


def track(flags: np.ndarray, k: int = config.INCIDENT_CONFIRM_K, n: int = config.INCIDENT_CONFIRM_N,
          cooldown: int = config.INCIDENT_COOLDOWN_WINDOWS, strong: np.ndarray | None = None
          ) -> tuple[np.ndarray, list[Episode]]:
    """Whole-array run: (bool mask of windows inside an incident, the episodes in order). `strong`: which
    windows may open an incident (`EpisodeTracker.step`; default: every anomalous one).

    Only anomalous windows and the few normal ones after them change the state, so long quiet
    stretches are skipped; the result is the same as stepping every window.
    """
    flags = np.asarray(flags, dtype=bool).reshape(-1)
    tracker = EpisodeTracker(k, n, cooldown)
    episodes: list[Episode] = []
    opens = flags if strong is None else np.asarray(strong, dtype=bool).reshape(-1)
    if opens.shape != flags.shape:
        raise ValueError(f"strong has {opens.shape[0]} windows, flags {flags.shape[0]}")
    for i in np.flatnonzero(flags):
        _skip_normal(tracker, int(i) - 1)
        result = tracker.step(True, int(i), strong=bool(opens[i]))
        if result.opened and result.episode is not None:
            episodes.append(result.episode)
    _skip_normal(tracker, flags.shape[0] - 1)
    inside = np.zeros(flags.shape[0], dtype=bool)
    for ep in episodes:
        inside[ep.start:ep.end + 1] = True
    return inside, episodes


def track_scores(scores: np.ndarray, threshold: float = config.SEVERITY_WARNING,
                 open_score: float = config.INCIDENT_OPEN_SCORE) -> tuple[np.ndarray, list[Episode]]:
    """`track` with the detector's rule on 0–100 scores: a window at or above `threshold` is anomalous,
    one at or above `open_score` may open an incident."""
    scores = np.asarray(scores, dtype=float).reshape(-1)
    return track(scores >= threshold, strong=scores >= max(threshold, open_score))


def _skip_normal(tracker: EpisodeTracker, last: int) -> None:
    """Advance over normal windows up to `last` (a quiet stretch: nothing is open afterwards)."""
    while tracker.index < last and (tracker.open is not None or tracker.recent):
        tracker.step(False)
    tracker.index = max(tracker.index, last)
