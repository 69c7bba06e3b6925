"""What the README tells a new user to type works as written (from a clone, after `make run`)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
VENV_CLI = ROOT / ".venv" / "bin" / "anomalydesk"


def section(title: str) -> str:
    """The README's `## title` section, up to the next `## `."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"no '## {title}' section in the README"
    return match.group(1)


def test_the_readme_says_how_to_run_the_command_that_make_run_leaves_off_the_path():
    """A new user typed `anomalydesk` after `make run` and had no such command: it is in `.venv/bin/`,
    which nothing puts on the PATH, and the README never said so."""
    commands = section("The `anomalydesk` command")
    assert ".venv/bin/anomalydesk" in commands and "source .venv/bin/activate" in commands
    trouble = section("Troubleshooting")
    assert "`anomalydesk: command not found`" in trouble and ".venv/bin/anomalydesk" in trouble


@pytest.mark.skipif(not VENV_CLI.exists(), reason="no .venv in this checkout (make setup creates it)")
@pytest.mark.parametrize("how", [".venv/bin/anomalydesk --help", "source .venv/bin/activate && anomalydesk --help"])
def test_the_ways_the_readme_gives_run_the_command_from_the_clone(how):
    """Both ways work in a shell whose PATH has no virtual environment on it."""
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"} | {"PATH": path}
    done = subprocess.run(["bash", "-c", how], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: anomalydesk")
