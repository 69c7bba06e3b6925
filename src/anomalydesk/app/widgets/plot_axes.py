"""A y axis whose labels never crowd: as many major ticks as a short plot has room for.

pyqtgraph always labels its top tick level, however short the axis: the score plot of a window at
1280×800 is about 60 px tall and read "80 60 40 20" printed over one another. `SparseAxis` widens
the major spacing along 1-2-5 steps until every label has two text heights of room; the finer levels
stay as ticks (and grid lines) without text.
"""

from __future__ import annotations

import math

import pyqtgraph as pg
from PySide6 import QtGui

ROOM_PER_LABEL = 1.6  # text heights of axis per labelled tick
TITLE_HEIGHT = 17  # px of a plot's title row


def _next_nice(step: float) -> float:
    """The next step of the 1, 2, 5, 10, 20, 50 … series above `step`."""
    exponent = math.floor(math.log10(step))
    mantissa = step / 10**exponent
    for nice in (2.0, 5.0, 10.0):
        if mantissa < nice * 0.999:
            return nice * 10**exponent
    return 20.0 * 10**exponent


class SparseAxis(pg.AxisItem):
    """An AxisItem (left or right) that labels only as many ticks as fit without overlapping."""

    def __init__(self, orientation: str = "left", **kwargs: object) -> None:
        super().__init__(orientation, **kwargs)
        self.setStyle(maxTextLevel=0)  # text on the major level only: the finer ones are ticks and grid

    def text_height(self) -> float:
        font = self.style.get("tickFont") or QtGui.QFont()
        return float(QtGui.QFontMetricsF(font).height())

    def labels_that_fit(self, size: float) -> int:
        """Labelled ticks an axis of `size` pixels has room for (at least one)."""
        return max(1, int(size // (ROOM_PER_LABEL * self.text_height())))

    def tickSpacing(self, minVal: float, maxVal: float, size: float) -> list[tuple[float, float]]:
        levels = super().tickSpacing(minVal, maxVal, size)
        span = maxVal - minVal
        if not levels or not (span > 0 and math.isfinite(span) and size > 0) or self._tickSpacing is not None:
            return levels
        low, high = self._labelled_span(minVal, maxVal, size)

        def labelled(step: float) -> int:
            return max(0, math.floor(high / step) - math.ceil(low / step) + 1)

        def crowded(step: float) -> bool:  # two labels closer than the room one needs
            return labelled(step) > 1 and step / span * size < ROOM_PER_LABEL * self.text_height()

        major = levels[0][0]
        fit = self.labels_that_fit(size)
        while (labelled(major) > fit or crowded(major)) and labelled(_next_nice(major)) >= 1:
            major = _next_nice(major)
        mantissa = round(major / 10 ** math.floor(math.log10(major)))
        return [(major, 0.0), (major / 2 if mantissa == 2 else major / 5, 0.0)]

    def _labelled_span(self, minVal: float, maxVal: float, size: float) -> tuple[float, float]:
        """The values a label may sit at: half a text height in from either end (a label there is cut)."""
        margin = self.text_height() / 2 / size * (maxVal - minVal)
        return minVal + margin, maxVal - margin

    def tickValues(self, minVal: float, maxVal: float, size: float) -> list[tuple[float, list[float]]]:
        """pyqtgraph's ticks, with the labelled level's ticks outside `_labelled_span` moved to the next
        level (a tick and grid line, no text): pyqtgraph still printed such a label when its text fitted
        the axis, and it overlapped the next one ("0.2" over "0.1", "260" over "240", 28 px axes)."""
        levels = super().tickValues(minVal, maxVal, size)
        span = maxVal - minVal
        if len(levels) < 2 or not (span > 0 and math.isfinite(span) and size > 0) or self._tickSpacing is not None:
            return levels
        low, high = self._labelled_span(minVal, maxVal, size)
        (major, values), (minor, minor_values) = levels[0], levels[1]
        kept = [v for v in values if low <= v <= high]
        moved = [v for v in values if not low <= v <= high]
        return [(major, kept), (minor, sorted([*minor_values, *moved])), *levels[2:]]


def compact_title(plot: pg.PlotItem, text: str, height: int = TITLE_HEIGHT, **style: object) -> None:
    """`plot.setTitle` in a row `height` px tall (pyqtgraph's is 30 px: four short plots lost 120 px)."""
    plot.setTitle(text, **style)
    plot.titleLabel.setMaximumHeight(height)
    plot.layout.setRowFixedHeight(0, height)
