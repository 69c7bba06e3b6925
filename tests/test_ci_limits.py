"""CI time limits (docs/reliability.md, "CI time limits"): the CI script's pytest step ends a hung run.

Each test runs scripts/pytest_step.sh — what `make test` and `make test-slow` run — on a throwaway test
file in tmp_path, with limits of seconds instead of minutes. The throwaway run reads no project
configuration (`-c /dev/null`, its own rootdir), so neither pyproject's limits nor tests/conftest.py
apply; it gets the faulthandler timeout from the command line and pytest-timeout is off, which leaves
only the mechanisms under test. The hung tests hold the interpreter lock for good: `sum(range(10**13))`
is a single C call that neither releases the lock nor lets a Python signal handler run, the kind of hang
that pytest-timeout cannot end.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEP = ROOT / "scripts" / "pytest_step.sh"
LIMIT = 8  # SUITE_TIMEOUT of the throwaway runs
KILL_AFTER = 2  # SUITE_KILL_AFTER
STACKS_AFTER = 2  # faulthandler_timeout: well before LIMIT, leaving ~6 s for pytest to start

THROWAWAY = """\
import os
import signal


def test_hangs_holding_the_gil():
    sum(range(10**13))


def test_hangs_holding_the_gil_and_ignoring_term():
    signal.signal(signal.SIGTERM, lambda *_: None)  # a Python handler: it cannot run while the lock is held
    sum(range(10**13))


def test_passes():
    # the step sets the Qt platform itself; the project's conftest (which sets ANOMALYDESK_DATA_DIR) is not loaded
    assert os.environ["QT_QPA_PLATFORM"] == "offscreen"
    assert "ANOMALYDESK_DATA_DIR" not in os.environ


def test_fails():
    raise AssertionError("failing on purpose")
"""


def _step(tmp_path: Path, test_name: str) -> tuple[subprocess.CompletedProcess[str], float, Path]:
    test_file = tmp_path / "test_throwaway.py"
    test_file.write_text(THROWAWAY, encoding="utf-8")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANOMALYDESK_", "PYTEST_")) and k != "QT_QPA_PLATFORM"}  # fmt: skip
    env.update(SUITE_TIMEOUT=str(LIMIT), SUITE_KILL_AFTER=str(KILL_AFTER), PYTEST_PYTHON=sys.executable)
    cmd = [str(STEP), "-q", "-p", "no:cacheprovider", "-p", "no:asyncio", "-c", os.devnull,
           "--rootdir", str(tmp_path), "-o", f"faulthandler_timeout={STACKS_AFTER}", "-o", "timeout=0",
           f"{test_file}::{test_name}"]  # fmt: skip
    start = time.monotonic()
    # a session of its own, so that the backstop below can end everything the step started (`timeout`
    # moves pytest into a process group of its own, out of reach of a kill of the script alone)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=LIMIT + KILL_AFTER + 30)
    except subprocess.TimeoutExpired:
        _kill_session(proc.pid)
        stdout, stderr = proc.communicate()
        pytest.fail(f"the step itself did not end the run within {LIMIT + KILL_AFTER + 30} s\n{stdout}\n{stderr}")
    elapsed = time.monotonic() - start
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr), elapsed, test_file


def _kill_session(session: int) -> None:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()  # state ppid pgrp session ...
        except OSError:
            continue
        if int(fields[3]) == session:
            try:
                os.kill(int(stat.parent.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize(
    ("test_name", "exit_code", "ended_after", "how"),
    [
        ("test_hangs_holding_the_gil", 124, LIMIT, "TERM sent;"),
        ("test_hangs_holding_the_gil_and_ignoring_term", 137, LIMIT + KILL_AFTER,
         f"TERM sent, then KILL after {KILL_AFTER} s;"),
    ],
)  # fmt: skip
def test_a_test_hung_holding_the_gil_is_ended_by_the_limit_with_every_threads_stack(
    tmp_path: Path, test_name: str, exit_code: int, ended_after: int, how: str
) -> None:
    done, elapsed, test_file = _step(tmp_path, test_name)
    report = f"exit {done.returncode} after {elapsed:.1f} s\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"

    assert done.returncode == exit_code, report
    assert ended_after - 0.5 <= elapsed < ended_after + 5, report
    # faulthandler's dump, written by its watchdog thread while the hung test held the lock: the header,
    # then a thread whose innermost Python frame is the hung test (sum() is C: it has no frame of its own)
    header = f"Timeout (0:00:{STACKS_AFTER:02d})!\n"
    assert header in done.stderr, report
    dump = done.stderr[done.stderr.index(header) :]
    frame = rf'(Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\):\n  File "{re.escape(str(test_file))}", line \d+ in {test_name}\n'  # noqa: E501
    assert re.search(frame, dump), report
    # then the step's own message, after the stacks, and no test result: pytest never got to report one
    message = "pytest_step: TIME LIMIT HIT: pytest "
    assert message in dump and dump.index(message) > dump.index(test_name), report
    assert f"SUITE_TIMEOUT={LIMIT} s ({how} exit {exit_code} after " in done.stderr, report
    assert not re.search(r"\d+ (passed|failed)", done.stdout), report


@pytest.mark.parametrize(("test_name", "exit_code", "summary"), [("test_passes", 0, "1 passed"),
                                                                  ("test_fails", 1, "1 failed")])  # fmt: skip
def test_a_run_within_the_limit_exits_with_pytests_own_code(
    tmp_path: Path, test_name: str, exit_code: int, summary: str
) -> None:
    done, elapsed, _ = _step(tmp_path, test_name)
    report = f"exit {done.returncode} after {elapsed:.1f} s\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.returncode == exit_code, report
    assert summary in done.stdout, report
    assert "TIME LIMIT" not in done.stderr and "Timeout (" not in done.stderr, report
    assert elapsed < LIMIT, report
