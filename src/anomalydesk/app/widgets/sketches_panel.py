"""Sketches panel: sizes (window, CMS, filter, Top-K, retention), per-service memory, and an inspector.

A change that recreates sketches is not applied at once: the panel shows what would be reset (the
`setup` refusal's own words) and asks for an explicit "Recreate" — inline, not in a modal dialog.
"""

from __future__ import annotations

import re
from typing import Any

from PySide6 import QtCore, QtWidgets
from qasync import asyncSlot

from anomalydesk.app.model.state import AppState
from anomalydesk.app.services.core_client import SketchConflict
from anomalydesk.app.widgets.message_label import wrapping

SIZE_COLUMNS = ("service", "CMS width × depth", "filter items / capacity", "Top-K k", "memory")
# per query: what to type (the placeholder), and the result table's columns
QUERIES = {
    "endpoint": ("endpoints, comma-separated: GET:/users/{id}, POST:/orders", ("endpoint", "count (estimate)")),
    "status": ("status codes, comma-separated: 200, 404, 500", ("status", "count (estimate)")),
    "interaction": ("endpoints, comma-separated: GET:/users/{id}, POST:/orders", ("endpoint", "seen before")),
    "topk": ("nothing to type: lists the heaviest endpoints", ("#", "endpoint", "count (estimate)")),
}  # fmt: skip


def result_rows(kind: str, result: Any) -> list[tuple[str, ...]]:
    """An inspector answer as table rows (the text of each cell)."""
    if kind == "topk":
        return [(str(rank), str(name), f"{int(count):,}") for rank, (name, count) in enumerate(result, 1)]
    if kind == "interaction":
        return [(str(name), "yes" if seen else "no") for name, seen in result.items()]
    return [(str(name), f"{int(count):,}") for name, count in result.items()]


# the stored settings' names as the form labels them ("window_seconds 5 → 10" read like a config file)
FIELD_WORDS = {"window_seconds": "window (s)", "cms_width": "CMS width", "cms_depth": "CMS depth",
               "cms_error": "CMS error", "cms_prob": "CMS probability", "filter_capacity": "filter capacity",
               "filter_error": "filter error", "topk": "Top-K k", "retention": "retention (windows)"}  # fmt: skip
_FIELD = re.compile(r"\b(" + "|".join(FIELD_WORDS) + r")\b")


def in_words(changes: str) -> str:
    """`setup`'s "window_seconds 5 → 10, topk 10 → 20" in the form's words: "window (s) 5 → 10, Top-K k 10 → 20"."""
    return _FIELD.sub(lambda m: FIELD_WORDS[m.group(1)], changes)


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
        form = QtWidgets.QGridLayout()  # two label/field pairs a row: the inspector stays in view below
        rows = ((("Window", self.window), ("", self.by_error)),
                (("CMS width", self.cms_width), ("depth", self.cms_depth)),
                (("CMS error", self.cms_error), ("probability", self.cms_prob)),
                (("Filter capacity", self.capacity), ("Top-K k", self.topk)),
                (("Retention", self.retention),))  # fmt: skip
        for row, pairs in enumerate(rows):
            for i, (label, w) in enumerate(pairs):
                if label:
                    form.addWidget(QtWidgets.QLabel(label), row, 2 * i)
                    form.addWidget(w, row, 2 * i + 1)
                else:
                    form.addWidget(w, row, 2 * i, 1, 2)
        form.setColumnStretch(1, 1)
        form.setColumnStretch(3, 1)
        self.apply_button = QtWidgets.QPushButton("Apply")
        self.apply_button.clicked.connect(lambda: self.apply(False))
        self.confirm = QtWidgets.QFrame()
        self.confirm.setFrameShape(QtWidgets.QFrame.Shape.StyledPanel)
        self.confirm_text = wrapping(QtWidgets.QLabel())
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
        self.sizes = _table(SIZE_COLUMNS)
        self.sizes.setMinimumHeight(self.sizes.horizontalHeader().sizeHint().height()
                                    + 4 * self.sizes.verticalHeader().defaultSectionSize() + 4)  # fmt: skip

        # inspector
        self.q_service = QtWidgets.QComboBox()
        self.q_kind = QtWidgets.QComboBox()
        self.q_kind.addItems(list(QUERIES))
        self.q_items = QtWidgets.QLineEdit()
        self.q_kind.currentTextChanged.connect(self._kind_changed)
        self.q_button = QtWidgets.QPushButton("Query")
        self.q_button.clicked.connect(self.run_query)
        self.q_items.returnPressed.connect(self.run_query)
        self.q_table = _table(QUERIES["endpoint"][1])
        self.q_table.setMinimumHeight(self.q_table.horizontalHeader().sizeHint().height()
                                      + 5 * self.q_table.verticalHeader().defaultSectionSize() + 4)  # fmt: skip
        self.q_error = wrapping(QtWidgets.QLabel())
        self.q_error.setStyleSheet("color: #c0392b")
        self.answered = 0  # queries answered or refused so far (tests wait on it)
        self._shown: dict[str, int] | None = None  # the stored settings the form last showed
        inspector = QtWidgets.QGroupBox("Inspector")
        il = QtWidgets.QGridLayout(inspector)
        il.addWidget(self.q_service, 0, 0)
        il.addWidget(self.q_kind, 0, 1)
        il.addWidget(self.q_items, 0, 2)
        il.addWidget(self.q_button, 0, 3)
        il.addWidget(self.q_error, 1, 0, 1, 4)
        il.addWidget(self.q_table, 2, 0, 1, 4)
        il.setColumnStretch(2, 1)
        self.message = wrapping(QtWidgets.QLabel())

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
        self._kind_changed(self.q_kind.currentText())

    def _kind_changed(self, kind: str) -> None:
        placeholder, columns = QUERIES.get(kind, QUERIES["endpoint"])
        self.q_items.setPlaceholderText(placeholder)
        self.q_items.setEnabled(kind != "topk")
        self.q_table.clear()
        self.q_table.setRowCount(0)
        self.q_table.setColumnCount(len(columns))
        self.q_table.setHorizontalHeaderLabels(list(columns))
        self.q_error.setText("")

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
        # a new service has new sketches: on a first run the start-up read found none (the services
        # arrive with the first events, after the app connected), and no reconnect reads them again
        if self.state.connection.status == "connected":
            self.reload()

    def _form(self) -> dict[str, int]:
        """The settings form's values, keyed as the stored settings are."""
        return {"window_seconds": self.window.value(), "cms_width": self.cms_width.value(),
                "cms_depth": self.cms_depth.value(), "filter_capacity": self.capacity.value(),
                "topk": self.topk.value(), "retention": self.retention.value()}  # fmt: skip

    def refresh(self) -> None:
        """Show `state.sketches` (settings + sizes). The form keeps what the operator is editing (a value
        changed since it was shown, or a change waiting for "Recreate"): a re-read when a new service
        appears must not undo it."""
        data = self.state.sketches
        s = data.get("settings", {})
        if s:
            incoming = {name: int(s[name]) for name in self._form()}
            edited = self._shown is not None and self._form() not in (self._shown, incoming)
            if not edited and not self.confirm.isVisible():
                self.window.setValue(incoming["window_seconds"])
                self.cms_width.setValue(incoming["cms_width"])
                self.cms_depth.setValue(incoming["cms_depth"])
                self.capacity.setValue(incoming["filter_capacity"])
                self.topk.setValue(incoming["topk"])
                self.retention.setValue(incoming["retention"])
                self._shown = incoming
        services = data.get("services", {})
        self.sizes.setRowCount(len(services))
        for row, (name, info) in enumerate(sorted(services.items())):
            if "error" in info:
                cells = [name, info["error"], "", "", ""]
            else:
                f = info["filter"]
                cells = [name, f"{info['cms']['width']:,} × {info['cms']['depth']}",
                         f"{f['items']:,}/{f['capacity']:,}", str(info["topk"]["k"]),
                         f"{info['memory_total'] / 1024:,.0f} KiB"]  # fmt: skip
            for col, text in enumerate(cells):
                self.sizes.setItem(row, col, QtWidgets.QTableWidgetItem(text))
        self.sizes.resizeColumnsToContents()
        backend = {"native": "native (RedisBloom's own structures)", "functions": "the gears library's own (Lua)"}
        self.message.setText(f"sketches: {backend.get(data.get('backend', ''), data.get('backend', '?'))}"
                             if data else "")  # fmt: skip

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
        except SketchConflict as err:  # in the GUI's words: the buttons below, not a command-line flag
            self.confirm_text.setText(f"<b>Changing {in_words(err.changes)} recreates sketches.</b><br>"
                                      "Recreating resets: " + "; ".join(err.resets))  # fmt: skip
            self.confirm.setVisible(True)
            return
        except Exception as err:
            self.message.setText(f"not applied: {err}")
            return
        self.confirm.setVisible(False)
        reset = result.get("reset") or []
        words = "sketch settings applied" + (": reset " + "; ".join(reset) if reset else " (nothing reset)")
        self.message.setText(words)
        self.state.say(words)

    def _cancel_confirm(self) -> None:
        self.confirm.setVisible(False)
        self.message.setText("kept the current sketches")
        self._shown = None  # the form shows the stored settings again
        self.reload()

    @asyncSlot()
    async def run_query(self) -> None:
        """Run the inspector query."""
        kind = self.q_kind.currentText()
        items = [x.strip() for x in self.q_items.text().split(",") if x.strip()] if kind != "topk" else []
        self._kind_changed(kind)
        if kind != "topk" and not items:
            self.q_error.setText(f"type {QUERIES[kind][0].split(',')[0]} to look up")
            self.answered += 1
            return
        try:
            result = await self.actions.query(kind, self.q_service.currentText(), items)
        except Exception as err:
            self.q_error.setText(str(err))
            self.answered += 1
            return
        rows = result_rows(kind, result)
        self.q_table.setRowCount(len(rows))
        for row, cells in enumerate(rows):
            for col, text in enumerate(cells):
                item = QtWidgets.QTableWidgetItem(text)
                if text.replace(",", "").isdigit():  # counts and ranks line up on the right
                    item.setTextAlignment(QtCore.Qt.AlignmentFlag.AlignRight | QtCore.Qt.AlignmentFlag.AlignVCenter)
                self.q_table.setItem(row, col, item)
        self.q_table.resizeColumnsToContents()
        if not rows:
            self.q_error.setText("nothing recorded yet for this service")
        self.answered += 1

    def table_rows(self) -> list[tuple[str, ...]]:
        """The inspector's result table, cell texts by row."""
        return [tuple(self.q_table.item(r, c).text() for c in range(self.q_table.columnCount()))
                for r in range(self.q_table.rowCount())]  # fmt: skip


def _table(columns: tuple[str, ...]) -> QtWidgets.QTableWidget:
    table = QtWidgets.QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    table.verticalHeader().setVisible(False)
    table.horizontalHeader().setStretchLastSection(True)
    table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setWordWrap(False)
    return table
