"""Garbage collection runs on the GUI thread only while the app's collector is on (app/gui_gc.py).

A worker thread makes cyclic garbage as fast as it can; every collection that happens meanwhile
(seen through `gc.callbacks`) must run on the GUI thread, and the garbage must still be freed.
Without the collector the interpreter collects in the allocating worker: the first assertion fails.
"""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

pytestmark = [pytest.mark.gui]


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_collections_happen_on_the_gui_thread_and_free_cycles(qtbot):
    from anomalydesk.app.widgets.gui_gc import GuiThreadCollector

    threads: list[str] = []

    def note(phase: str, info: dict) -> None:
        if phase == "start":
            threads.append(threading.current_thread().name)

    collector = GuiThreadCollector(interval_ms=20)
    gc.callbacks.append(note)
    refs: list[weakref.ref] = []
    try:
        assert not gc.isenabled()

        def churn() -> None:
            for i in range(200_000):
                node = Node()
                if i % 2_000 == 0:
                    refs.append(weakref.ref(node))

        worker = threading.Thread(target=churn, name="churn")
        worker.start()
        while worker.is_alive():
            qtbot.wait(20)
        worker.join()
        qtbot.waitUntil(lambda: all(ref() is None for ref in refs), timeout=5_000)  # freed by the GUI timer
    finally:
        gc.callbacks.remove(note)
        collector.stop()
    assert threads, "no collection ran at all"
    assert set(threads) == {threading.main_thread().name}, sorted(set(threads))
    assert gc.isenabled()


def test_after_the_baseline_is_frozen_new_cycles_are_still_freed(qtbot):
    from anomalydesk.app.widgets.gui_gc import GuiThreadCollector

    collector = GuiThreadCollector(interval_ms=20)
    try:
        collector.freeze_baseline()
        assert collector.frozen and gc.get_freeze_count() > 0
        refs = []
        for _ in range(50_000):  # enough allocations to pass the thresholds of every generation
            node = Node()
            refs.append(weakref.ref(node))
            del node
        qtbot.waitUntil(lambda: all(ref() is None for ref in refs), timeout=10_000)
    finally:
        collector.stop()
    assert not collector.frozen and gc.get_freeze_count() == 0 and gc.isenabled()
