"""`anomalydesk bench detect --quick --json` without --redis: runs on its own throwaway redis-server."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_detect_starts_its_own_server_and_reports_the_design_keys():
    done = subprocess.run([sys.executable, "-m", "anomalydesk.cli", "bench", "detect", "--quick", "--json"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout)["detect"]
    for key in ("score_p50_ms", "score_p99_ms", "sklearn_score_p99_ms", "train_s", "sklearn_fit_s"):
        assert isinstance(found[key], float) and found[key] > 0, (key, found)
