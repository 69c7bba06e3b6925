"""Where a service's window length changed, from the windows the app has seen (Qt-free).

After `setup --window 10 --force` every window holds twice the requests of a 5-s one: the live plot
marks where the length changed, so the step is not read as traffic, and judges a gap between two
windows against their own lengths. Windows arrive out of order — a backfill's history is read while
live windows keep coming — so the lengths are kept as runs of one length ordered by their first
window, not as a sequence in arrival order (a newer window noted first hid every older change).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RUNS_KEPT = 51  # runs kept per service: 50 changes (the oldest dropped first)


@dataclass
class _Run:
    first: float  # the run's first window start
    last: float  # its last window start
    length: int  # seconds


class WindowLengths:
    """One service's window lengths: runs of windows of one length, in time order."""

    def __init__(self) -> None:
        self._runs: list[_Run] = []

    def note(self, windows: Sequence[tuple[float, int | None]]) -> None:
        """Note windows ((start, length), in any order; a length of None, a window sealed before
        lengths were recorded, is skipped)."""
        for start, length in windows:
            if length is not None:
                self._note(float(start), int(length))
        del self._runs[: max(0, len(self._runs) - RUNS_KEPT)]

    def _note(self, start: float, length: int) -> None:
        runs = self._runs
        at = bisect.bisect_right([run.first for run in runs], start)  # runs[at - 1] begins at or before it
        before = runs[at - 1] if at else None
        if before is not None and start <= before.last:
            return  # inside a run: known (a window repeated, or one of another length inside: not a change)
        after = runs[at] if at < len(runs) else None
        if before is not None and before.length == length:
            before.last = start
            if after is not None and after.length == length:  # the window joined two runs of its length
                before.last = after.last
                del runs[at]
        elif after is not None and after.length == length:
            after.first = start
        else:
            runs.insert(at, _Run(start, start, length))

    def changes(self) -> list[tuple[float, int, int]]:
        """(first window start, old length, new length) of every change, oldest first."""
        return [(new.first, old.length, new.length) for old, new in zip(self._runs, self._runs[1:], strict=False)]

    def at(self, starts: np.ndarray) -> np.ndarray | None:
        """The length of each window starting at `starts` (None: no length noted): that of the run it
        falls in or after; windows before the first run have its length."""
        if not self._runs:
            return None
        run = np.searchsorted([r.first for r in self._runs], np.asarray(starts, dtype=float), side="right") - 1
        lengths = np.array([r.length for r in self._runs], dtype=float)
        return lengths[np.maximum(run, 0)]
