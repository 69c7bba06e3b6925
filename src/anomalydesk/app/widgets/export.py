"""Exports of the live panel: a service's windows as CSV, the plots as PNG, named by service and time range.

CSV: `window_start` is the window's start as whole epoch seconds and `window_start_time` the same moment
as ISO 8601 with its UTC offset, so a spreadsheet and a script both read every row's time exactly
(numbers were once written with 6 significant digits: 792 windows collapsed to 3 distinct times).
Values are written with Python's shortest round-trip repr; a window without a score has an empty cell.
Files go to the user's documents folder by default (QStandardPaths), the home folder when there is none,
never the working directory.
"""

from __future__ import annotations

import csv
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PySide6 import QtCore, QtGui, QtWidgets

from anomalydesk.detect.incident_model import local_time
from anomalydesk.fingerprint import FEATURES, shown_values

CSV_COLUMNS = ("window_start", "window_start_time", "score", *(f.name for f in FEATURES))
_TITLE_PADDING = 8


def documents_dir() -> Path:
    """The user's documents folder (QStandardPaths) when it exists, else the home folder.

    QStandardPaths names ~/Documents whether or not it exists, and the save dialog, asked to start in the
    missing folder, opened in the working directory."""
    found = QtCore.QStandardPaths.writableLocation(QtCore.QStandardPaths.StandardLocation.DocumentsLocation)
    return Path(found) if found and Path(found).is_dir() else Path.home()


def time_range(data: np.ndarray) -> tuple[float, float] | None:
    """(first window start, last window start) of live rows [start, score, …]; None when there are none."""
    if len(data) == 0:
        return None
    return float(data[0, 0]), float(data[-1, 0])


def file_stem(service: str, span: tuple[float, float] | None) -> str:
    """`anomalydesk-payments-20260131T2200-20260201T0100` (local times; the service alone without data)."""
    name = f"anomalydesk-{service or 'live'}"
    if span is None:
        return name
    first, last = (datetime.fromtimestamp(t, UTC).astimezone().strftime("%Y%m%dT%H%M") for t in span)
    return f"{name}-{first}-{last}"


def title(service: str, span: tuple[float, float] | None) -> str:
    """`payments — 2026-01-31 22:00:00 UTC to 2026-02-01 01:00:00 UTC` (the PNG's heading)."""
    if span is None:
        return f"{service or 'live'} — no windows yet"
    return f"{service} — {local_time(span[0])} to {local_time(span[1])}"


def _cell(value: float) -> str:
    return "" if not math.isfinite(value) else repr(float(value))


def write_csv(path: Path, data: np.ndarray) -> int:
    """Write live rows [start, score, features…] with a header (`CSV_COLUMNS`); returns the rows written.
    A window without requests has empty cells for its per-request statistics (`fingerprint.shown_values`)."""
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        values = shown_values(data[:, 2:]) if len(data) else data[:, 2:]  # empty: no value without requests
        for row, vector in zip(data, values, strict=True):
            start = math.floor(row[0])
            iso = datetime.fromtimestamp(start, UTC).astimezone().isoformat(timespec="seconds")
            writer.writerow([start, iso, _cell(row[1]), *(_cell(v) for v in vector)])
    return len(data)


def write_png(path: Path, widget: QtWidgets.QWidget, heading: str) -> Path:
    """Save `widget` as shown, under a heading line (service and time range); OSError when not written."""
    shot = widget.grab()
    font = QtGui.QFont(widget.font())
    font.setPointSizeF(font.pointSizeF() * 1.2)
    font.setBold(True)
    line = QtGui.QFontMetrics(font).height() + 2 * _TITLE_PADDING
    image = QtGui.QImage(shot.width(), shot.height() + line, QtGui.QImage.Format.Format_RGB32)
    palette = widget.palette()
    image.fill(palette.color(QtGui.QPalette.ColorRole.Window))
    painter = QtGui.QPainter(image)
    painter.setFont(font)
    painter.setPen(palette.color(QtGui.QPalette.ColorRole.WindowText))
    align = QtCore.Qt.AlignmentFlag.AlignVCenter | QtCore.Qt.AlignmentFlag.AlignLeft
    painter.drawText(QtCore.QRect(_TITLE_PADDING, 0, shot.width() - 2 * _TITLE_PADDING, line), int(align), heading)
    painter.drawPixmap(0, line, shot)
    painter.end()
    writer = QtGui.QImageWriter(str(path))
    writer.setText("Title", heading)  # a PNG text chunk: the heading travels with the file
    if not writer.write(image):
        raise OSError(f"could not write {path}: {writer.errorString()}")
    return path
