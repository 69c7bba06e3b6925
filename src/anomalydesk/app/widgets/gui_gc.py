"""Garbage collection on the GUI thread only, while the app runs.

Python's automatic collector runs in whichever thread happens to allocate; in this app that is
usually a worker (demo traffic, the detector, the I/O pool). A cycle it frees may hold Qt wrappers
(pyqtgraph's graphics items keep such cycles), and destroying those outside the GUI thread races
with the GUI thread inside Qt: the app deadlocked now and then, every thread waiting on the
interpreter lock, with the GUI thread in a pyqtgraph paint. pyqtgraph documents the same cure
(`pyqtgraph.util.garbage_collector`): switch automatic collection off and collect from a GUI
timer, generation by generation with the interpreter's own thresholds. `stop()` switches it back on.

A full collection scans every tracked object, so with the heap of a started app (Qt, pyqtgraph,
numpy, scikit-learn, a hundred services' state) one took 71–483 ms on the GUI thread (the fleet case
of `bench app`, measured with `gc.callbacks`). `freeze_baseline()`, called once the app has started
and read its history, moves what is alive then out of the collector's sight (`gc.freeze`): later
full collections scan only what was created since. Start-up objects that become garbage later are
freed by reference counting as before; only cycles among them are not collected (bounded: the app
builds its start-up objects once).
"""

from __future__ import annotations

import gc

from PySide6 import QtCore

from anomalydesk.app.model.settings import GC_INTERVAL_MS


class GuiThreadCollector:
    """Turns automatic collection off and collects on a GUI-thread timer until `stop()`."""

    def __init__(self, interval_ms: int = GC_INTERVAL_MS) -> None:
        self.thresholds = gc.get_threshold()
        self.was_enabled = gc.isenabled()
        self.collections = 0
        self.frozen = False
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

    def freeze_baseline(self) -> None:
        """Collect once, then exempt every object alive now from later collections (idempotent)."""
        if self.frozen:
            return
        gc.collect()
        gc.freeze()
        self.frozen = True

    def stop(self) -> None:
        """Stop the timer, collect once more, and give collection back to the interpreter (idempotent)."""
        if not self.timer.isActive():
            return
        self.timer.stop()
        if self.frozen:
            gc.unfreeze()
            self.frozen = False
        gc.collect()
        if self.was_enabled:
            gc.enable()
