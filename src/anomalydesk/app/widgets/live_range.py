"""The live plots' time range: presets (15 min, 1 h, 6 h, 24 h), follow-live, and ranges read on demand.

`LiveRange` owns the range bar's buttons and decides what the plots' x axis shows. Following live, the
axis ends at the clock and moves with it; panning or zooming the right edge away from it (the mouse,
the wheel) leaves follow-live, and the Follow live button (Ctrl+L) or a preset returns to it. Reset zoom
(`show_all_data`) shows every window loaded and keeps them all in view as windows arrive, until the view
is moved or follows live again; the panel sets that range from its data (`show`). Whatever
the view needs before the oldest window of the ring buffer (a 6-h or 24-h preset, a pan into the past)
is read from the streams by `range_history.RangeLoader` off the GUI thread: the request is made here
(GUI thread), read and reduced in the loader's executor, and its rows applied here again; a newer
request cancels the older one.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from anomalydesk.app.model.ringbuffer import RingBuffer
from anomalydesk.app.model.settings import AppSettings
from anomalydesk.app.services.range_history import RangeLoader, RangeRows

log = logging.getLogger(__name__)

PRESETS = (("15 min", 900), ("1 h", 3_600), ("6 h", 21_600), ("24 h", 86_400))
FOLLOW_SHORTCUT = "Ctrl+L"
PRESET_SHORTCUTS = ("Ctrl+1", "Ctrl+2", "Ctrl+3", "Ctrl+4")
LOAD_DELAY_MS = 300  # a pan or zoom settles this long before the streams are read for it
FOLLOW_SLACK = 0.02  # the right edge within this fraction of the span from the clock still follows
FOLLOW_STEP_SECONDS = 1.0  # following, the axis moves once the clock has moved this far
RETRY_SECONDS = 10.0  # a failed read of older windows is tried again after this long


def buffer_start(buf: RingBuffer | None) -> float | None:
    """The oldest window start the buffer still holds, when the buffer is full (older windows were
    dropped, or never loaded); None when it holds everything the streams had when it was filled."""
    if buf is None or len(buf) < buf.capacity:
        return None
    return buf.first_key()


class LiveRange(QtCore.QObject):
    """Range presets + follow-live for the plots of `LivePanel`; emits `changed` when rows arrive or the
    range changes (the panel redraws)."""

    changed = QtCore.Signal()

    def __init__(self, settings: AppSettings, loader: RangeLoader | None,
                 buffers: dict[str, RingBuffer], parent: QtWidgets.QWidget) -> None:  # fmt: skip
        super().__init__(parent)
        self.buffers = buffers  # the live ring buffers by service (`LiveState.buffers`)
        self.settings = settings
        self.loader = loader
        self.span = float(settings.live_span_seconds)
        self.follow = True
        self.show_all = False  # Reset zoom: the axis spans every window loaded, new ones too
        self.rows: RangeRows | None = None  # what the streams gave for the service shown
        self.loading: tuple[str, float, float] | None = None
        self.service = ""
        self._task: asyncio.Task[None] | None = None
        self._view: pg.ViewBox | None = None
        self._views: list[pg.ViewBox] = []
        self._last_right = 0.0
        self._retry_at = 0.0  # (monotonic) no read is started by `keep_loaded` before this
        self._generation = 0  # moves on when the server changes: a read begun before is dropped

        self.bar = QtWidgets.QWidget()
        bar = QtWidgets.QHBoxLayout(self.bar)
        bar.setContentsMargins(0, 0, 0, 0)
        bar.setSpacing(2)
        self.group = QtWidgets.QButtonGroup(self)
        self.group.setExclusive(True)
        self.preset_buttons: dict[int, QtWidgets.QToolButton] = {}
        for (label, seconds), key in zip(PRESETS, PRESET_SHORTCUTS, strict=True):
            button = QtWidgets.QToolButton(text=label, checkable=True)
            button.setToolTip(f"the last {label}, following live ({key})")
            button.clicked.connect(lambda _on=False, s=seconds: self.choose(s))
            self.group.addButton(button)
            self.preset_buttons[seconds] = button
            bar.addWidget(button)
            shortcut = QtGui.QShortcut(QtGui.QKeySequence(key), parent)
            shortcut.activated.connect(lambda s=seconds: self.choose(s))
        self.follow_button = QtWidgets.QToolButton(text="Follow live", checkable=True)
        self.follow_button.setToolTip(f"keep the newest windows in view ({FOLLOW_SHORTCUT})")
        self.follow_button.clicked.connect(lambda on: self.set_follow(on))
        self.follow_shortcut = QtGui.QShortcut(QtGui.QKeySequence(FOLLOW_SHORTCUT), parent)
        self.follow_shortcut.activated.connect(lambda: self.set_follow(True))
        bar.addWidget(self.follow_button)
        self.restyle()
        self._sync_buttons()

        self.load_timer = QtCore.QTimer(self)
        self.load_timer.setSingleShot(True)
        self.load_timer.setInterval(LOAD_DELAY_MS)
        self.load_timer.timeout.connect(self.load_visible)

    def restyle(self) -> None:
        """The checked preset and Follow live in the highlight colour (a checked tool button of a dark
        Fusion palette looked like the others); set again when the palette changes, or the style sheet
        keeps drawing the buttons in the old palette's colours."""
        self.bar.setStyleSheet("")
        self.bar.setStyleSheet("QToolButton:checked { background-color: palette(highlight); "
                               "color: palette(highlighted-text); border: 1px solid palette(dark); "
                               "border-radius: 3px; padding: 2px 5px; }")  # fmt: skip

    # --- what the operator does ---------------------------------------------------------------
    def choose(self, seconds: float) -> None:
        """Show the last `seconds`, following live."""
        self.span = float(seconds)
        self.settings.live_span_seconds = int(seconds)
        self.set_follow(True)

    def set_follow(self, on: bool) -> None:
        """Follow live (the axis ends at the clock) or stay where the view is."""
        self.follow = bool(on)
        self._sync_buttons()
        if on:
            self.show_all = False
            self._last_right = 0.0
            self.tick()
            self.load_visible()
        self.changed.emit()

    def _sync_buttons(self) -> None:
        self.follow_button.setChecked(self.follow)
        preset = self.preset_buttons.get(int(self.span)) if self.follow else None
        self.group.setExclusive(False)  # (an exclusive group cannot be left with none checked)
        for button in self.preset_buttons.values():
            button.setChecked(button is preset)
        self.group.setExclusive(True)

    def attach(self, views: list[pg.ViewBox]) -> None:
        """The x-linked plots' views whose range this controls (the first is set and read); a manual pan
        or zoom on any of them is watched."""
        self.detach()
        self._views = list(views)
        self._view = self._views[0] if self._views else None
        for view in self._views:
            view.sigRangeChangedManually.connect(self._moved_by_hand)

    def detach(self) -> None:
        """Stop watching the views (their plots are about to be rebuilt)."""
        for view in self._views:
            view.sigRangeChangedManually.disconnect(self._moved_by_hand)
        self._views = []
        self._view = None

    def _moved_by_hand(self, *_args: object) -> None:
        """A drag or the wheel moved the view: off the right edge leaves follow-live; the streams are
        read for the new range once it settles."""
        if self._view is None:
            return
        self.show_all = False
        low, high = self._view.viewRange()[0]
        if self.follow and high < time.time() - FOLLOW_SLACK * max(high - low, 1.0):
            self.follow = False
            self._sync_buttons()
        elif self.follow:
            self.span = max(high - low, 1.0)  # zoomed at the right edge: still following, at this span
            self._sync_buttons()
        self.load_timer.start()

    # --- the x axis ---------------------------------------------------------------------------
    def window(self, now: float | None = None) -> tuple[float, float]:
        """The range following live shows: the last `span` seconds up to the clock."""
        now = time.time() if now is None else now
        return now - self.span, now

    def tick(self) -> None:
        """Following live: move the axis with the clock (called by the panel's redraw timer)."""
        if not self.follow or self._view is None:
            return
        low, high = self.window()
        if abs(high - self._last_right) < FOLLOW_STEP_SECONDS:
            return
        self._last_right = high
        self._view.setXRange(low, high, padding=0)

    def stop_following(self) -> None:
        """Leave follow-live without moving the view."""
        self.follow = False
        self._sync_buttons()

    def show_all_data(self) -> None:
        """Reset zoom: leave follow-live for a view of every window loaded (the panel `show`s its span)."""
        self.stop_following()
        self.show_all = True

    def show(self, low: float, high: float) -> None:
        """Put [low, high] on the x axis, exactly: pyqtgraph's auto-range is not used for it (with clip-to-view
        it measured each x-linked curve by the points in view, and one of them put the zoom back on all; its
        padding reached before the windows read, which were read again, further back, at every redraw)."""
        if self._view is not None:
            self._view.setXRange(low, high, padding=0)

    # --- rows from the streams ----------------------------------------------------------------
    @property
    def buffer(self) -> RingBuffer | None:
        """The ring buffer of the service shown."""
        return self.buffers.get(self.service)

    def show_service(self, service: str) -> None:
        """The panel shows `service` now; rows read for another service no longer apply."""
        if service != self.service:
            self.service = service
            self.rows = None
            self.load_visible()

    def older_rows(self, first_buffered: float | None) -> np.ndarray | None:
        """Rows read from the streams that lie before the buffer's first window (None: none apply)."""
        if self.rows is None or self.rows.service != self.service or not len(self.rows.rows):
            return None
        if first_buffered is None:  # an empty buffer
            return self.rows.rows
        older = self.rows.rows[self.rows.rows[:, 0] < first_buffered]
        return older if len(older) else None

    def needed(self) -> tuple[float, float] | None:
        """The range to read from the streams for what the view shows, or None when the buffer (or
        rows read before) cover it."""
        if self.loader is None or not self.service:
            return None
        if self.follow:
            low, high = self.window()
        elif self._view is not None:
            low, high = self._view.viewRange()[0]
        else:
            return None
        first = buffer_start(self.buffer)
        if first is None or low >= first:
            return None  # the ring buffer holds it
        rows = self.rows
        if rows is not None and rows.service == self.service and rows.start <= low and rows.end >= min(high, first):
            return None  # read before, from the view's start on to where the buffer takes over (or its end)
        # a margin to pan into, and on to the view's end: the buffer drops its oldest window as each new
        # one arrives, and the rows read must still reach it then (read only up to its first window, a
        # gap between the two would grow by a window every window)
        return low - 0.1 * (high - low), high

    def keep_loaded(self) -> None:
        """Read what the view needs whenever it comes to need it, not only when the operator acts: a
        preset restored at start-up or after a reconnect is applied before the ring buffer fills, when
        nothing is missing yet, and its older windows were never read (the 6-h view's first hour stayed
        blank until 6 h was clicked again). Called by the panel's redraw timer."""
        if self.loading is not None or self.load_timer.isActive() or time.monotonic() < self._retry_at:
            return
        self.load_visible()

    def load_visible(self) -> None:
        """Read what the view needs from the streams (a request in flight for another range is cancelled)."""
        wanted = self.needed()
        if wanted is None:
            return
        service = self.service
        self.loading = (service, *wanted)
        self._task = asyncio.ensure_future(self._load(service, *wanted))

    async def _load(self, service: str, start: float, end: float) -> None:
        assert self.loader is not None
        generation = self._generation
        try:
            found = await self.loader.load(service, start, end)
        except Exception as err:  # a failed read leaves the buffer's data shown and says why
            if generation != self._generation:
                return
            log.warning("reading %s from the streams failed: %s", service, err)
            self.loading = None
            self._retry_at = time.monotonic() + RETRY_SECONDS
            self.changed.emit()
            return
        if found is None or generation != self._generation:  # a newer request, or another server, replaced it
            return
        self.loading = None
        if found.service == self.service:
            self.rows = found
            self.changed.emit()

    def describe(self) -> str:
        """What the range shows, for the panel's info line ("" when only the ring buffer)."""
        if self.loading is not None and self.loading[0] == self.service:
            return "reading older windows …"
        if self.rows is not None and self.rows.service == self.service and self.rows.windows:
            how = f" in {self.rows.bin_seconds:,.0f}-s bins" if self.rows.reduced else ""
            return f"· {self.rows.windows:,} read from the streams{how}"
        return ""

    def forget(self) -> None:
        """Another server: a read in flight is dropped (its windows are the old server's), and nothing
        read before applies."""
        self._generation += 1
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self.loading, self.rows, self._retry_at = None, None, 0.0

    def stop(self) -> None:
        """Cancel a read in flight and shut the loader down (the window closes)."""
        self.load_timer.stop()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.loader is not None:
            self.loader.close()
