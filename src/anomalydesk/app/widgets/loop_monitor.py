"""Measures event-loop responsiveness: the gaps between ticks of a fast QTimer (longest and 99th percentile),
and the time a view spends painting."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from PySide6 import QtCore

TICK_MS = 5


class StallMeter(QtCore.QObject):
    """While running, records the longest time the GUI loop did not service a 5 ms timer."""

    def __init__(self, parent: QtCore.QObject | None = None):
        super().__init__(parent)
        self.timer = QtCore.QTimer(self)
        self.timer.setTimerType(QtCore.Qt.TimerType.PreciseTimer)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self._tick)
        self.max_gap_ms = 0.0
        self.ticks = 0
        self.gaps_ms: list[float] = []
        self._last = 0.0

    def start(self) -> None:
        """Reset and start measuring."""
        self.max_gap_ms = 0.0
        self.ticks = 0
        self.gaps_ms = []
        self._last = time.perf_counter()
        self.timer.start()

    def stop(self) -> float:
        """Stop; returns the longest stall beyond the timer's own interval, in ms."""
        self.timer.stop()
        return self.max_stall_ms

    @property
    def max_stall_ms(self) -> float:
        return max(0.0, self.max_gap_ms - TICK_MS)

    @property
    def p99_stall_ms(self) -> float:
        """The 99th percentile of the gaps beyond the timer's own interval, in ms."""
        return max(0.0, float(np.percentile(self.gaps_ms, 99)) - TICK_MS) if self.gaps_ms else 0.0

    def _tick(self) -> None:
        now = time.perf_counter()
        gap = (now - self._last) * 1000
        self.gaps_ms.append(gap)
        self.max_gap_ms = max(self.max_gap_ms, gap)
        self._last = now
        self.ticks += 1


class PaintTimer:
    """Adds up the time one pyqtgraph view spends in its paint events (`ms`), beside a redraw's `setData`.

    PySide binds a Python override of a virtual to each object the first time Qt calls it (and keeps
    using that function), so `GraphicsView.paintEvent` is wrapped once per process, before the view
    is built, and never unwrapped (a replaced override that was freed crashed the next paint): build
    the timer, then the view, then `watch(view)`; `close()` stops counting.
    """

    _counting: PaintTimer | None = None  # the timer the process-wide wrapper reports to
    _wrapped = False

    def __init__(self) -> None:
        self.view: Any = None
        self.ms = 0.0
        if not PaintTimer._wrapped:
            import pyqtgraph as pg

            original = pg.GraphicsView.paintEvent

            def paint_event(this: Any, event: Any) -> Any:
                timer = PaintTimer._counting
                if timer is None or this is not timer.view:
                    return original(this, event)
                t0 = time.perf_counter()
                try:
                    return original(this, event)
                finally:
                    timer.ms += (time.perf_counter() - t0) * 1000

            pg.GraphicsView.paintEvent = paint_event
            PaintTimer._wrapped = True

    def watch(self, view: Any) -> None:
        """Count the paints of `view` (built after the first PaintTimer) from now on."""
        self.view = view
        self.ms = 0.0
        PaintTimer._counting = self

    def close(self) -> None:
        """Stop counting."""
        if PaintTimer._counting is self:
            PaintTimer._counting = None
        self.view = None
