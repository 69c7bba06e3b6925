"""The work the app runs in child processes (Qt-free): training, backfill, and its detector.

`train` runs `anomalydesk train --worker` (the same code as the command:
`detect.batch_training.train_services`), reading its progress and result as JSON lines on the
child's stdout and asking it to stop with a line on its stdin. Training in the app's own process
held the interpreter lock for whole C calls (parsing a day of fingerprints, growing trees) and
stalled the event loop by hundreds of milliseconds; a child process cannot. The same holds for the
backfill (`demo --fast`) and the detector. Each child gets the URL and the key prefix through its
environment, so a password stays off its command line. The training and detector workers lower
their own CPU priority (`--worker`, `config.WORKER_NICENESS`): when one of them and the GUI thread
both want a core — the detector scores a fleet at every window boundary, just when the plots
repaint — the GUI thread gets it. `CoreClient` calls these with its URL and keys.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from anomalydesk import config
from anomalydesk.store.keys import Keys

STDERR_TAIL_LINES = 20
BACKFILL_TIMEOUT_SECONDS = 3600


class JobFailed(RuntimeError):
    """A child process ended without a result (its last words on stderr are in the message)."""


class JobCancelled(JobFailed):
    """A child process was asked to stop before it finished (the app is quitting)."""


class TrainingFailed(JobFailed):
    """The training process ended without a result."""


def self_command() -> list[str]:
    """How to run `anomalydesk` itself: the frozen executable, or this interpreter with the CLI module."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "anomalydesk.cli"]


def _child_env(url: str, keys: Keys) -> dict[str, str]:
    return {**os.environ, config.ENV_REDIS_URL: url, config.ENV_PREFIX: keys.prefix}


def _start(argv: list[str], url: str, keys: Keys, **options: Any) -> subprocess.Popen[Any]:
    """Start a child with the URL and prefix in its environment (a password stays off its argv)."""
    return subprocess.Popen(argv, env=_child_env(url, keys), creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
                            **options)  # fmt: skip


def train(url: str, keys: Keys, services: list[str], params: dict[str, Any],
          progress: Callable[[float, str], None], cancel: threading.Event) -> dict[str, Any]:  # fmt: skip
    """Train each service in a child process; {"trained", "skipped", "cancelled", "summary", "outcomes"}."""
    argv = [*self_command(), "train", "--worker", "--score-recent", str(int(params.get("score_recent", 0))),
            "--trees", str(int(params["trees"])),
            "--false-alarm-rate", str(float(params["false_alarm_rate"]))]  # fmt: skip
    if params.get("windows"):
        argv += ["--windows", str(int(params["windows"]))]
    for service in services:
        argv += ["--service", service]
    child = _start(argv, url, keys, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    done = threading.Event()
    helpers = [threading.Thread(target=_keep_tail, args=(child.stderr, stderr_tail), name="ad-train-stderr"),
               threading.Thread(target=_forward_cancel, args=(cancel, done, child), name="ad-train-cancel")]
    for thread in helpers:
        thread.start()
    result: dict[str, Any] | None = None
    with child:
        try:
            for line in child.stdout:  # type: ignore[union-attr]
                try:
                    message = orjson.loads(line)
                except orjson.JSONDecodeError:  # something printed by a library: not ours
                    continue
                if "progress" in message:
                    progress(float(message["progress"]), str(message.get("message", "")))
                elif "result" in message:
                    result = message["result"]
        finally:
            code = child.wait()
            done.set()
            for thread in helpers:
                thread.join()
    if result is None:
        words = "".join(stderr_tail).strip().splitlines()
        raise TrainingFailed(f"training process exited with code {code}: {words[-1] if words else 'no output'}")
    return result


def _keep_tail(stream: Any, tail: deque[str]) -> None:
    for line in stream:
        tail.append(line.decode(errors="replace"))


def _forward_cancel(cancel: threading.Event, done: threading.Event, child: subprocess.Popen[bytes]) -> None:
    """Tell the child to stop when `cancel` is set (it stops between chunks of trees); close its stdin at the end."""
    while not done.is_set():
        if cancel.wait(0.1):
            try:
                child.stdin.write(b"cancel\n")  # type: ignore[union-attr]
            except OSError:  # the child ended meanwhile
                pass
            break
    try:
        child.stdin.close()  # type: ignore[union-attr]
    except OSError:
        pass


def backfill(url: str, keys: Keys, seconds: float, services: int,
             cancel: threading.Event | None = None) -> dict[str, Any]:  # fmt: skip
    """`demo --fast`: `seconds` of history ending now, in simulated time; its `--json` result.

    In the app's process its generator held the interpreter lock for seconds at a time and starved the
    live demo traffic thread (a dip of a few windows that opened "requests fluctuating" incidents).
    Setting `cancel` ends the child (what it wrote stays: each of its writes is one atomic call, and
    a later backfill leaves out what is there) and raises `JobCancelled`: the app quitting must not
    wait for an hour of history.
    """
    argv = [*self_command(), "--json", "demo", "--fast", "--duration", str(float(seconds)),
            "--services", str(int(services))]  # fmt: skip
    child = _start(argv, url, keys, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()
    watcher = threading.Thread(target=_end_on_cancel, args=(cancel, done, child), name="ad-backfill-cancel")
    if cancel is not None:
        watcher.start()
    with child:
        try:
            stdout, stderr = child.communicate(timeout=BACKFILL_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise JobFailed(f"backfill failed: no result after {BACKFILL_TIMEOUT_SECONDS} s") from None
        finally:
            done.set()
            if watcher.is_alive():
                watcher.join()
    if cancel is not None and cancel.is_set() and child.returncode != 0:  # finished first: its result stands
        raise JobCancelled("backfill cancelled: the history written so far is kept")
    if child.returncode != 0:
        words = stderr.strip().splitlines()
        raise JobFailed(f"backfill failed: {words[-1] if words else f'exit code {child.returncode}'}")
    return orjson.loads(stdout)


def _end_on_cancel(cancel: threading.Event, done: threading.Event, child: subprocess.Popen[str]) -> None:
    """Terminate `child` once `cancel` is set, unless it ended first (`done`)."""
    while not done.is_set():
        if cancel.wait(0.1):
            if child.poll() is None:
                child.terminate()
            return


def start_detector(url: str, keys: Keys) -> subprocess.Popen[bytes]:
    """The app's detector: `anomalydesk detect --worker` (it yields while another detector holds the
    lease, and stops when its stdin closes). In a thread of the app it shared the interpreter lock with
    the GUI thread: 100 services scored at each window boundary stalled the GUI loop for hundreds of ms
    (docs/benchmarks.md, the fleet case)."""
    argv = [*self_command(), "detect", "--worker", "--name", f"app-{os.getpid()}"]
    return _start(argv, url, keys, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
