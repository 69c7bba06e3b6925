"""Exports from the live panel (offscreen): the CSV round-trips every window's time to the second, the
save dialog starts in the documents folder with service and time range in the name, the PNG carries them
in its heading, and every export says what it wrote in the window's status bar."""

from __future__ import annotations

import csv
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PySide6 import QtGui, QtWidgets

from anomalydesk.detect.incident_model import local_time
from anomalydesk.fingerprint import FEATURES, N_FEATURES
from app_support import qloop  # noqa: F401  (fixture)

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_level_fail("WARNING"),
              pytest.mark.qt_log_ignore("This plugin does not support")]  # the offscreen platform says so

T0 = 1_796_070_000  # the "1.79607e+09": with 6 significant digits 792 windows read as 3 times
ROWS = 5_000


@pytest.fixture()
def window(qtbot, qloop):  # noqa: F811
    from anomalydesk.app.model.settings import AppSettings
    from anomalydesk.app.model.state import AppState
    from anomalydesk.app.widgets.main_window import MainWindow
    from test_app_panels import NoActions

    state = AppState(live_capacity=ROWS)
    rng = np.random.default_rng(7)
    for i in range(ROWS):
        score = math.nan if i < 10 else float(rng.uniform(0, 100))  # no model yet for the first windows
        state.live.append("payments", T0 + 5 * i, rng.uniform(0, 2e6, N_FEATURES), score)
    state.set_services(["payments"])
    win = MainWindow(state, NoActions(), AppSettings(live_service="payments"))
    qtbot.addWidget(win)
    win.show()
    win.live.range.stop_following()  # (following live, the view is the last hour of the clock: empty)
    win.live.score_plot.getViewBox().setXRange(T0 - 1, T0 + 5 * ROWS, padding=0)  # all the windows in view
    return win


def test_csv_round_trips_every_window_time_to_the_second(window, tmp_path):
    path = window.live.export_csv(tmp_path / "live.csv")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    assert header == ["window_start", "window_start_time", "score", *(f.name for f in FEATURES)]
    assert len(body) == ROWS
    starts = [int(r[0]) for r in body]  # whole epoch seconds, no exponent
    assert starts == [T0 + 5 * i for i in range(ROWS)] and len(set(starts)) == ROWS
    times = [datetime.fromisoformat(r[1]) for r in body]
    assert all(t.tzinfo is not None for t in times)  # ISO 8601 with its offset
    assert [int(t.timestamp()) for t in times] == starts
    data = window.state.live.buffers["payments"].view()
    assert [r[2] for r in body[:10]] == [""] * 10  # a window without a score is an empty cell, not "nan"
    assert np.array_equal(np.array([float(r[2]) for r in body[10:]]), data[10:, 1])
    features = np.array([[float(x) for x in r[3:]] for r in body])
    assert np.array_equal(features, data[:, 2:])  # every value exactly (shortest round-trip repr)
    assert window.status.currentMessage() == (
        f"exported {ROWS:,} windows of payments — {local_time(T0)} to {local_time(T0 + 5 * (ROWS - 1))}: {path}")


def test_dialog_starts_in_documents_named_by_service_and_range_and_the_png_says_so(qtbot, window, tmp_path,
                                                                                    monkeypatch):  # fmt: skip
    from anomalydesk.app.widgets import export

    asked = []

    def save_dialog(parent, caption, start, filters):
        asked.append(start)
        return str(tmp_path / Path(start).name), filters

    monkeypatch.setattr(QtWidgets.QFileDialog, "getSaveFileName", staticmethod(save_dialog))
    window.live.png_button.click()
    start = Path(asked[0])
    assert start.parent == export.documents_dir() and start.parent != Path.cwd()
    first = datetime.fromtimestamp(T0).astimezone().strftime("%Y%m%dT%H%M")
    last = datetime.fromtimestamp(T0 + 5 * (ROWS - 1)).astimezone().strftime("%Y%m%dT%H%M")
    assert start.name == f"anomalydesk-payments-{first}-{last}.png"
    written = tmp_path / start.name
    image = QtGui.QImage(str(written))
    heading = f"payments — {local_time(T0)} to {local_time(T0 + 5 * (ROWS - 1))}"
    assert image.text("Title") == heading
    assert image.height() > window.live.graphics.height() and image.width() == window.live.graphics.width()
    assert window.status.currentMessage() == f"exported PNG of {heading}: {written}"

    window.live.csv_button.click()
    assert Path(asked[1]).name == f"anomalydesk-payments-{first}-{last}.csv"
    qtbot.waitUntil(lambda: window.status.currentMessage().endswith(f": {tmp_path / Path(asked[1]).name}"))

    def unwritable(parent, caption, start, filters):
        return str(tmp_path / "missing-dir" / "x.csv"), filters

    monkeypatch.setattr(QtWidgets.QFileDialog, "getSaveFileName", staticmethod(unwritable))
    window.live.csv_button.click()
    qtbot.waitUntil(lambda: window.status.currentMessage().startswith("export failed: "))


def test_exports_cover_the_visible_range_only(window, tmp_path, monkeypatch):
    """Zoomed in on windows 1,000 … 1,999, the CSV, its name and the PNG's heading are those windows
    (they were the whole buffer, and the heading's range not the one the axis showed)."""
    live = window.live
    live.range.stop_following()
    live.score_plot.getViewBox().setXRange(T0 + 5 * 1000 - 1, T0 + 5 * 1999 + 1, padding=0)
    path = live.export_csv(tmp_path / "shown.csv")
    with open(path, newline="") as f:
        starts = [int(r[0]) for r in list(csv.reader(f))[1:]]
    assert starts == [T0 + 5 * i for i in range(1000, 2000)]
    heading = f"payments — {local_time(T0 + 5 * 1000)} to {local_time(T0 + 5 * 1999)}"
    assert window.status.currentMessage() == f"exported 1,000 windows of {heading}: {path}"
    asked = []

    def save_dialog(parent, caption, start, filters):
        asked.append(start)
        return str(tmp_path / Path(start).name), filters

    monkeypatch.setattr(QtWidgets.QFileDialog, "getSaveFileName", staticmethod(save_dialog))
    live.png_button.click()
    first = datetime.fromtimestamp(T0 + 5 * 1000).astimezone().strftime("%Y%m%dT%H%M")
    last = datetime.fromtimestamp(T0 + 5 * 1999).astimezone().strftime("%Y%m%dT%H%M")
    assert Path(asked[0]).name == f"anomalydesk-payments-{first}-{last}.png"
    assert QtGui.QImage(str(tmp_path / Path(asked[0]).name)).text("Title") == heading


def test_a_csv_is_not_written_when_the_service_changes_during_its_read(qtbot, qloop, redis_url, r,  # noqa: F811
                                                                        tmp_path, monkeypatch):  # fmt: skip
    """The real window on a real redis-server: gateway's CSV covers 6 h, the first of them older than the
    buffer, so the export reads those windows from the streams. The operator switches to users while
    that read is held (the loader's `windows` awaits a gate the test opens, no sleep): nothing is
    written and the status bar says why. Without the guard the file held users' buffered windows after
    gateway's older ones, under gateway's name."""
    import asyncio

    from test_app_incidents import close_app
    from test_app_range import seven_hours_on_the_6_h_preset

    app = seven_hours_on_the_6_h_preset(qtbot, redis_url, r, services=2)  # gateway and users
    try:
        live = app.window.live
        qtbot.waitUntil(lambda: "read from the streams" in live.info_label.text(), timeout=10_000)
        assert live.service == "gateway" and live.service_box.findText("users") >= 0

        loader = live.range.loader
        real_windows = loader.windows
        read, gate = [], asyncio.Event()

        async def held_windows(service: str, start: float, end: float):
            found = await real_windows(service, start, end)  # the real read of the older windows …
            read.append((service, len(found.rows)))
            await gate.wait()  # … not yet handed back when the operator switches service
            return found

        monkeypatch.setattr(loader, "windows", held_windows)
        target = tmp_path / "gateway.csv"
        monkeypatch.setattr(QtWidgets.QFileDialog, "getSaveFileName",
                            staticmethod(lambda _p, _c, _start, f: (str(target), f)))  # fmt: skip
        live.csv_button.click()
        qtbot.waitUntil(lambda: bool(read), timeout=10_000)
        assert read[0][0] == "gateway" and read[0][1] > 0
        assert app.window.status.currentMessage() == "exporting gateway: reading its windows …"

        live.service_box.setCurrentText("users")  # the operator's choice in the service list
        assert live.service == "users"
        gate.set()
        qtbot.waitUntil(lambda: live._csv_task is not None and live._csv_task.done(), timeout=10_000)
        assert app.window.status.currentMessage() == (
            "export of gateway not written: another service was shown while its windows were read")
        assert not target.exists() and list(tmp_path.iterdir()) == []
    finally:
        close_app(qtbot, app)


def test_a_window_without_requests_has_no_latency_or_ratios_in_the_csv(tmp_path: Path) -> None:
    """A tester stopped the demo for a minute: the plots and the CSV said p95 latency 0 ms and 5xx 0 %
    there. A window without requests has no per-request statistics: empty cells (NaN on the plots);
    its request count, 0, is a measurement and stays."""
    from anomalydesk.app.widgets.export import write_csv
    from anomalydesk.fingerprint import FEATURE_INDEX, PER_REQUEST

    rows = np.zeros((2, 2 + N_FEATURES))
    rows[:, 0] = [1_800_000_000.0, 1_800_000_005.0]
    rows[0, 2 + FEATURE_INDEX["requests"]] = 120
    rows[0, 2 + FEATURE_INDEX["latency_p95_ms"]] = 42.0  # the idle window's stay 0, as sealing writes them
    path = tmp_path / "out.csv"
    write_csv(path, rows)
    with open(path, encoding="utf-8") as f:
        written = list(csv.DictReader(f))
    assert written[0]["latency_p95_ms"] == "42.0" and written[0]["rate_5xx"] == "0.0"
    assert [written[1][name] for name in PER_REQUEST] == [""] * len(PER_REQUEST)
    assert written[1]["requests"] == "0.0" and written[1]["endpoints_distinct"] == "0.0"


def test_without_a_documents_folder_the_dialog_starts_in_the_home_folder(qtbot, window, tmp_path, monkeypatch):
    """A new user without ~/Documents had the save dialog open in the working directory: QStandardPaths
    names ~/Documents whether or not it exists. It starts in the home folder then, in ~/Documents once there."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)  # no user-dirs.dirs naming another documents folder
    monkeypatch.chdir(tmp_path)
    asked = []

    def save_dialog(parent, caption, start, filters):
        asked.append(Path(start))
        return "", filters  # cancelled

    monkeypatch.setattr(QtWidgets.QFileDialog, "getSaveFileName", staticmethod(save_dialog))
    window.live.csv_button.click()
    assert asked[-1].parent == home and not (home / "Documents").exists()
    (home / "Documents").mkdir()
    window.live.png_button.click()
    assert asked[-1].parent == home / "Documents"
