"""Demo panel: start/stop demo traffic, its rate and services, inject a fault now, live events/s."""

from __future__ import annotations

from typing import Any

from PySide6 import QtWidgets
from qasync import asyncSlot

from anomalydesk.app.model.settings import BACKFILL_SECONDS, FAULT_KINDS, AppSettings
from anomalydesk.app.model.state import AppState
from anomalydesk.app.services.core_client import JobCancelled
from anomalydesk.app.widgets.message_label import wrapping

DEMO_SERVICES = ("gateway", "users", "orders", "payments", "inventory")


class DemoPanel(QtWidgets.QWidget):
    """Controls for `ingest.demo.DemoTraffic`, reflecting `state.demo`."""

    def __init__(self, state: AppState, actions: Any, settings: AppSettings,
                 parent: QtWidgets.QWidget | None = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.state = state
        self.actions = actions
        self.settings = settings
        self.start_button = QtWidgets.QPushButton("Start demo traffic")
        self.start_button.clicked.connect(self.toggle)
        self.rate = QtWidgets.QSpinBox(minimum=1, maximum=200_000, singleStep=100, value=settings.demo_rate,
                                       suffix=" events/s")  # fmt: skip
        self.rate.editingFinished.connect(self._rate_changed)
        self.services = QtWidgets.QSpinBox(minimum=1, maximum=200, value=settings.demo_services)
        self.eps_label = QtWidgets.QLabel("stopped")
        form = QtWidgets.QFormLayout()
        form.addRow("Rate", self.rate)
        form.addRow("Services", self.services)
        form.addRow("Live", self.eps_label)

        self.fault_service = QtWidgets.QComboBox()
        self.fault_service.addItems(DEMO_SERVICES)
        self.fault_service.setCurrentText("payments")
        self.fault_seconds = QtWidgets.QSpinBox(minimum=5, maximum=3600, value=60, suffix=" s")
        faults = QtWidgets.QGroupBox("Inject a fault now")
        fl = QtWidgets.QGridLayout(faults)
        fl.addWidget(QtWidgets.QLabel("Service"), 0, 0)
        fl.addWidget(self.fault_service, 0, 1)
        fl.addWidget(QtWidgets.QLabel("For"), 0, 2)
        fl.addWidget(self.fault_seconds, 0, 3)
        self.fault_buttons: dict[str, QtWidgets.QPushButton] = {}
        for i, kind in enumerate(FAULT_KINDS):
            button = QtWidgets.QPushButton(kind)
            button.clicked.connect(lambda _=False, k=kind: self.inject(k))
            fl.addWidget(button, 1 + i // 3, i % 3)
            self.fault_buttons[kind] = button
        self.fault_buttons["shift"].setToolTip("a simulated deploy: response times ×1.5 from now until the demo "
                                               "stops (a level shift: the detector asks whether it is the new normal)")
        self.faults_label = wrapping(QtWidgets.QLabel(""))
        fl.addWidget(self.faults_label, 2 + (len(FAULT_KINDS) - 1) // 3, 0, 1, 4)  # below the last row of buttons

        self.backfill_button = QtWidgets.QPushButton("Backfill a day of history (simulated time)")
        self.backfill_button.clicked.connect(self.backfill)
        self.message = wrapping(QtWidgets.QLabel(""))

        layout = QtWidgets.QVBoxLayout(self)
        layout.addWidget(self.start_button)
        layout.addLayout(form)
        layout.addWidget(faults)
        layout.addWidget(self.backfill_button)
        layout.addWidget(self.message)
        layout.addStretch(1)
        state.demo.changed.connect(self.refresh)
        state.services_changed.connect(self._services_changed)
        self.refresh()

    def _services_changed(self) -> None:
        current = self.fault_service.currentText()
        names = sorted(set(DEMO_SERVICES) | set(self.state.services) - {"business"})
        self.fault_service.clear()
        self.fault_service.addItems(names)
        self.fault_service.setCurrentText(current)

    def refresh(self) -> None:
        """Show `state.demo`."""
        demo = self.state.demo
        self.start_button.setText("Stop demo traffic" if demo.running else "Start demo traffic")
        self.eps_label.setText(f"{demo.events_per_second:,.0f} events/s" if demo.running else "stopped")
        for button in self.fault_buttons.values():
            button.setEnabled(demo.running)
        self.faults_label.setText("active: " + ", ".join(demo.faults) if demo.faults else "")
        self.backfill_button.setEnabled(demo.backfill != "running")
        parts = [p for p in (demo.error, f"backfill {demo.backfill}" if demo.backfill else "") if p]
        self.message.setText(" · ".join(parts))

    @asyncSlot()
    async def toggle(self) -> None:
        """Start or stop demo traffic."""
        try:
            if self.state.demo.running:
                await self.actions.stop_demo()
            else:
                self.settings.demo_rate, self.settings.demo_services = self.rate.value(), self.services.value()
                await self.actions.start_demo(self.rate.value(), self.services.value())
        except Exception as err:
            self.state.demo.update(error=f"demo: {err}")

    @asyncSlot()
    async def _rate_changed(self) -> None:
        self.settings.demo_rate = self.rate.value()
        if self.state.demo.running:
            await self.actions.set_demo_rate(self.rate.value())

    @asyncSlot()
    async def inject(self, kind: str) -> None:
        """Inject `kind` now on the chosen service for the chosen seconds."""
        try:
            await self.actions.inject(kind, float(self.fault_seconds.value()), self.fault_service.currentText())
        except Exception as err:
            self.state.demo.update(error=f"inject: {err}")
        else:
            self.state.demo.update(error="")

    @asyncSlot()
    async def backfill(self) -> None:
        """Generate a day of history in simulated time so training can start at once."""
        try:
            await self.actions.backfill(BACKFILL_SECONDS, self.services.value())
        except JobCancelled:  # the app quit or switched servers: the backfill state says so
            pass
        except Exception as err:
            self.state.demo.update(error=f"backfill: {err}")
