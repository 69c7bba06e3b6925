"""`anomalydesk bench collector` produces its DESIGN.md keys from a real run (slow: ~30 s)."""

from __future__ import annotations

import pytest

from anomalydesk.bench import collector as bench_collector


@pytest.mark.slow
def test_bench_collector_quick(redis_url: str) -> None:
    result = bench_collector.run(True, redis_url)
    assert {"events_per_s", "direct_events_per_s", "single_p99_ms"} <= set(result)
    assert result["events_per_s"] > 0 and result["direct_events_per_s"] > 0
    assert result["http_errors"] == 0
    assert result["stored_events_match"] is True  # every 202 batch is in events_total, nothing more
    assert result["single_requests"] == 3 * result["single_rate_target"]
    assert result["single_p99_ms"] >= result["single_p50_ms"] > 0
