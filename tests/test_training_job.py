"""The app's training job (`app.services.jobs.train`): `anomalydesk train --worker` in a child process,
against a real redis-server.

The child reports progress and its result as JSON lines; a cancel reaches it over stdin and stops it
between chunks of trees; a child that fails says why. Qt-free: the GUI test (test_app_workflow.py)
drives the same job through the Train button.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from anomalydesk.app.services import jobs
from anomalydesk.store import models as registry
from anomalydesk.store.keys import Keys

PARAMS = {"windows": 0, "trees": 60, "false_alarm_rate": 0.01}


@pytest.fixture()
def history(redis_url):
    """40 minutes of demo history (480 windows) for two services under a private prefix."""
    keys = Keys("adjob:")
    jobs.backfill(redis_url, keys, 40 * 60, 2)
    return keys


def test_the_child_trains_reports_progress_and_activates(redis_url, r, history):
    seen: list[tuple[float, str]] = []
    result = jobs.train(redis_url, history, ["gateway", "users"], PARAMS,
                        lambda f, m: seen.append((f, m)), threading.Event())  # fmt: skip
    assert result["trained"] == ["gateway", "users"] and not result["cancelled"], result
    fractions = [f for f, _m in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 4
    assert any(m.startswith("users: growing the forest") for _f, m in seen)
    for service in ("gateway", "users"):
        active = registry.active_version(r, service, keys=history)
        assert active is not None and active >= 1
    assert not r.keys("ad:models*")  # the child used the app's prefix, not the default


def test_cancel_stops_the_child_between_chunks(redis_url, r, history):
    cancel = threading.Event()
    before = {s: registry.active_version(r, s, keys=history) for s in ("gateway", "users")}

    def progress(fraction: float, message: str) -> None:
        if "growing the forest" in message:
            cancel.set()

    result = jobs.train(redis_url, history, ["gateway", "users"], {**PARAMS, "trees": 3000}, progress, cancel)
    assert result["cancelled"] and result["trained"] == [], result
    assert result["summary"].startswith("cancelled")
    assert {s: registry.active_version(r, s, keys=history) for s in ("gateway", "users")} == before


def test_a_failing_child_says_why(redis_url, history):
    with pytest.raises(jobs.TrainingFailed, match="no live service named 'nosuch'"):
        jobs.train(redis_url, history, ["nosuch"], PARAMS, lambda f, m: None, threading.Event())


def test_the_child_returns_the_recent_windows_scored_by_the_new_model(redis_url, r, history):
    import numpy as np

    from anomalydesk.detect.score import score_batch
    from anomalydesk.detect.training_run import recent_windows

    result = jobs.train(redis_url, history, ["gateway"], {**PARAMS, "score_recent": 300},
                        lambda f, m: None, threading.Event())  # fmt: skip
    scored = result["recent_scores"]["gateway"]
    fps = [fp for fp in recent_windows(r, "gateway", 300, keys=history) if not fp.no_data]
    assert len(scored["start"]) == len(fps) > 200
    assert scored["start"] == [fp.start for fp in fps]
    from anomalydesk.detect.service_state import load_model

    model = load_model(r, "gateway", keys=history)[1]
    expected = score_batch(model, np.vstack([fp.vector for fp in fps]), np.array(scored["start"]))
    assert np.allclose(scored["score"], expected, equal_nan=True)


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="POSIX scheduling priorities")
def test_the_apps_detector_runs_at_a_lower_priority_than_the_app(redis_url):
    """The GUI thread gets a core first when the detector scores a fleet at a window boundary."""
    child = jobs.start_detector(redis_url, Keys("adnice:"))
    try:
        from anomalydesk import config

        expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + config.WORKER_NICENESS)
        deadline = time.monotonic() + 30  # the child lowers its own priority once it has started
        while os.getpriority(os.PRIO_PROCESS, child.pid) != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == expected
    finally:
        child.stdin.close()  # type: ignore[union-attr]
        assert child.wait(timeout=30) == 0


def test_a_cancelled_backfill_ends_its_child_and_keeps_what_it_wrote(redis_url, r):
    """Quitting the app during a backfill sets `cancel`: the child is ended instead of being waited
    for (a month of history at the default rate would take minutes), and what it wrote stays."""
    keys, days = Keys("adcancel:"), 30
    cancel, outcome = threading.Event(), {}

    def run() -> None:
        try:
            outcome["result"] = jobs.backfill(redis_url, keys, days * 86400, 3, cancel)
        except jobs.JobFailed as err:
            outcome["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    try:
        while not outcome and r.xlen(keys.fingerprints("gateway")) + r.xlen(keys.history("gateway", 5)) == 0:
            time.sleep(0.05)
    finally:
        cancel.set()
        thread.join(120)
    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), jobs.JobCancelled), outcome
    written = r.xlen(keys.fingerprints("gateway")) + r.xlen(keys.history("gateway", 5))
    assert 0 < written < days * 86400 // 5  # ended part-way, its windows kept
