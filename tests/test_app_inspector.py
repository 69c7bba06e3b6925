"""The sketches panel's inspector through its widgets, against a real redis-server holding known traffic.

Events are written with the ingest sink (exact, known counts); the panel's answers are compared with
the truth, with the store functions and with `anomalydesk query --json` (run in this process).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from anomalydesk import cli
from anomalydesk.config import SketchSettings
from anomalydesk.store import admin, sketches
from anomalydesk.store.sink import IngestSink
from app_support import close_app, qloop, run  # noqa: F401  (fixture)

pytestmark = [pytest.mark.gui, pytest.mark.backends, pytest.mark.qt_log_level_fail("WARNING"),
              pytest.mark.qt_log_ignore("This plugin does not support")]  # the offscreen platform says so

# the known traffic: endpoint → (requests, status of each); few keys, so the Count-Min Sketch (default
# width/depth) has no collisions to overestimate with and its estimates equal the truth
SHOP = {"GET:/items": (120, 200), "POST:/cart": (45, 201), "GET:/health": (7, 503)}
OTHER = {"GET:/other": (30, 200)}


def ingest(r, service: str, traffic: dict[str, tuple[int, int]], t0: float) -> None:
    names = list(traffic)
    idx = np.concatenate([np.full(n, i) for i, (n, _status) in enumerate(traffic.values())])
    status = np.concatenate([np.full(n, s) for n, s in traffic.values()])
    sink = IngestSink(r, replay=True)
    sink.add_arrays(service, names, idx, status, np.full(len(idx), 12.0), t0 + np.linspace(0, 4, len(idx)))
    sink.close()


def query(qtbot, panel, service: str, kind: str, items: str):
    """Ask through the widgets; what the result table shows, as values (or "error: " and the error shown)."""
    answered = panel.answered
    panel.q_service.setCurrentText(service)
    panel.q_kind.setCurrentText(kind)
    panel.q_items.setText(items)
    panel.q_button.click()
    qtbot.waitUntil(lambda: panel.answered > answered, timeout=10_000)
    if panel.q_error.text() and not panel.table_rows():
        return f"error: {panel.q_error.text()}"
    rows = panel.table_rows()
    if kind == "topk":
        assert [r[0] for r in rows] == [str(i) for i in range(1, len(rows) + 1)]  # ranked
        return [[name, int(count.replace(",", ""))] for _rank, name, count in rows]
    if kind == "interaction":
        assert {r[1] for r in rows} <= {"yes", "no"}
        return {name: seen == "yes" for name, seen in rows}
    return {name: int(count.replace(",", "")) for name, count in rows}


def cli_json(capsys, url: str, *args: str):
    assert cli.main(["query", *args, "--redis", url, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_inspector_answers_match_the_truth_the_store_and_the_cli(qtbot, qloop, redis_url, r, capsys):  # noqa: F811
    from anomalydesk.app.application import DesktopApp
    from anomalydesk.app.model.settings import AppSettings

    admin.setup(r, SketchSettings())
    t0 = time.time() - 60
    ingest(r, "shop", SHOP, t0)
    ingest(r, "other", OTHER, t0)
    app = DesktopApp(AppSettings(), redis_url, run_detector=False)
    app.window.show()
    run(qtbot, app.start())
    try:
        panel = app.window.sketches
        qtbot.waitUntil(lambda: [panel.q_service.itemText(i) for i in range(panel.q_service.count())]
                        == ["other", "shop"], timeout=20_000)  # fmt: skip
        qtbot.waitUntil(lambda: panel.sizes.rowCount() == 2, timeout=20_000)
        rows = {panel.sizes.item(i, 0).text(): panel.sizes.item(i, 2).text() for i in range(2)}
        assert rows == {"shop": f"3/{sketches.info(r, 'shop')['filter']['capacity']:,}",
                        "other": f"1/{sketches.info(r, 'other')['filter']['capacity']:,}"}  # fmt: skip

        endpoints = query(qtbot, panel, "shop", "endpoint", "GET:/items, POST:/cart, GET:/never")
        truth = {name: n for name, (n, _s) in SHOP.items() if name != "GET:/health"} | {"GET:/never": 0}
        assert endpoints == truth
        assert endpoints == sketches.endpoint_counts(r, "shop", list(truth))
        assert endpoints == cli_json(capsys, redis_url, "endpoint", *truth, "--service", "shop")["shop"]

        statuses = query(qtbot, panel, "shop", "status", "200, 201, 503, 500")
        assert statuses == {"200": 120, "201": 45, "503": 7, "500": 0}
        assert statuses == {str(k): v for k, v in sketches.status_counts(r, "shop", [200, 201, 503, 500]).items()}
        codes = ("200", "201", "503", "500")
        assert statuses == cli_json(capsys, redis_url, "status", *codes, "--service", "shop")["shop"]

        seen = query(qtbot, panel, "shop", "interaction", "POST:/cart, GET:/other, DELETE:/cart")
        assert seen == {"POST:/cart": True, "GET:/other": False, "DELETE:/cart": False}  # GET:/other is other's
        pairs = ("shop:POST:/cart", "shop:GET:/other", "shop:DELETE:/cart")
        assert [row["seen"] for row in cli_json(capsys, redis_url, "interaction", *pairs)] == [True, False, False]

        top = query(qtbot, panel, "shop", "topk", "")
        assert top == [["GET:/items", 120], ["POST:/cart", 45], ["GET:/health", 7]]
        assert top == [list(pair) for pair in sketches.topk(r, "shop")]
        assert top == [[row["endpoint"], row["count"]]
                       for row in cli_json(capsys, redis_url, "topk", "--service", "shop")["shop"]]  # fmt: skip
        assert query(qtbot, panel, "other", "topk", "") == [["GET:/other", 30]]

        error = query(qtbot, panel, "shop", "status", "two hundred")
        assert error.startswith("error:") and "status codes must be numbers" in error

        # tables in GUI words: each query its own placeholder and headers; sizes readable in full
        headers = {}
        for kind in ("endpoint", "status", "interaction", "topk"):
            panel.q_kind.setCurrentText(kind)
            headers[kind] = [panel.q_table.horizontalHeaderItem(c).text() for c in range(panel.q_table.columnCount())]
            if kind == "status":
                assert "200" in panel.q_items.placeholderText() and "GET:" not in panel.q_items.placeholderText()
        assert headers["topk"] == ["#", "endpoint", "count (estimate)"] and headers["interaction"][1] == "seen before"
        assert not panel.q_items.isEnabled()  # Top-K takes no items
        empty = query(qtbot, panel, "shop", "endpoint", "")
        assert empty.startswith("error: type endpoints")
        sizes = panel.sizes.horizontalHeader()
        for col in range(panel.sizes.columnCount() - 1):  # (the last one stretches)
            assert sizes.sectionSize(col) >= sizes.sectionSizeHint(col), panel.sizes.horizontalHeaderItem(col).text()
        assert panel.sizes.viewport().height() >= 2 * panel.sizes.rowHeight(0)
        app.window.docks["sketches"].show()
        app.window.docks["sketches"].raise_()
        query(qtbot, panel, "shop", "topk", "")
        app.window.grab().save("/tmp/wtc-sketches.png")
    finally:
        close_app(qtbot, app)
