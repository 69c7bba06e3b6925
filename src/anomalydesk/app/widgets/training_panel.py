"""Training panel: train a service (or all) in the background with progress and Cancel; model versions."""

from __future__ import annotations

from typing import Any

from PySide6 import QtCore, QtWidgets
from qasync import asyncSlot

from anomalydesk.app.model import settings as settings_mod
from anomalydesk.app.model.settings import AppSettings
from anomalydesk.app.model.state import READY_TO_TRAIN, AppState
from anomalydesk.app.widgets.message_label import wrapping
from anomalydesk.detect.incident_model import local_time
from anomalydesk.fingerprint import format_ratio

ALL = "(all services)"
MODEL_COLUMNS = ("version", "created", "windows", "active", "stale", "threshold", "training")
# the registry's training metrics (detect.training_run.store_model) in words, in this order
METRIC_LABELS = {
    "training_flag_rate": "flagged in training", "daily_cycle": "daily cycle", "excluded_windows": "excluded",
    "demo_fault_windows": "demo faults left out", "restored_windows": "restored", "gap_windows": "gaps",
    "stretched_windows": "stretched",
    "threshold_raw": "raw threshold", "note": "note",
}  # fmt: skip


def metrics_text(metrics: dict[str, Any]) -> str:
    """A model's training metrics for people: "flagged in training 1.2% · daily cycle yes · excluded 3"."""
    parts = []
    for key, label in METRIC_LABELS.items():
        value = metrics.get(key)
        if value is None or value == "" or (key.endswith("_windows") and not value):
            continue
        if key == "training_flag_rate":
            parts.append(f"{label} {format_ratio(float(value))}")  # 0.04 %, not "0.0 %"
        elif isinstance(value, bool):
            parts.append(f"{label} {'yes' if value else 'no'}")
        elif key.endswith("_windows"):
            parts.append(f"{label} {int(value):,} windows")
        elif isinstance(value, float):
            parts.append(f"{label} {value:.3g}")
        else:
            parts.append(f"{label}: {value}")
    for key, value in metrics.items():  # one a newer release added: shown, in its own words
        if key not in METRIC_LABELS and value not in (None, ""):
            parts.append(f"{key.replace('_', ' ')} {value:.3g}" if isinstance(value, float)
                         else f"{key.replace('_', ' ')} {value}")  # fmt: skip
    return " · ".join(parts)


def state_kinds(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each service's kind of state, without its count: "learning (250 more windows)" → "learning"."""
    return {name: str(info.get("state", "")).split(" (")[0] for name, info in services.items()}


def readiness_text(services: dict[str, dict[str, Any]]) -> str:
    """Which services can be trained now and how many still learn ("" when none of either)."""
    ready = sorted(name for name, info in services.items() if info.get("state") == READY_TO_TRAIN)
    learning = sorted(name for name, info in services.items() if info.get("needed"))
    parts = []
    if ready:
        parts.append(f"{len(ready)} service{'s' if len(ready) > 1 else ''} ready to train: {', '.join(ready)}")
    if learning:
        most = max(int(services[name]["needed"]) for name in learning)
        parts.append(f"{len(learning)} still learning (up to {most:,} more windows)")
    return " · ".join(parts)


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
        self.message = wrapping(QtWidgets.QLabel(""))
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
        self.versions_table.setWordWrap(False)
        self.versions_table.verticalHeader().setVisible(False)
        self.versions_table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        self.versions_table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        for table in (self.services_table, self.versions_table):  # three rows at least: the panel scrolls
            table.setSelectionMode(QtWidgets.QAbstractItemView.SelectionMode.SingleSelection)
            table.setWordWrap(False)
            table.setMinimumHeight(table.horizontalHeader().sizeHint().height()
                                   + 3 * table.verticalHeader().defaultSectionSize() + 4)  # fmt: skip
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
        # "learning (N more windows)" counts down as windows arrive: re-read while a service learns
        self.learning_timer = QtCore.QTimer(self)
        self.learning_timer.setInterval(settings_mod.LEARNING_REFRESH_MS)
        self.learning_timer.timeout.connect(self._refresh_learning)
        self.learning_timer.start()
        self._training_words: str | None = None  # the training state's words last shown
        self._words_kinds: dict[str, str] = {}  # each service's kind of state when they were shown
        self.refresh()

    def stop(self) -> None:
        """Stop re-reading the model states (the app shuts down)."""
        self.learning_timer.stop()

    def _refresh_learning(self) -> None:
        if any(str(v.get("state", "")).startswith("learning") for v in self.state.training.services.values()):
            self.refresh_models()

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
        words = training.result if not training.running and training.result else training.message
        kinds = state_kinds(training.services)
        if words != self._training_words:  # a re-read of the model states keeps an action's message
            self._training_words, self._words_kinds = words, kinds
            self.message.setText(words)
        elif not training.running and words and kinds != self._words_kinds:
            self._words_kinds = kinds  # a service became ready (a backfill) or learning: the words are stale
            now = readiness_text(training.services)
            if now:
                self.message.setText(now)
        names = sorted(training.services)
        selected = self.selected_service()
        if selected not in names:  # nothing chosen yet: the service of the form, else the first one
            form = self.service.currentText()
            selected = form if form in names else (names[0] if names else "")
        self.services_table.blockSignals(True)
        self.services_table.setRowCount(len(names))
        for row, name in enumerate(names):
            info = training.services[name]
            active, unused = info.get("active"), info.get("unused")
            # a model of another window length is kept but does not score: said as `status` says it
            shown = (f"v{active} (not used)" if unused else f"v{active}") if active else "—"
            for col, value in enumerate((name, info.get("state", ""), shown)):
                item = QtWidgets.QTableWidgetItem(str(value))
                if unused:
                    item.setToolTip(f"not used: {unused}")
                self.services_table.setItem(row, col, item)
            if name == selected:  # selected, not only the current cell: its versions show
                flags = (QtCore.QItemSelectionModel.SelectionFlag.ClearAndSelect
                         | QtCore.QItemSelectionModel.SelectionFlag.Rows)  # fmt: skip
                self.services_table.selectionModel().select(self.services_table.model().index(row, 0), flags)
        self.services_table.blockSignals(False)
        self.services_table.resizeColumnsToContents()
        self._show_versions()

    def selected_service(self) -> str:
        """The service selected in the per-service table ("" for none)."""
        items = self.services_table.selectedItems()
        return self.services_table.item(items[0].row(), 0).text() if items else ""

    def _show_versions(self) -> None:
        info = self.state.training.services.get(self.selected_service(), {})
        versions = sorted(info.get("versions", []), key=lambda v: -int(v.get("version") or 0))  # newest first
        self.versions_table.setRowCount(len(versions))
        for row, v in enumerate(versions):
            created = local_time(v.get("created", 0))
            metrics = metrics_text(v.get("metrics") or {})
            windows = v.get("windows")
            cells = (f"v{v.get('version')}", created, f"{windows:,}" if isinstance(windows, int) else windows,
                     "yes" if v.get("active") else "", "stale" if v.get("stale") else "", v.get("threshold", ""),
                     metrics)  # fmt: skip
            for col, value in enumerate(cells):
                item = QtWidgets.QTableWidgetItem("" if value is None else str(value))
                item.setData(QtCore.Qt.ItemDataRole.UserRole, v.get("version"))
                if col == len(cells) - 1:
                    item.setToolTip(metrics.replace(" · ", "\n"))
                self.versions_table.setItem(row, col, item)
        self.versions_table.resizeColumnsToContents()

    @asyncSlot()
    async def train(self) -> None:
        """Start training with the form's parameters."""
        service = self.service.currentText()
        self.settings.train_windows = self.windows.value()
        self.settings.train_trees = self.trees.value()
        self.settings.train_false_alarm_rate = self.false_alarm.value()
        try:
            result = await self.actions.train(None if service in ("", ALL) else service, self.windows.value(),
                                              self.trees.value(), self.false_alarm.value())  # fmt: skip
        except Exception as err:
            self.message.setText(f"training failed: {err}")
            self.state.say(f"training failed: {err}")
            return
        self.state.say(f"training: {result['summary']}")

    @asyncSlot()
    async def refresh_models(self) -> None:
        """Reload per-service model state (not while (re)connecting: every reconnect re-reads them)."""
        if self.state.connection.status != "connected":
            return
        try:
            await self.actions.refresh_models()
        except Exception as err:
            self.message.setText(f"models: {err}")
            return
        if self.message.text().startswith("models: "):  # an earlier read failed; this one did not
            self.message.setText("")

    @asyncSlot()
    async def activate(self) -> None:
        """Activate the selected version."""
        service, items = self.selected_service(), self.versions_table.selectedItems()
        if not service or not items:
            self.message.setText("select a service and a version first")
            return
        version = int(items[0].data(QtCore.Qt.ItemDataRole.UserRole))
        try:
            await self.actions.activate(service, version)
        except Exception as err:
            self._say(f"{service}: activate failed: {err}")
            return
        self._say_active(service)

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
            self._say(f"{service}: rollback failed: {err}")
            return
        self._say_active(service, "rolled back: ")

    def _say_active(self, service: str, how: str = "") -> None:
        """Name the model now active (as the registry says after the action), here and in the status bar."""
        active = self.state.training.services.get(service, {}).get("active")
        self._say(f"{service}: {how}model v{active} is active" if active else f"{service}: {how}no model is active")

    def _say(self, words: str) -> None:
        """An action's result, here and in the status bar (this panel's top can be scrolled out of view)."""
        self.message.setText(words)
        self.state.say(words)
