"""Training panel: train a service (or all) in the background with progress and Cancel; model versions."""

from __future__ import annotations

import datetime as dt
from typing import Any

from PySide6 import QtCore, QtWidgets
from qasync import asyncSlot

from anomalydesk.app.settings import AppSettings
from anomalydesk.app.state import AppState

ALL = "(all services)"
MODEL_COLUMNS = ("version", "created", "windows", "active", "stale", "threshold", "metrics")


class TrainingPanel(QtWidgets.QWidget):
    """Parameters, Train/Cancel with a real progress bar, per-service state and model versions."""

    def __init__(self, state: AppState, actions: Any, settings: AppSettings,
                 parent: QtWidgets.QWidget | None = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.state = state
        self.actions = actions
        self.settings = settings
        self.service = QtWidgets.QComboBox()
        self.service.addItem(ALL)
        self.windows = QtWidgets.QSpinBox(minimum=50, maximum=1_000_000, singleStep=1000, value=settings.train_windows)
        self.trees = QtWidgets.QSpinBox(minimum=10, maximum=2000, singleStep=50, value=settings.train_trees)
        self.false_alarm = QtWidgets.QDoubleSpinBox(minimum=0.0001, maximum=0.2, decimals=4, singleStep=0.001,
                                                    value=settings.train_false_alarm_rate)  # fmt: skip
        form = QtWidgets.QFormLayout()
        form.addRow("Service", self.service)
        form.addRow("Windows", self.windows)
        form.addRow("Trees", self.trees)
        form.addRow("False-alarm target", self.false_alarm)
        self.train_button = QtWidgets.QPushButton("Train")
        self.train_button.clicked.connect(self.train)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.clicked.connect(actions.cancel_training)
        self.progress = QtWidgets.QProgressBar(minimum=0, maximum=100)
        self.message = QtWidgets.QLabel("")
        self.message.setWordWrap(True)
        row = QtWidgets.QHBoxLayout()
        row.addWidget(self.train_button)
        row.addWidget(self.cancel_button)
        row.addWidget(self.progress, 1)

        self.services_table = QtWidgets.QTableWidget(0, 3)
        self.services_table.setHorizontalHeaderLabels(["service", "state", "active model"])
        self.services_table.horizontalHeader().setStretchLastSection(True)
        self.services_table.verticalHeader().setVisible(False)
        self.services_table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.services_table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.services_table.itemSelectionChanged.connect(self._show_versions)
        self.versions_table = QtWidgets.QTableWidget(0, len(MODEL_COLUMNS))
        self.versions_table.setHorizontalHeaderLabels(list(MODEL_COLUMNS))
        self.versions_table.horizontalHeader().setStretchLastSection(True)
        self.versions_table.verticalHeader().setVisible(False)
        self.versions_table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.versions_table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.activate_button = QtWidgets.QPushButton("Activate selected version")
        self.activate_button.clicked.connect(self.activate)
        self.rollback_button = QtWidgets.QPushButton("Roll back")
        self.rollback_button.clicked.connect(self.rollback)
        self.refresh_button = QtWidgets.QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh_models)
        mrow = QtWidgets.QHBoxLayout()
        for w in (self.activate_button, self.rollback_button, self.refresh_button):
            mrow.addWidget(w)

        layout = QtWidgets.QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(row)
        layout.addWidget(self.message)
        layout.addWidget(QtWidgets.QLabel("Per-service state"))
        layout.addWidget(self.services_table, 1)
        layout.addWidget(QtWidgets.QLabel("Model versions of the selected service"))
        layout.addWidget(self.versions_table, 1)
        layout.addLayout(mrow)
        state.training.changed.connect(self.refresh)
        state.training.progressed.connect(self._progressed)
        state.services_changed.connect(self._services_changed)
        self.refresh()

    def _services_changed(self) -> None:
        current = self.service.currentText()
        self.service.clear()
        self.service.addItems([ALL, *self.state.services])
        self.service.setCurrentText(current if current else ALL)
        self.refresh_models()

    def _progressed(self, fraction: float, message: str) -> None:
        self.progress.setValue(round(fraction * 100))
        self.message.setText(message)

    def refresh(self) -> None:
        """Show `state.training`."""
        training = self.state.training
        self.train_button.setEnabled(not training.running)
        self.cancel_button.setEnabled(training.running)
        self.progress.setValue(round(training.progress * 100))
        self.message.setText(training.result if not training.running and training.result else training.message)
        selected = self.selected_service()
        self.services_table.setRowCount(len(training.services))
        for row, (name, info) in enumerate(sorted(training.services.items())):
            active = info.get("active")
            values = (name, info.get("state", ""), f"v{active}" if active else "—")
            for col, value in enumerate(values):
                self.services_table.setItem(row, col, QtWidgets.QTableWidgetItem(str(value)))
            if name == selected:
                self.services_table.selectRow(row)
        self._show_versions()

    def selected_service(self) -> str:
        """The service selected in the per-service table ("" for none)."""
        items = self.services_table.selectedItems()
        return self.services_table.item(items[0].row(), 0).text() if items else ""

    def _show_versions(self) -> None:
        info = self.state.training.services.get(self.selected_service(), {})
        versions = info.get("versions", [])
        self.versions_table.setRowCount(len(versions))
        for row, v in enumerate(versions):
            created = dt.datetime.fromtimestamp(v.get("created", 0)).strftime("%Y-%m-%d %H:%M")
            metrics = ", ".join(f"{k}={v2:.3g}" if isinstance(v2, float) else f"{k}={v2}"
                                for k, v2 in (v.get("metrics") or {}).items())  # fmt: skip
            cells = (v.get("version"), created, v.get("windows"), "yes" if v.get("active") else "",
                     "stale" if v.get("stale") else "", v.get("threshold", ""), metrics)  # fmt: skip
            for col, value in enumerate(cells):
                item = QtWidgets.QTableWidgetItem("" if value is None else str(value))
                item.setData(QtCore.Qt.ItemDataRole.UserRole, v.get("version"))
                self.versions_table.setItem(row, col, item)

    @asyncSlot()
    async def train(self) -> None:
        """Start training with the form's parameters."""
        service = self.service.currentText()
        self.settings.train_windows = self.windows.value()
        self.settings.train_trees = self.trees.value()
        self.settings.train_false_alarm_rate = self.false_alarm.value()
        try:
            await self.actions.train(None if service in ("", ALL) else service, self.windows.value(),
                                     self.trees.value(), self.false_alarm.value())  # fmt: skip
        except Exception as err:
            self.message.setText(f"training failed: {err}")

    @asyncSlot()
    async def refresh_models(self) -> None:
        """Reload per-service model state."""
        try:
            await self.actions.refresh_models()
        except Exception as err:
            self.message.setText(f"models: {err}")

    @asyncSlot()
    async def activate(self) -> None:
        """Activate the selected version."""
        service, items = self.selected_service(), self.versions_table.selectedItems()
        if not service or not items:
            self.message.setText("select a service and a version first")
            return
        try:
            await self.actions.activate(service, int(items[0].data(QtCore.Qt.ItemDataRole.UserRole)))
        except Exception as err:
            self.message.setText(f"activate failed: {err}")

    @asyncSlot()
    async def rollback(self) -> None:
        """Roll the selected service back to its previous model."""
        service = self.selected_service()
        if not service:
            self.message.setText("select a service first")
            return
        try:
            await self.actions.rollback(service)
        except Exception as err:
            self.message.setText(f"rollback failed: {err}")
