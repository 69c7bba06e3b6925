"""The window's size and the close-to-tray path (offscreen): messages that come and go (status, errors,
a long validation message, notifications) never resize the window or widen the incidents table, and
closing to a tray that may not be visible never makes the app vanish without a word."""

from __future__ import annotations

import pytest

from app_support import qloop, run  # noqa: F401  (fixture)

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_level_fail("WARNING"),
              pytest.mark.qt_log_ignore("This plugin does not support")]  # the offscreen platform says so

LONG = ("could not write /home/operator/Documents/" + "anomalydesk-payments-" * 12 + ".csv because "
        + "the disk said no, " * 30)  # fmt: skip


def settle() -> None:
    """Run the pending layout requests and posted events (nothing is awaited: nothing may happen)."""
    from PySide6 import QtWidgets

    for _ in range(5):
        QtWidgets.QApplication.sendPostedEvents()
        QtWidgets.QApplication.processEvents()


def geometry(window) -> tuple:
    incidents = window.incidents
    return (window.size().toTuple(), incidents.table.width(), incidents.details.width(),
            window.docks["incidents"].height())  # fmt: skip


def test_messages_coming_and_going_leave_the_window_and_the_table_alone(qtbot, qloop):  # noqa: F811  (a connect re-reads the silences: an async slot)
    from anomalydesk.app.model.notifier import Notification
    from anomalydesk.app.model.settings import AppSettings
    from anomalydesk.app.model.state import AppState
    from anomalydesk.app.widgets.main_window import MainWindow
    from test_app_panels import NoActions

    state = AppState()
    window = MainWindow(state, NoActions(), AppSettings())
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    before = geometry(window)
    assert before[0] == (1280, 800)

    panel = window.connection
    panel.url.setText("ftp://" + "very-long-host-name." * 20 + "example:6379")  # a long validation message
    panel.apply_button.click()
    assert panel.form_error.text().startswith("not applied: ")
    window.incidents.status_label.setText("silence not added: " + LONG)
    window.training.message.setText("training failed: " + LONG)
    window.sketches.message.setText("not applied: " + LONG)
    window.demo.message.setText("backfill: " + LONG)
    state.connection.update(status="reconnecting", url="redis://127.0.0.1:1/0", reason=LONG, warnings=[LONG])
    state.say("exported PNG of payments: " + LONG)
    window.banner.show_notification(Notification("CRITICAL payments: new incident", LONG, "critical", "p:a1"))
    settle()
    assert geometry(window) == before
    assert window.incidents.status_label.text() == "silence not added: " + LONG  # whole, in text and tooltip
    assert window.incidents.status_label.toolTip() == "silence not added: " + LONG

    for label in (window.incidents.status_label, window.training.message, window.sketches.message,
                  window.demo.message, panel.form_error):  # fmt: skip
        label.setText("")
    state.connection.update(status="connected", reason="", warnings=[])
    window.banner.dismiss()
    window.status.clearMessage()
    settle()
    assert geometry(window) == before


def test_a_notification_floats_over_the_plots_and_never_moves_them(qtbot):
    """The banner (notifications where there is no tray) floats over the plots' top right: in the layout
    above them it resized all 9 plots as it came and went (40-45 ms, the fleet's longest paint)."""
    from PySide6 import QtCore

    from anomalydesk.app.model.notifier import Notification
    from anomalydesk.app.model.settings import AppSettings
    from anomalydesk.app.model.state import AppState
    from anomalydesk.app.widgets.main_window import MainWindow
    from test_app_panels import NoActions

    window = MainWindow(AppState(), NoActions(), AppSettings())
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    settle()
    graphics = window.live.graphics
    plots = graphics.geometry()

    def rect(widget) -> QtCore.QRect:
        return QtCore.QRect(widget.mapTo(window, QtCore.QPoint(0, 0)), widget.size())

    def on_top_of_the_plots() -> bool:
        banner = rect(window.banner)
        hit = window.childAt(banner.center())
        return (rect(graphics).contains(banner) and banner.height() >= window.banner.sizeHint().height()
                and (hit is window.banner or window.banner.isAncestorOf(hit)))

    long_body = "requests fluctuating: 120 to 4,000 per window; p95 latency 120 to 180 ms; " * 4
    for note in (Notification("CRITICAL payments: new incident", "5xx ratio 20%", "critical", "p:a1"),
                 Notification("WARNING users: new incident", "p95 latency 120 to 180 ms", "warning", "u:a1"),
                 Notification("CRITICAL orders: p95 < 5 ms & more", long_body, "critical", "o:a1")):
        window.banner.show_notification(note)
        settle()
        assert window.banner.isVisible() and on_top_of_the_plots()
        assert graphics.geometry() == plots
    # the long one: elided to a line in the banner, whole in its tooltip, its "<" and "&" shown as text
    assert "…" in window.banner.text and "&lt; 5 ms &amp; more" in window.banner.text
    assert window.banner.label.toolTip() == f"CRITICAL orders: p95 < 5 ms & more (+2 more)\n{long_body}"
    window.resize(1000, 700)  # it follows the plots
    settle()
    assert on_top_of_the_plots()
    resized = graphics.geometry()
    live = window.live.geometry()  # the live panel moves within the window, its plots neither move nor
    window.live.setGeometry(live.translated(0, 40))  # resize within it: the banner follows all the same
    settle()
    assert on_top_of_the_plots() and rect(window.banner).top() == rect(graphics).top() + window.banner_placement.MARGIN
    window.live.setGeometry(live)
    settle()
    window.banner.dismiss()
    settle()
    assert not window.banner.isVisible() and graphics.geometry() == resized


def test_close_to_tray_says_the_app_runs_on(qtbot, qloop, redis_url):  # noqa: F811
    """A desktop can announce a tray (a StatusNotifier watcher) nobody sees: closing to it hides the
    window and the tray says so (through the notification service); without a tray the window closes."""
    from test_app_incidents import close_app, open_app

    app = open_app(qtbot, redis_url)
    try:
        window = app.window
        window.settings.close_to_tray = True
        window.tray_available = True  # as where Qt reports a tray (offscreen it reports none)
        with qtbot.waitSignal(window.hidden_to_tray, timeout=2_000):
            window.close()
        assert not window.isVisible() and not window.quitting
        assert app.tray.told_still_running == 1
        window.bring_to_front()
        assert window.isVisible()
        window.tray_available = False  # no tray at all: closing really closes, there is nothing to hide into
        with qtbot.waitSignal(window.closing, timeout=2_000):
            window.close()
        assert app.tray.told_still_running == 1
    finally:
        close_app(qtbot, app)
