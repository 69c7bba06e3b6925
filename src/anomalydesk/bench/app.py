"""`anomalydesk bench app`: the benchmark lives with the Qt code (`anomalydesk.app.bench`); the core stays Qt-free."""

from __future__ import annotations

from typing import Any


def run(quick: bool, redis_url: str | None) -> dict[str, Any]:
    """Live-panel redraw, longest loop stall while training, PUBLISH → notification (see app.bench)."""
    from anomalydesk.app.bench import run as run_app_bench

    return run_app_bench(quick, redis_url)
