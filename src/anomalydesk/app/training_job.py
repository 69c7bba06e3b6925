"""The training job the app runs, and model-registry reads (Qt-free).

`run` trains in a child process, `anomalydesk train --worker` (the same code as the command:
`detect.batch_training.train_services`), reading its progress and result as JSON lines on the
child's stdout and asking it to stop with a line on its stdin. Training in the app's own process
held the interpreter lock for whole C calls (parsing a day of fingerprints, growing trees) and
stalled the event loop by hundreds of milliseconds; a child process cannot.
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
import redis

from anomalydesk import config
from anomalydesk.store.keys import Keys

STDERR_TAIL_LINES = 20


class TrainingFailed(RuntimeError):
    """The training process ended without a result (its last words on stderr are in the message)."""


def self_command() -> list[str]:
    """How to run `anomalydesk` itself: the frozen executable, or this interpreter with the CLI module."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "anomalydesk.cli"]


def run(url: str, keys: Keys, services: list[str], params: dict[str, Any],
        progress: Callable[[float, str], None], cancel: threading.Event) -> dict[str, Any]:  # fmt: skip
    """Train each service in a child process; {"trained", "skipped", "cancelled", "summary", "outcomes"}."""
    argv = [*self_command(), "train", "--worker", "--score-recent", str(int(params.get("score_recent", 0))),
            "--trees", str(int(params["trees"])),
            "--false-alarm-rate", str(float(params["false_alarm_rate"]))]  # fmt: skip
    if params.get("windows"):
        argv += ["--windows", str(int(params["windows"]))]
    for service in services:
        argv += ["--service", service]
    child = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, config.ENV_REDIS_URL: url, config.ENV_PREFIX: keys.prefix},  # a password stays off argv
        creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
    )  # fmt: skip
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


def model_overview(r: redis.Redis, keys: Keys, services: list[str]) -> dict[str, dict[str, Any]]:
    """service → {state, active, needed, versions: [ModelInfo as dict + threshold]}."""
    from anomalydesk.detect.service_state import service_states
    from anomalydesk.store import models as registry

    states = service_states(r, keys=keys)
    overview: dict[str, dict[str, Any]] = {}
    for service in sorted(set(services) | set(states)):
        entry = states.get(service, {"state": "learning", "needed": config.MIN_TRAINING_WINDOWS})
        versions = []
        for m in registry.list_models(r, service, keys=keys):
            d = m.as_dict()
            d["threshold"] = config.SEVERITY_WARNING  # scores are calibrated: the threshold maps here
            versions.append(d)
        state = entry.get("state", "learning")
        if state == "learning" and entry.get("needed"):
            state = f"learning ({entry['needed']:,} windows to go)"  # live + history windows counted
        overview[service] = {"state": state, "active": entry.get("model_version"), "versions": versions,
                             "windows": entry.get("windows", 0)}
    return overview


def activate(r: redis.Redis, keys: Keys, service: str, version: int) -> None:
    """Make a kept version active."""
    from anomalydesk.store import models as registry

    registry.activate(r, service, version, keys=keys)


def rollback(r: redis.Redis, keys: Keys, service: str) -> None:
    """Activate the version before the active one."""
    from anomalydesk.store import models as registry

    registry.rollback(r, service, keys=keys)
