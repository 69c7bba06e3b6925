"""Live panel: a service's fingerprint features over time, its anomaly score, threshold and incidents.

The score curve is what the detector stored for each window (`detect.window_scores`), the score its
alerts used; windows no model scored are gaps. A vertical line marks each window where a model
version took over scoring ("model vN"): a newly activated model's scores start there.

Plots redraw on a fixed-rate QTimer from the ring buffers in `LiveState` (never once per Redis
message); curves are created once per feature selection and updated with `setData`, with peak
downsampling and clip-to-view so 8 curves × 3,600 points stay cheap.

The time range (`live_range.LiveRange`): presets of 15 min, 1 h, 6 h and 24 h that follow live, and
whatever lies before the ring buffer's oldest window read from the streams on demand, off the GUI
thread, and drawn before the buffered windows.

Why this module is long: it is one panel — building the plots, drawing the ring buffers and the
windows read into them, incident bands, model marks, Reset zoom and the exports share the same curves
and views; the time range and the stream reads are already modules of their own.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

from anomalydesk.app.model.settings import REDRAW_INTERVAL_MS, AppSettings
from anomalydesk.app.model.state import AppState
from anomalydesk.app.services.range_history import RangeLoader
from anomalydesk.app.widgets import export, theme
from anomalydesk.app.widgets.live_range import LiveRange
from anomalydesk.app.widgets.message_label import MessageLabel
from anomalydesk.app.widgets.plot_axes import SparseAxis, compact_title
from anomalydesk.detect.incident_model import score_text
from anomalydesk.fingerprint import FEATURE_INDEX, FEATURES, shown_values

SEVERITY_BRUSH = {"info": (80, 140, 220, 40), "warning": (240, 170, 40, 60), "critical": (220, 50, 50, 70)}
_FEATURE_BY_NAME = {f.name: f for f in FEATURES}



TITLE_STYLE = {"size": "9pt", "justify": "left"}
SCORE_TITLE = "score (0–100)"
NOTHING_DRAWN = -2  # `_drawn_version` once the plots were cleared (no buffer for the service shown)
AXIS_WIDTH = 52
EMPTY_SPAN_SECONDS = 900  # the x range before any window arrived (it read "00.100 … 00.900" near 1970)
MIN_SHOWN_SECONDS = 60.0  # Reset zoom on a single window: this much time around it
GAP_FACTOR = 1.5  # consecutive windows further apart than this many window lengths: a gap, drawn as one
MARK_ROWS = 3  # rows of "model vN" labels at most, from the score plot's top down
MARK_GAP_PX = 6  # room between two labels on one row
MARK_ROW_SPACING = 1.1  # text heights from one row of labels to the next
_UNIT_WORDS = {"/window": "requests per window", "%": "%", "ms": "ms", "bits": "bits", "x": "× expected"}


@dataclass(frozen=True)
class _Shown:
    """What a redraw drew that the score title and the info line tell: the service, the windows ("3,600
    windows …"), its threshold (None: no model), the newest score in view and its window's start."""

    service: str
    head: str
    threshold: float | None
    last: float
    last_start: float


def axis_title(label: str, unit: str) -> str:
    """A plot's name with its unit in plain words: "p95 latency (ms)", "requests (requests per window)"."""
    words = _UNIT_WORDS.get(unit, unit)
    if label == "requests" and unit == "/window":
        return "requests per window"
    return f"{label} ({words})" if words else label


def with_gaps(rows: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
    """`rows` (time-ordered, column 0 the window start) with a NaN row inside every gap: a step longer
    than GAP_FACTOR window lengths, so a 20-hour gap is a break, not a ramp. Where `lengths` (one per
    row, NaN: unknown) knows the windows' own lengths, a step is judged against the longer of the two
    windows beside it: the first window after a change from 5 s to 10 s begins at a multiple of 10 s,
    up to 10 s after the last 5-s one ended (the live events between went into it), and is no gap. Else
    the window length is the shorter of the steps beside it. (Measured against the median step, every
    step after a change from 5-s to 10-s windows was a gap while the buffer held mostly 5-s ones.)"""
    if len(rows) < 3:
        return rows
    steps = np.diff(rows[:, 0])
    positive = np.where(steps > 0, steps, np.inf)
    before = np.concatenate([positive[:1], positive[:-1]])
    after = np.concatenate([positive[1:], positive[-1:]])
    spacing = np.minimum(before, after)  # the window length around each step
    allowed = spacing
    if lengths is not None:
        own = np.asarray(lengths, dtype=float)
        known = np.isfinite(own[:-1]) & (own[:-1] > 0) & np.isfinite(own[1:]) & (own[1:] > 0)
        spacing = np.where(known, own[:-1], spacing)
        allowed = np.where(known, np.maximum(own[:-1], own[1:]), spacing)
    gaps = np.flatnonzero(np.isfinite(allowed) & (steps > GAP_FACTOR * allowed))
    if not len(gaps):
        return rows
    filler = np.full((len(gaps), rows.shape[1]), np.nan)
    filler[:, 0] = rows[gaps, 0] + spacing[gaps]  # just after the last window before the gap
    return np.insert(rows, gaps + 1, filler, axis=0)


def join_older(older: np.ndarray, rows: np.ndarray, bin_seconds: float) -> np.ndarray:
    """Rows read from the streams (`older`, reduced to bins of `bin_seconds`) followed by the buffered
    `rows`, with a NaN row between them when more than a bin and a window lie between the two."""
    if not len(rows):
        return older
    spacing = float(np.median(np.diff(rows[:, 0]))) if len(rows) > 1 else bin_seconds
    if rows[0, 0] - older[-1, 0] > bin_seconds + GAP_FACTOR * spacing:
        filler = np.full((1, rows.shape[1]), np.nan)
        filler[0, 0] = older[-1, 0] + bin_seconds / 2
        return np.vstack([older, filler, rows])
    return np.vstack([older, rows])


class LivePanel(QtWidgets.QWidget):
    """Per-service feature curves plus the score plot, fed from `state.live`."""

    def __init__(self, state: AppState, settings: AppSettings, ranges: RangeLoader | None = None,
                 parent: QtWidgets.QWidget | None = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.state = state
        self.settings = settings
        self.paused = False
        self._resume_following = False  # paused while following: Resume follows again
        self._built = False
        self._drawn_version = -1
        self._drawn_service = ""
        self._drawn_span: tuple[float, float] | None = None  # the first and last time drawn (Reset zoom shows it)
        self._bands_key: tuple = ()
        self._feature_plots: list[pg.PlotItem] = []
        self._curves: dict[str, pg.PlotDataItem] = {}
        self._bands: list[pg.LinearRegionItem] = []
        self._marks_key: tuple = ()
        self._marks: list[pg.InfiniteLine] = []
        self._csv_task: asyncio.Future[None] | None = None
        self._shown: _Shown | None = None  # what the score title and info line were last drawn from

        self.service_box = QtWidgets.QComboBox()
        self.service_box.setMinimumContentsLength(12)
        self.features_button = QtWidgets.QToolButton(text="Features")
        self.features_button.setPopupMode(QtWidgets.QToolButton.ToolButtonPopupMode.InstantPopup)
        self.features_menu = QtWidgets.QMenu(self)
        self.feature_actions: dict[str, QtGui.QAction] = {}
        for feature in FEATURES:
            action = self.features_menu.addAction(feature.label)
            action.setCheckable(True)
            action.setChecked(feature.name in settings.live_features)
            action.toggled.connect(self._features_toggled)
            self.feature_actions[feature.name] = action
        self.features_button.setMenu(self.features_menu)
        # tool buttons: compact enough that the bar, the presets and the info line fit 1280 px beside a dock
        self.pause_button = QtWidgets.QToolButton(text="Pause", checkable=True)
        self.pause_button.toggled.connect(self.set_paused)
        self.zoom_button = QtWidgets.QToolButton(text="Reset zoom")
        self.zoom_button.setToolTip("show every window loaded, and new ones as they arrive (leaves follow-live)")
        self.zoom_button.clicked.connect(self.reset_zoom)
        self.png_button = QtWidgets.QToolButton(text="PNG…")
        self.png_button.setToolTip("export the plots as shown as a PNG image, headed by service and time range")
        self.png_button.clicked.connect(lambda: self._ask_export("png"))
        self.csv_button = QtWidgets.QToolButton(text="CSV…")
        self.csv_button.setToolTip("export the windows of the range shown (time, score, every feature) as CSV")
        self.csv_button.clicked.connect(lambda: self._ask_export("csv"))
        self.info_label = MessageLabel("no data yet")  # elided: a long line never widens the window
        self.range = LiveRange(settings, ranges, state.live.buffers, self)
        self.range.changed.connect(self._range_changed)

        bar = QtWidgets.QHBoxLayout()
        bar.addWidget(QtWidgets.QLabel("Service"))
        for w in (self.service_box, self.features_button, self.range.bar, self.pause_button, self.zoom_button,
                  self.png_button, self.csv_button):  # fmt: skip
            bar.addWidget(w)
        bar.addStretch(1)

        self.graphics = pg.GraphicsLayoutWidget()
        self.colours = theme.plot_colours(self.palette())  # the system's light or dark scheme (`theme`)
        self.score_plot = pg.PlotItem(axisItems={"bottom": pg.DateAxisItem(), "left": SparseAxis()})
        compact_title(self.score_plot, SCORE_TITLE, **TITLE_STYLE)
        self.score_plot.getAxis("left").enableAutoSIPrefix(False)
        self.score_plot.getAxis("left").setWidth(AXIS_WIDTH)
        self._cache_axes(self.score_plot)
        self.score_plot.setMouseEnabled(x=True, y=False)  # the wheel zooms time; y only on purpose
        self.score_plot.setYRange(0, 100)
        self._auto_button_resets_zoom(self.score_plot)
        self._clock_range = False  # True while the x axis shows the clock's last minutes (no data yet)
        self.score_plot.showGrid(y=True, alpha=0.2)
        self.score_curve = self.score_plot.plot(pen=pg.mkPen(self.colours.curve, width=2), name="score")
        self._tune(self.score_curve)
        dashed = pg.mkPen((220, 60, 60), style=QtCore.Qt.PenStyle.DashLine)
        self.threshold_line = pg.InfiniteLine(angle=0, movable=False, pen=dashed)
        self.threshold_line.setVisible(False)
        self.score_plot.addItem(self.threshold_line)
        self.score_plot.getViewBox().sigXRangeChanged.connect(self._lay_out_marks)
        self.score_plot.getViewBox().sigResized.connect(self._lay_out_marks)

        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(bar)
        # a row of its own: beside the bar at 1280 px it was elided to "1…", and "reading older windows …"
        # is the only sign that a long range is on its way
        layout.addWidget(self.info_label)
        layout.addWidget(self.graphics, 1)

        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(REDRAW_INTERVAL_MS)
        self.timer.timeout.connect(self.redraw)
        self.timer.timeout.connect(self.range.tick)
        self.timer.timeout.connect(self.range.keep_loaded)
        self.timer.start()

        self.service_box.currentTextChanged.connect(self._service_changed)
        state.services_changed.connect(self._services_changed)
        state.live.services_changed.connect(self._services_changed)
        self._rebuild_plots()
        self._services_changed()
        self._built = True

    # --- building -----------------------------------------------------------------------------
    @staticmethod
    def _tune(curve: pg.PlotDataItem) -> None:
        curve.setDownsampling(auto=True, method="peak")
        curve.setClipToView(True)
        curve.setSkipFiniteCheck(False)  # gaps in time are NaN rows (`with_gaps`); scores have unscored windows

    @staticmethod
    def _cache_axes(plot: pg.PlotItem) -> None:
        """Keep each axis (its ticks, labels and grid lines) as a pixmap until its range changes: replaying
        them took most of a repaint (9 plots, 18 axes) and a new window moves only the time axes."""
        for name in ("left", "bottom"):
            plot.getAxis(name).setCacheMode(QtWidgets.QGraphicsItem.CacheMode.DeviceCoordinateCache)

    def selected_features(self) -> list[str]:
        """Names of the features currently plotted, in schema order."""
        return [name for name, action in self.feature_actions.items() if action.isChecked()]

    def set_features(self, names: list[str]) -> None:
        """Plot exactly these features."""
        for name, action in self.feature_actions.items():
            action.blockSignals(True)
            action.setChecked(name in names)
            action.blockSignals(False)
        self._features_toggled()

    def _features_toggled(self, *_args: object) -> None:
        self.settings.live_features = self.selected_features()
        self._rebuild_plots()

    def _rebuild_plots(self) -> None:
        self.range.detach()
        self.score_plot.setXLink(None)  # (its link to a feature plot about to be deleted)
        self.graphics.clear()
        self._feature_plots.clear()
        self._curves.clear()
        names = self.selected_features()
        self.colours = theme.plot_colours(self.palette())
        self.graphics.setBackground(self.colours.background)
        colours = [self.colours.series(i, len(names)) for i in range(len(names))]
        for i, name in enumerate(names):
            feature = _FEATURE_BY_NAME[name]
            plot = self.graphics.addPlot(row=i, col=0, axisItems={"bottom": pg.DateAxisItem(), "left": SparseAxis()})
            # the name and unit as a title (a vertical axis label longer than a short plot overlapped the next)
            compact_title(plot, axis_title(feature.label, feature.unit), **TITLE_STYLE)
            plot.getAxis("left").enableAutoSIPrefix(False)  # a KPI of 0.56 reads 0.56, not 560 (×0.001)
            plot.getAxis("left").setWidth(AXIS_WIDTH)  # the plots' left edges line up
            self._cache_axes(plot)
            plot.setMouseEnabled(x=True, y=False)
            plot.showGrid(y=True, alpha=0.15)
            # the score plot below carries the time axis: 8 more date axes (tick marks, no labels) were
            # regenerated at every new window and took about half of a redraw
            plot.hideAxis("bottom")
            theme.style_plot(plot, self.colours)
            curve = plot.plot(pen=pg.mkPen(colours[i], width=1), name=feature.label)  # 1 px: a wider pen paints slowly
            self._tune(curve)
            self._curves[name] = curve
            self._feature_plots.append(plot)
            self._auto_button_resets_zoom(plot)
            if self._feature_plots[0] is not plot:
                plot.setXLink(self._feature_plots[0])
        self.graphics.addItem(self.score_plot, row=len(names), col=0)
        theme.style_plot(self.score_plot, self.colours)
        self.score_curve.setPen(pg.mkPen(self.colours.curve, width=2))
        if self._feature_plots:
            self.score_plot.setXLink(self._feature_plots[0])
        first = self._feature_plots[0] if self._feature_plots else self.score_plot
        self.range.attach([plot.getViewBox() for plot in [*self._feature_plots, self.score_plot]])
        buf = self.state.live.buffers.get(self.service)
        if self.range.follow:
            self.range.set_follow(True)  # the clock's last `span`, whether data arrived yet or not
        elif buf is None or not len(buf):  # no data yet: the last minutes of the clock, not "00.100" near 1970
            now = time.time()
            first.setXRange(now - EMPTY_SPAN_SECONDS, now, padding=0)
            self._clock_range = True
        self._drawn_version = -1
        self._bands_key = ()
        self._marks_key = ()
        self.redraw()

    # --- data ---------------------------------------------------------------------------------
    def _services_changed(self) -> None:
        if self.service not in self.state.live.buffers:
            self.range.rows = None  # another server (its buffers were dropped): nothing read before applies
        names = sorted(set(self.state.services) | set(self.state.live.buffers))
        current = self.service_box.currentText()
        if names == [self.service_box.itemText(i) for i in range(self.service_box.count())]:
            return
        self.service_box.blockSignals(True)
        self.service_box.clear()
        self.service_box.addItems(names)
        wanted = current or self.settings.live_service
        if wanted in names:
            self.service_box.setCurrentText(wanted)
        self.service_box.blockSignals(False)
        self._service_changed(self.service_box.currentText())

    def _service_changed(self, name: str) -> None:
        if name:
            self.settings.live_service = name
        self.range.show_service(name)
        self._drawn_version = -1
        self._bands_key = ()
        self.redraw()

    def select_service(self, name: str) -> None:
        """Show `name` (adding it to the list if it is not there yet)."""
        if self.service_box.findText(name) < 0:
            self.service_box.addItem(name)
        self.service_box.setCurrentText(name)

    @property
    def service(self) -> str:
        return self.service_box.currentText()

    def set_paused(self, paused: bool) -> None:
        """Freeze the plots (data keeps arriving in the buffers); paused, the view does not follow live
        (Follow live says so), and resuming follows again if it did before."""
        if paused == self.paused:
            return
        self.paused = paused
        self.pause_button.setChecked(paused)
        self.pause_button.setText("Resume" if paused else "Pause")
        if paused:
            self._resume_following = self.range.follow
            self.range.stop_following()
        else:
            if self._resume_following and not self.range.follow:
                self.range.set_follow(True)
            self._resume_following = False
            self.redraw()

    def reset_zoom(self) -> None:
        """Show every window loaded — buffered and read from the streams for the range — which leaves
        follow-live; new windows widen the view until it is moved (`LiveRange.show_all`)."""
        self.range.show_all_data()
        for plot in self._feature_plots:
            plot.enableAutoRange(axis="y")
        self._show_drawn_span()

    def _auto_button_resets_zoom(self, plot: pg.PlotItem) -> None:
        """The "A" button pyqtgraph shows in a plot's corner does what Reset zoom does: its own auto-range
        measured the x-linked curves by the points drawn with clip-to-view (the zoomed part), and its
        padding had the older windows read again and again."""
        plot.autoBtn.clicked.disconnect()
        plot.autoBtn.clicked.connect(lambda _button: self.reset_zoom())

    def _show_drawn_span(self) -> None:
        """The x axis from the first to the last time drawn (set from the data: `LiveRange.show`)."""
        if self._drawn_span is None:
            return
        low, high = self._drawn_span
        if high - low < MIN_SHOWN_SECONDS:
            middle = (low + high) / 2
            low, high = middle - MIN_SHOWN_SECONDS / 2, middle + MIN_SHOWN_SECONDS / 2
        self.range.show(low, high)

    def redraw(self, force: bool = False) -> bool:
        """Push the buffer into the curves if it changed; returns whether anything was drawn."""
        if self.paused and not force:
            self._say_score()  # the traffic's state is about now, paused or not
            return False
        service = self.service
        buf = self.state.live.buffers.get(service)
        self.range.show_service(service)
        self._update_bands(service)
        self._update_marks(service)
        if buf is None:
            if self._drawn_service != service or self._drawn_version != NOTHING_DRAWN:
                self._clear_plots()
                self._drawn_service = service
                self._drawn_version = NOTHING_DRAWN
            return False
        drawn_threshold = self._shown.threshold if self._shown is not None else None
        if (buf.version == self._drawn_version and service == self._drawn_service and not force
                and self.state.live.thresholds.get(service) == drawn_threshold):  # (a window-length change)
            self._say_score()  # no window arrived: maybe none will (a stop, a silent source)
            return False
        view = buf.view()
        data = with_gaps(view, self.state.live.lengths_at(service, view[:, 0]))
        older = self.range.older_rows(float(data[0, 0]) if len(data) else None)
        if older is not None:  # read from the streams: drawn before the buffered windows
            data = join_older(older, data, self.range.rows.bin_seconds if self.range.rows else 0.0)
        if len(data):
            data = np.column_stack([data[:, :2], shown_values(data[:, 2:])])  # no 0 ms latency without requests
        x = data[:, 0]
        self._drawn_span = (float(x[0]), float(x[-1])) if len(x) else None
        if self._clock_range and len(x) and not self.range.follow:
            self._clock_range = False
            self.reset_zoom()  # the first data: show it, and the windows after it
        elif self.range.show_all:
            self._show_drawn_span()
        for name, curve in self._curves.items():
            values = data[:, 2 + FEATURE_INDEX[name]]
            curve.setData(x, values * 100 if _FEATURE_BY_NAME[name].unit == "%" else values,  # ratios as %
                          connect="finite")  # a gap in time is a gap in the curve
        scores = data[:, 1]
        if np.isfinite(scores).any():
            self.score_curve.setData(x, scores, connect="finite")  # windows without a score are gaps
        else:
            self.score_curve.setData([], [])
        threshold = self.state.live.thresholds.get(service)
        self.threshold_line.setVisible(threshold is not None)
        if threshold is not None:
            self.threshold_line.setValue(threshold)
        # the newest score in the range shown: the newest window's score arrives after the window (the
        # detector scores it once sealed), and "no score" flickered at every window, or stayed while paused
        low, high = self.visible_range()
        scored = np.flatnonzero(np.isfinite(scores) & (x >= low) & (x <= high))
        last, last_start = (float(scores[scored[-1]]), float(x[scored[-1]])) if len(scored) else (math.nan, math.nan)
        older_text = self.range.describe()
        self._shown = _Shown(service, f"{len(buf):,} windows{' ' + older_text if older_text else ''}", threshold,
                             last, last_start)  # fmt: skip
        self._say_score()
        self._drawn_version = buf.version
        self._drawn_service = service
        return True

    def forget(self) -> None:
        """Another server (`MainWindow.forget_server`): drop a range read in flight and what is drawn, paused
        or not (a paused panel redraws nothing, and kept the old server's curves until Resume)."""
        self.range.forget()
        self._clear_plots()
        self._drawn_version = -1

    def _clear_plots(self) -> None:
        """No windows for the service shown (none yet, or another server): nothing of what was drawn
        stays, neither curves nor the threshold nor the score title's "now 39, threshold 70"."""
        for curve in [*self._curves.values(), self.score_curve]:
            curve.setData([], [])
        self._drawn_span = None
        self._shown = None
        self.threshold_line.setVisible(False)
        self.info_label.setText("no data yet")
        if self.score_plot.titleLabel.text != SCORE_TITLE:
            compact_title(self.score_plot, SCORE_TITLE, **TITLE_STYLE)

    def _say_score(self) -> None:
        """The score plot's title and the info line: the newest score in view with the threshold ("now 39,
        threshold 70") while the traffic is live; else what became of the traffic ("demo traffic stopped at
        …", "no recent windows (newest …)", "no traffic since …", `app.model.traffic`), and the newest
        score only if its window came after that. Run at every redraw and on the panel's clock: windows
        that stop arriving redraw nothing."""
        shown = self._shown
        if shown is None:
            return
        buf = self.state.live.buffers.get(shown.service)
        last_row = buf.last() if buf is not None else None
        note = self.state.live.traffic.note(shown.service, None if last_row is None else float(last_row[0]),
                                            time.time(), self.state.incidents.window_seconds)  # fmt: skip
        current = math.isfinite(shown.last) and (note is None or (note.since is not None
                                                                  and shown.last_start >= note.since))  # fmt: skip
        title, line = [SCORE_TITLE], [shown.head]
        if shown.threshold is None:
            title.append("learning (no model in use)")  # none yet, or one of another length or schema
            line.append("learning (no model in use)")
        if note is not None:
            title.append(note.words)
            line.append(note.words)
        if shown.threshold is not None:
            if current:
                title.append(f"now {score_text(shown.last)}, threshold {shown.threshold:.0f}")
                line.append(f"score {score_text(shown.last)} / threshold {shown.threshold:.0f}")
            else:
                line.append(f"threshold {shown.threshold:.0f}" if note is not None else "no score")
        words = " · ".join(title)
        if self.score_plot.titleLabel.text != words:
            compact_title(self.score_plot, words, **TITLE_STYLE)
        if self.info_label.text() != (text := " · ".join(line)):
            self.info_label.setText(text)

    def changeEvent(self, event: QtCore.QEvent) -> None:
        if event.type() == QtCore.QEvent.Type.PaletteChange and self._built:  # the system switched light ↔ dark
            self._rebuild_plots()  # (colours, axes, titles, marks: all from the palette)
            self.range.restyle()
        super().changeEvent(event)

    def _range_changed(self) -> None:
        if self.paused and self.range.follow:  # Follow live or a preset pressed while paused: live again
            self._resume_following = False
            self.set_paused(False)
        self._drawn_version = -1
        self.redraw()

    def stop(self) -> None:
        """Stop redrawing and reading (the window closes)."""
        self.timer.stop()
        self.range.stop()
        if self._csv_task is not None and not self._csv_task.done():
            self._csv_task.cancel()

    def _update_bands(self, service: str) -> None:
        bands = self.state.incidents.bands(service)
        key = (service, tuple(bands))
        if key == self._bands_key:
            return
        self._bands_key = key
        for item in self._bands:
            self.score_plot.removeItem(item)
        self._bands = []
        for start, end, severity in bands[-50:]:
            brush = pg.mkBrush(SEVERITY_BRUSH.get(severity, SEVERITY_BRUSH["info"]))
            region = pg.LinearRegionItem(values=(start, end + 1), movable=False, brush=brush)
            region.setZValue(-10)
            self.score_plot.addItem(region)
            self._bands.append(region)

    def _update_marks(self, service: str) -> None:
        """Dotted lines where a model version took over scoring and where the window length changed."""
        marks = [(start, f"model v{version}") for start, version in self.state.live.activations.get(service, [])]
        marks += [(start, f"window {old} s → {new} s")
                  for start, old, new in self.state.live.length_changes(service)]  # fmt: skip
        key = (service, tuple(marks))
        if key == self._marks_key:
            return
        self._marks_key = key
        for item in self._marks:
            self.score_plot.removeItem(item)
        self._marks = []
        mark = self.colours.mark
        pen = pg.mkPen(mark, style=QtCore.Qt.PenStyle.DotLine)
        for start, text in marks:
            line = pg.InfiniteLine(pos=start, angle=90, movable=False, pen=pen, label=text,
                                   labelOpts={"position": 0.75, "color": mark,
                                              "anchors": [(1, 0.5), (1, 0.5)]})  # left of its line, at any row
            self.score_plot.addItem(line)
            self._marks.append(line)
        self._lay_out_marks()

    def _lay_out_marks(self) -> None:
        """Labels of marks closer than their width go on the next row down, and where no row is free
        they are left out (the dotted line stays): "model v1" and "model v2" a minute apart printed over
        each other as "modelmodel v2". Run whenever the x range or the plot's size changes."""
        if not self._marks:
            return
        view = self.score_plot.getViewBox()
        view.childTransform()  # (brings the view's transform up to date: it is otherwise set at its next paint)
        height = view.sceneBoundingRect().height()
        text = max(float(self._marks[0].label.boundingRect().height()), 1.0)
        rows = max(1, min(MARK_ROWS, int(height // (text * MARK_ROW_SPACING))))
        # each row's height as a fraction of the plot's (0 bottom, 1 top), the first a text height's half
        # below the top; one row alone where the plot is shorter than a label
        heights = [max(0.0, 1 - (text * MARK_ROW_SPACING * (i + 0.5)) / height) if height > text else 0.5
                   for i in range(rows)]  # fmt: skip
        row_ends = [-math.inf] * rows  # scene x (pixels) where each row's last label ends
        for line in sorted(self._marks, key=lambda item: item.value()):
            right = view.mapViewToScene(QtCore.QPointF(float(line.value()), 0.0)).x()  # the label ends at its line
            left = right - float(line.label.boundingRect().width())
            free = next((i for i in range(rows) if row_ends[i] + MARK_GAP_PX <= left), None)
            line.label.setVisible(free is not None)
            if free is not None:
                row_ends[free] = right
                line.label.setPosition(heights[free])

    def _label_rect(self, line: pg.InfiniteLine) -> QtCore.QRectF:
        """A mark's label in the plot widget's pixels (the label ignores the plot's scale, so its
        `sceneBoundingRect` is not where it is drawn)."""
        label = line.label
        return label.deviceTransform(self.graphics.viewportTransform()).mapRect(label.boundingRect())

    @property
    def band_count(self) -> int:
        return len(self._bands)

    @property
    def mark_labels(self) -> list[QtCore.QRectF]:
        """Where the "model vN" labels shown are drawn (the plot widget's pixels)."""
        return [self._label_rect(line) for line in self._marks if line.label.isVisible()]

    @property
    def activation_marks(self) -> list[tuple[float, str]]:
        """(x, label) of the model activation lines on the score plot."""
        return [mark for mark in self.marks if mark[1].startswith("model v")]

    @property
    def marks(self) -> list[tuple[float, str]]:
        """(x, label) of every line on the score plot: model activations, window-length changes."""
        return [(float(line.value()), line.label.format) for line in self._marks]

    # --- export (app/export.py writes the files) ------------------------------------------------
    def visible_range(self) -> tuple[float, float]:
        """The x range the plots show (what an export covers)."""
        low, high = self.score_plot.getViewBox().viewRange()[0]
        return float(low), float(high)

    def _export_rows(self, older: np.ndarray | None = None) -> np.ndarray:
        """The windows in the visible range: the buffered ones, after the rows read from the streams
        (`older`, else those the range read when they are windows, not time bins)."""
        low, high = self.visible_range()
        buf = self.state.live.buffers.get(self.service)
        rows = buf.view() if buf is not None else np.empty((0, 2 + len(FEATURES)))
        read = self.range.rows
        if older is None and read is not None and not read.reduced:
            older = self.range.older_rows(float(rows[0, 0]) if len(rows) else None)
        if older is not None and len(older):
            rows = np.vstack([older[older[:, 0] < rows[0, 0]] if len(rows) else older, rows])
        rows = rows[(rows[:, 0] >= low) & (rows[:, 0] <= high)]
        return rows[np.isfinite(rows[:, 2:]).any(axis=1)]  # (a NaN row marks a gap: no window)

    def _shown_span(self) -> tuple[float, float] | None:
        """First and last time drawn in the visible range (rows read in time bins included)."""
        rows = self._export_rows()
        low, high = self.visible_range()
        older = self.range.older_rows(float(rows[0, 0]) if len(rows) else None)
        times = rows[:, 0]
        if older is not None:
            drawn = older[np.isfinite(older[:, 2:]).any(axis=1), 0]
            if len(drawn) and drawn.min() < low <= drawn.max():
                # a time bin reaches into the view from before it: its windows from `low` on are shown
                # (and exported), the first of them at the first window start in view
                window_s = self.state.incidents.window_seconds
                drawn = np.r_[math.ceil(low / window_s) * window_s, drawn]
            times = np.r_[drawn, times]
            times = times[(times >= low) & (times <= high)]
        return (float(times.min()), float(times.max())) if len(times) else None

    async def _windows_for_export(self) -> np.ndarray:
        """The visible range's windows, reading from the streams those the plots show only in time bins."""
        read = self.range.rows
        buf = self.state.live.buffers.get(self.service)
        first = buf.first_key() if buf is not None else None
        low, high = self.visible_range()
        loader = self.range.loader
        if loader is None or read is None or not read.reduced or read.service != self.service or (
                first is not None and low >= first):  # fmt: skip
            return self._export_rows()
        found = await loader.windows(self.service, low, high if first is None else min(high, first))
        return self._export_rows(found.rows)

    def _ask_export(self, kind: str) -> None:
        start = export.documents_dir() / f"{export.file_stem(self.service, self._shown_span())}.{kind}"
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, f"Export {kind.upper()}", str(start),
                                                        f"{kind.upper()} (*.{kind})")  # fmt: skip
        if not path:
            return
        if kind == "png":
            self._export_or_say(self.export_png, Path(path))
        else:
            self._csv_task = asyncio.ensure_future(self._export_csv_read(Path(path)))

    async def _export_csv_read(self, path: Path) -> None:
        service = self.service
        self.state.say(f"exporting {service}: reading its windows …")
        try:
            rows = await self._windows_for_export()
        except Exception as err:  # a failed read writes nothing and says why
            self.state.say(f"export failed: {err}")
            return
        if self.service != service:  # the rows would mix two services' windows
            self.state.say(f"export of {service} not written: another service was shown while its windows "
                           "were read")
            return
        self._export_or_say(self.export_csv, path, rows)

    def _export_or_say(self, write: Callable[..., Path], *args: object) -> None:
        try:
            write(*args)
        except Exception as err:  # an export that fails says why, whatever it was (it runs in a task)
            self.state.say(f"export failed: {err}")

    def export_png(self, path: Path) -> Path:
        """Save the plots as they are shown, headed by service and the time range shown."""
        self.redraw(force=True)
        heading = export.title(self.service, self._shown_span())
        export.write_png(path, self.graphics, heading)
        self.state.say(f"exported PNG of {heading}: {path}")
        return path

    def export_csv(self, path: Path, rows: np.ndarray | None = None) -> Path:
        """Save the windows of the visible range (time, score, every feature); `rows` when read already."""
        data = self._export_rows() if rows is None else rows
        written = export.write_csv(path, data)
        self.state.say(f"exported {written:,} windows of {export.title(self.service, export.time_range(data))}: {path}")
        return path
