"""K-of-n confirmation and cooldown for one service, with its state as plain JSON for Redis.

The detector keeps this state in the service's detector state key between windows (and across
restarts), so it is a dict of plain numbers and lists, never an object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from anomalydesk import config


@dataclass(frozen=True)
class EpisodeEvent:
    """What one window did to the episode."""

    opened: int | None = None  # first window of a newly confirmed episode
    resolved: bool = False  # the open episode ended (cooldown of normal windows reached)
    anomalous_windows: int = 0  # anomalous windows counted into a newly opened episode


@dataclass(frozen=True)
class Confirmation:
    """Open after `k` anomalous of the last `n` windows; resolve after `cooldown` normal windows."""

    k: int = config.INCIDENT_CONFIRM_K
    n: int = config.INCIDENT_CONFIRM_N
    cooldown: int = config.INCIDENT_COOLDOWN_WINDOWS

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n:
            raise ValueError(f"confirmation needs 1 <= k <= n (got k={self.k}, n={self.n})")
        if self.cooldown < 1:
            raise ValueError(f"cooldown must be at least one window (got {self.cooldown})")

    def step(
        self, state: dict[str, Any] | None, anomalous: bool, window: int
    ) -> tuple[dict[str, Any], EpisodeEvent]:
        """Advance by one window; returns the new state and what happened."""
        state = dict(state or {"recent": [], "open": False, "quiet": 0})
        recent = [w for w in state.get("recent", []) if window - self.n < w < window]
        if anomalous:
            recent.append(window)
        state["recent"] = recent
        if not state.get("open"):
            if anomalous and len(recent) >= self.k:
                state.update(open=True, quiet=0, recent=[])
                return state, EpisodeEvent(opened=recent[0], anomalous_windows=len(recent))
            return state, EpisodeEvent()
        if anomalous:
            state["quiet"] = 0
            return state, EpisodeEvent()
        state["quiet"] = int(state.get("quiet", 0)) + 1
        if state["quiet"] >= self.cooldown:
            state.update(open=False, quiet=0, recent=[])
            return state, EpisodeEvent(resolved=True)
        return state, EpisodeEvent()
