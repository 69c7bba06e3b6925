"""Sketches panel: sizes (window, CMS, filter, Top-K, retention), per-service memory, and an inspector.

A change that recreates sketches is not applied at once: the panel shows what would be reset (the
`setup` refusal's own words) and asks for an explicit "Recreate" — inline, not in a modal dialog.
"""

from __future__ import annotations

import json
from typing import Any

from PySide6 import QtWidgets
from qasync import asyncSlot

from anomalydesk.app.state import AppState


class SketchesPanel(QtWidgets.QWidget):
    """Settings form, per-service sizes and the query inspector."""

    def __init__(self, state: AppState, actions: Any, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self.actions = actions
        self.window = QtWidgets.QSpinBox(minimum=1, maximum=3600, suffix=" s")
        self.by_error = QtWidgets.QCheckBox("CMS by error/probability")
        self.cms_width = QtWidgets.QSpinBox(minimum=1, maximum=10_000_000)
        self.cms_depth = QtWidgets.QSpinBox(minimum=1, maximum=64)
        self.cms_error = QtWidgets.QDoubleSpinBox(minimum=1e-6, maximum=0.5, decimals=6, value=0.001)
        self.cms_prob = QtWidgets.QDoubleSpinBox(minimum=1e-6, maximum=0.5, decimals=6, value=0.01)
        self.capacity = QtWidgets.QSpinBox(minimum=10, maximum=100_000_000, singleStep=1000)
        self.topk = QtWidgets.QSpinBox(minimum=1, maximum=1000)
        self.retention = QtWidgets.QSpinBox(minimum=10, maximum=10_000_000, singleStep=1000, suffix=" windows")
        self.by_error.toggled.connect(self._mode_changed)
        form = QtWidgets.QFormLayout()
        rows = (("Window", self.window), ("", self.by_error), ("CMS width", self.cms_width),
                ("CMS depth", self.cms_depth), ("CMS error", self.cms_error), ("CMS probability", self.cms_prob),
                ("Filter capacity", self.capacity), ("Top-K k", self.topk), ("Retention", self.retention))  # fmt: skip
        for label, w in rows:
            form.addRow(label, w)
        self.apply_button = QtWidgets.QPushButton("Apply")
        self.apply_button.clicked.connect(lambda: self.apply(False))
        self.confirm = QtWidgets.QFrame()
        self.confirm.setFrameShape(QtWidgets.QFrame.Shape.StyledPanel)
        self.confirm_text = QtWidgets.QLabel()
        self.confirm_text.setWordWrap(True)
        self.recreate_button = QtWidgets.QPushButton("Recreate (reset what is listed)")
        self.recreate_button.clicked.connect(lambda: self.apply(True))
        self.keep_button = QtWidgets.QPushButton("Keep current sketches")
        self.keep_button.clicked.connect(self._cancel_confirm)
        cl = QtWidgets.QVBoxLayout(self.confirm)
        cl.addWidget(self.confirm_text)
        cb = QtWidgets.QHBoxLayout()
        cb.addWidget(self.recreate_button)
        cb.addWidget(self.keep_button)
        cl.addLayout(cb)
        self.confirm.setVisible(False)
        self.sizes = QtWidgets.QTableWidget(0, 5)
        self.sizes.setHorizontalHeaderLabels(["service", "CMS w×d", "filter items/capacity", "Top-K", "memory"])
        self.sizes.verticalHeader().setVisible(False)
        self.sizes.horizontalHeader().setStretchLastSection(True)

        # inspector
        self.q_service = QtWidgets.QComboBox()
        self.q_kind = QtWidgets.QComboBox()
        self.q_kind.addItems(["endpoint", "status", "interaction", "topk"])
        self.q_items = QtWidgets.QLineEdit(placeholderText="GET:/users/{id}, POST:/orders … or 200, 500")
        self.q_button = QtWidgets.QPushButton("Query")
        self.q_button.clicked.connect(self.run_query)
        self.q_result = QtWidgets.QPlainTextEdit(readOnly=True)
        self.q_result.setMaximumHeight(120)
        inspector = QtWidgets.QGroupBox("Inspector")
        il = QtWidgets.QGridLayout(inspector)
        il.addWidget(self.q_service, 0, 0)
        il.addWidget(self.q_kind, 0, 1)
        il.addWidget(self.q_items, 0, 2)
        il.addWidget(self.q_button, 0, 3)
        il.addWidget(self.q_result, 1, 0, 1, 4)
        self.message = QtWidgets.QLabel()
        self.message.setWordWrap(True)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.apply_button)
        layout.addWidget(self.confirm)
        layout.addWidget(self.message)
        layout.addWidget(self.sizes, 1)
        layout.addWidget(inspector)
        state.sketches_changed.connect(self.refresh)
        state.services_changed.connect(self._services_changed)
        self._mode_changed(False)

    def _mode_changed(self, by_error: bool) -> None:
        for w in (self.cms_width, self.cms_depth):
            w.setEnabled(not by_error)
        for w in (self.cms_error, self.cms_prob):
            w.setEnabled(by_error)

    def _services_changed(self) -> None:
        current = self.q_service.currentText()
        self.q_service.clear()
        self.q_service.addItems(self.state.services)
        self.q_service.setCurrentText(current)

    def refresh(self) -> None:
        """Show `state.sketches` (settings + sizes)."""
        data = self.state.sketches
        s = data.get("settings", {})
        if s:
            self.window.setValue(int(s["window_seconds"]))
            self.cms_width.setValue(int(s["cms_width"]))
            self.cms_depth.setValue(int(s["cms_depth"]))
            self.capacity.setValue(int(s["filter_capacity"]))
            self.topk.setValue(int(s["topk"]))
            self.retention.setValue(int(s["retention"]))
        services = data.get("services", {})
        self.sizes.setRowCount(len(services))
        for row, (name, info) in enumerate(sorted(services.items())):
            if "error" in info:
                cells = [name, info["error"], "", "", ""]
            else:
                f = info["filter"]
                cells = [name, f"{info['cms']['width']}×{info['cms']['depth']}", f"{f['items']:,}/{f['capacity']:,}",
                         str(info["topk"]["k"]), f"{info['memory_total'] / 1024:.0f} KiB"]  # fmt: skip
            for col, text in enumerate(cells):
                self.sizes.setItem(row, col, QtWidgets.QTableWidgetItem(text))
        self.message.setText(f"backend: {data.get('backend', '?')}" if data else "")

    def values(self) -> dict[str, Any]:
        """The form as `SketchSettings` fields."""
        values: dict[str, Any] = {"window_seconds": self.window.value(), "filter_capacity": self.capacity.value(),
                                  "topk": self.topk.value(), "retention": self.retention.value()}  # fmt: skip
        if self.by_error.isChecked():
            values.update(cms_error=self.cms_error.value(), cms_prob=self.cms_prob.value())
        else:
            values.update(cms_width=self.cms_width.value(), cms_depth=self.cms_depth.value())
        return values

    @asyncSlot()
    async def reload(self) -> None:
        """Fetch settings and sizes."""
        try:
            await self.actions.sketch_settings()
        except Exception as err:
            self.message.setText(f"sketches: {err}")

    @asyncSlot()
    async def apply(self, force: bool) -> None:
        """Apply the form; a change that recreates sketches first asks (inline) and says what resets."""
        try:
            result = await self.actions.apply_sketch_settings(self.values(), force)
        except Exception as err:
            if not force and "--force" in str(err):
                self.confirm_text.setText(f"<b>This change recreates sketches.</b><br>{err}")
                self.confirm.setVisible(True)
            else:
                self.message.setText(f"not applied: {err}")
            return
        self.confirm.setVisible(False)
        reset = result.get("reset") or []
        self.message.setText("applied" + (": reset " + "; ".join(reset) if reset else " (nothing reset)"))

    def _cancel_confirm(self) -> None:
        self.confirm.setVisible(False)
        self.message.setText("kept the current sketches")
        self.reload()

    @asyncSlot()
    async def run_query(self) -> None:
        """Run the inspector query."""
        items = [x.strip() for x in self.q_items.text().split(",") if x.strip()]
        try:
            result = await self.actions.query(self.q_kind.currentText(), self.q_service.currentText(), items)
        except Exception as err:
            self.q_result.setPlainText(f"error: {err}")
            return
        self.q_result.setPlainText(json.dumps(result, indent=1, default=str))
