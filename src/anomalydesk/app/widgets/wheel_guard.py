"""The mouse wheel over a spin box or a combo box changes it only while it has focus.

A tester scrolled the Demo panel with the wheel and changed its Services from 5 to 9 without noticing
(the pointer passed over the spin box). Unfocused, such a box leaves the wheel to the panel it is in:
the panel scrolls (the event goes to the enclosing scroll area's scroll bar), the value stays. A click
or Tab gives the box focus, and then the wheel changes it as before.
"""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets

_GUARDED = (QtWidgets.QAbstractSpinBox, QtWidgets.QComboBox)


class WheelGuard(QtCore.QObject):
    """An event filter for the boxes under `root` (`guard`): the wheel changes only a focused one."""

    def eventFilter(self, watched: QtCore.QObject, event: QtCore.QEvent) -> bool:
        if event.type() != QtCore.QEvent.Type.Wheel or not isinstance(watched, _GUARDED) or watched.hasFocus():
            return False
        area = _scroll_area(watched)
        if area is not None:  # the panel scrolls, as it would anywhere else in it
            QtWidgets.QApplication.sendEvent(area.verticalScrollBar(), event)
        return True


def _scroll_area(widget: QtWidgets.QWidget) -> QtWidgets.QAbstractScrollArea | None:
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QtWidgets.QAbstractScrollArea):
        parent = parent.parentWidget()
    return parent


def guard(root: QtWidgets.QWidget, owner: QtCore.QObject | None = None) -> WheelGuard:
    """Guard every spin box and combo box under `root` (they take focus by click or Tab, not the wheel)."""
    wheel_guard = WheelGuard(owner or root)
    for box in root.findChildren(QtWidgets.QWidget):
        if isinstance(box, _GUARDED):
            box.setFocusPolicy(QtCore.Qt.FocusPolicy.StrongFocus)
            box.installEventFilter(wheel_guard)
    return wheel_guard
