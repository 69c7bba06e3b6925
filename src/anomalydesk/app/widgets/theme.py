"""The system's light or dark colour scheme, and the plots' colours from the palette in force.

Qt reports the desktop's colour scheme (`QStyleHints.colorScheme`, and `colorSchemeChanged` when the
operator switches). Where the platform theme already gives a dark palette for a dark scheme (Windows,
macOS, GNOME and KDE platform themes) nothing is changed; where it does not (a plain X11 or Wayland
session, Fusion's default light palette), a dark Fusion palette is set. The widgets follow the
palette by themselves; the table's colour roles are computed from it (`incidents_panel`); pyqtgraph
draws with its own colours, so every plot is restyled here from the palette on each palette change.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

GRAPHICS_CONTRAST = 3.0  # WCAG 2.x non-text contrast: curves and marks against the plot
Role = QtGui.QPalette.ColorRole
Group = QtGui.QPalette.ColorGroup


def is_dark(palette: QtGui.QPalette | None = None) -> bool:
    """Whether the palette (the application's by default) has light text on a dark window."""
    palette = palette or QtWidgets.QApplication.palette()
    return palette.color(Role.Window).lightness() < palette.color(Role.WindowText).lightness()


def dark_palette() -> QtGui.QPalette:
    """A dark palette for the Fusion style (every role set, disabled text dimmed)."""
    p = QtGui.QPalette()
    colours = {Role.Window: (45, 45, 48), Role.WindowText: (230, 230, 230), Role.Base: (30, 30, 32),
               Role.AlternateBase: (40, 40, 44), Role.ToolTipBase: (60, 60, 64), Role.ToolTipText: (235, 235, 235),
               Role.PlaceholderText: (150, 150, 150), Role.Text: (230, 230, 230), Role.Button: (55, 55, 60),
               Role.ButtonText: (230, 230, 230), Role.BrightText: (255, 90, 90), Role.Light: (75, 75, 80),
               Role.Midlight: (62, 62, 66), Role.Mid: (40, 40, 44), Role.Dark: (25, 25, 28), Role.Shadow: (0, 0, 0),
               Role.Highlight: (53, 132, 228), Role.HighlightedText: (255, 255, 255), Role.Link: (110, 170, 255),
               Role.LinkVisited: (170, 140, 255)}  # fmt: skip
    for role, rgb in colours.items():
        p.setColor(role, QtGui.QColor(*rgb))
    for role in (Role.WindowText, Role.Text, Role.ButtonText):
        p.setColor(Group.Disabled, role, QtGui.QColor(125, 125, 125))
    return p


def apply_scheme(app: QtWidgets.QApplication, scheme: QtCore.Qt.ColorScheme) -> bool:
    """Make the application's palette match `scheme`; returns whether it changed the palette."""
    if scheme == QtCore.Qt.ColorScheme.Dark and not is_dark(app.palette()):
        if app.style().name().lower() != "fusion":
            app.setStyle("Fusion")  # (native styles may draw with their own light colours)
        app.setPalette(dark_palette())
        return True
    if scheme == QtCore.Qt.ColorScheme.Light and is_dark(app.palette()):
        app.setPalette(app.style().standardPalette())
        return True
    return False


def follow_system(app: QtWidgets.QApplication) -> None:
    """Use the desktop's colour scheme now and whenever the operator switches it."""
    hints = app.styleHints()
    apply_scheme(app, hints.colorScheme())
    hints.colorSchemeChanged.connect(lambda scheme: apply_scheme(app, scheme))


def relative_luminance(colour: QtGui.QColor) -> float:
    """WCAG 2.x relative luminance of an sRGB colour."""
    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * channel(colour.redF()) + 0.7152 * channel(colour.greenF()) + 0.0722 * channel(colour.blueF())


def contrast(a: QtGui.QColor, b: QtGui.QColor) -> float:
    """WCAG contrast ratio of two colours (1 … 21)."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


@dataclass(frozen=True)
class PlotColours:
    """What a plot draws with, taken from a palette."""

    background: QtGui.QColor
    foreground: QtGui.QColor  # axes, tick labels, titles
    curve: QtGui.QColor  # the score curve
    mark: QtGui.QColor  # model activation lines
    dark: bool

    def series(self, index: int, count: int) -> QtGui.QColor:
        """The colour of feature curve `index` of `count`: evenly spaced hues, light on a dark plot and
        deep on a light one, each at least 3:1 against the background (WCAG's figure for graphics)."""
        hue = index / max(count, 3)
        lightness = 0.62 if self.dark else 0.38
        colour = QtGui.QColor.fromHslF(hue, 0.9, lightness)
        while contrast(colour, self.background) < GRAPHICS_CONTRAST and 0.05 < lightness < 0.95:
            lightness += 0.03 if self.dark else -0.03
            colour = QtGui.QColor.fromHslF(hue, 0.9, lightness)
        return colour


def graphic_colour(colour: QtGui.QColor, background: QtGui.QColor) -> QtGui.QColor:
    """`colour`, lightened on a dark background or deepened on a light one until it stands out at 3:1
    (a status dot, a curve): its hue kept, so red still says critical in a dark theme."""
    hue, saturation, lightness, _alpha = colour.getHslF()
    step = 0.03 if background.lightness() < 128 else -0.03
    found = QtGui.QColor(colour)
    while contrast(found, background) < GRAPHICS_CONTRAST and 0.0 < lightness + step < 1.0:
        lightness += step
        found = QtGui.QColor.fromHslF(max(hue, 0.0), saturation, lightness)
    return found


def plot_colours(palette: QtGui.QPalette | None = None) -> PlotColours:
    """The plots' colours for the palette (the application's by default)."""
    palette = palette or QtWidgets.QApplication.palette()
    dark = is_dark(palette)
    mark = QtGui.QColor(120, 200, 255) if dark else QtGui.QColor(20, 100, 190)
    return PlotColours(background=palette.color(Role.Base), foreground=palette.color(Role.WindowText),
                       curve=palette.color(Role.Text), mark=mark, dark=dark)  # fmt: skip


def style_plot(plot: pg.PlotItem, colours: PlotColours) -> None:
    """Axes, tick labels and title of one plot in `colours`."""
    for name in ("left", "bottom", "right", "top"):
        axis = plot.getAxis(name)
        axis.setPen(pg.mkPen(colours.foreground))
        axis.setTextPen(pg.mkPen(colours.foreground))
    title = plot.titleLabel
    if title.text:
        title.setText(title.text, color=colours.foreground)
