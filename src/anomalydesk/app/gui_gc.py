"""Garbage collection on the GUI thread only, while the app runs.

Python's automatic collector runs in whichever thread happens to allocate; in this app that is
usually a worker (demo traffic, the detector, the I/O pool). A cycle it frees may hold Qt wrappers
(pyqtgraph's graphics items keep such cycles), and destroying those outside the GUI thread races
with the GUI thread inside Qt: the app deadlocked now and then, every thread waiting on the
interpreter lock, with the GUI thread in a pyqtgraph paint. pyqtgraph documents the same cure
(`pyqtgraph.util.garbage_collector`): switch automatic collection off and collect from a GUI
timer, generation by generation with the interpreter's own thresholds. `stop()` switches it back on.
"""

from __future__ import annotations

import gc

from PySide6 import QtCore

from anomalydesk.app.settings import GC_INTERVAL_MS


class GuiThreadCollector:
    """Turns automatic collection off and collects on a GUI-thread timer until `stop()`."""

    def __init__(self, interval_ms: int = GC_INTERVAL_MS) -> None:
        self.thresholds = gc.get_threshold()
        self.was_enabled = gc.isenabled()
        self.collections = 0
        self.timer = QtCore.QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.check)
        gc.disable()
        self.timer.start()

    def check(self) -> None:
        """Collect the generations whose counts passed their thresholds (what automatic collection would do)."""
        counts = gc.get_count()
        generation = -1
        for i in range(3):
            if counts[i] <= self.thresholds[i]:
                break
            generation = i
        if generation >= 0:
            gc.collect(generation)
            self.collections += 1

    def stop(self) -> None:
        """Stop the timer, collect once more, and give collection back to the interpreter (idempotent)."""
        if not self.timer.isActive():
            return
        self.timer.stop()
        gc.collect()
        if self.was_enabled:
            gc.enable()
