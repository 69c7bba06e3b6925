"""Helpers for the app's pytest-qt tests: a qasync loop driven by qtbot, and a running DesktopApp.

The qasync loop is created `already_running`, so coroutines advance whenever Qt processes events —
which is what `qtbot.waitUntil` does; tests never sleep.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


_LOOP: asyncio.AbstractEventLoop | None = None


def shared_loop(qapp: Any) -> asyncio.AbstractEventLoop:
    """One qasync loop for the whole session, never stopped.

    (Stopping a qasync loop calls QApplication.exit(), after which pytest-qt's waits — nested
    QEventLoop.exec() calls — return at once without processing events.)
    """
    import qasync

    global _LOOP
    if _LOOP is None:
        _LOOP = qasync.QEventLoop(qapp, already_running=True)
    return _LOOP


@pytest.fixture()
def qloop(qapp: Any) -> Iterator[asyncio.AbstractEventLoop]:
    """The qasync loop; after the test, no task of the test may be pending and no app thread alive."""
    loop = shared_loop(qapp)
    threads_before = set(threading.enumerate())
    asyncio.events._set_running_loop(loop)
    asyncio.set_event_loop(loop)
    try:
        yield loop
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        for _ in range(20):
            qapp.processEvents()
        leaked = [t for t in set(threading.enumerate()) - threads_before
                  if t.is_alive() and t.name.startswith(("ad-", "anomalydesk-"))]  # fmt: skip
        assert not leaked, f"threads left running: {[t.name for t in leaked]}"
        assert not pending, f"tasks left pending: {pending}"
    finally:
        # the loop is "running" only for the app tests: later tests (asyncio.run) must find none
        asyncio.events._set_running_loop(None)
        asyncio.set_event_loop(None)


def run(qtbot: Any, awaitable: Awaitable[T], timeout: float = 30.0) -> T:
    """Run a coroutine on the qasync loop until done (Qt events keep flowing meanwhile)."""
    task = asyncio.ensure_future(awaitable)
    qtbot.waitUntil(task.done, timeout=int(timeout * 1000))
    return task.result()


def close_app(qtbot: Any, app: Any) -> None:
    """Shut a DesktopApp down and dispose of its window, also when the shutdown fails: a window left open
    takes the pointer's Enter and Leave events from the next test's window."""
    try:
        run(qtbot, app.shutdown())
    finally:
        app.dispose()
