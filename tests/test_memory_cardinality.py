"""Redis memory over an hour of 5-s windows with 50,000 distinct endpoints on one service (slow, both backends).

The workload and the bound are bench/memory_hour.py's (documented in docs/engine.md "Memory at 50,000
endpoints"); `pytest -m slow tests/test_memory_cardinality.py -s` prints the figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from anomalydesk.bench import memory_hour
from conftest import RedisServer, chosen_backends

pytestmark = pytest.mark.slow

# stated error of a full window's endpoint mix (uniform over 50,000 endpoints): the HyperLogLog's
# under-count of the tail (tests/test_endpoint_mix.py, measured 0.017-0.02 bits, 1.1-1.4 %)
ENTROPY_BITS, SHARE, DISTINCT = 0.05, 1e-4, 0.03


@pytest.mark.parametrize("backend", chosen_backends())
def test_an_hour_at_50000_endpoints_stays_within_the_documented_bound(tmp_path: Path, backend: str) -> None:
    server = RedisServer(tmp_path / "redis", backend=backend)
    r = server.client()
    try:
        result = memory_hour.measure(r)
    finally:
        r.close()
        server.stop()
    print(f"\n{backend}: {result}")
    assert result["backend"] == backend
    assert result["fingerprints"] == memory_hour.WINDOWS
    assert result["full_windows"] == memory_hour.WINDOWS // memory_hour.FULL_EVERY
    # nothing of the sealed windows is left but their fingerprints: only the window after the hour is open
    open_windows = {k.rsplit(":", 1)[1] for k in result["service_keys_left"] if k.startswith((":w:", ":we:", ":wh:"))}
    assert len(open_windows) == 1
    assert result["used_memory_growth_settled"] <= result["bound"]
    assert result["service_keys_bytes_peak"] <= result["keys_bound"]
    assert result["batch_id_keys"] <= 2 * memory_hour.WINDOWS  # the hour ran in less than BATCH_TTL: all alive
    assert result["sketch_bytes"] <= memory_hour.SKETCH_BOUND[backend]
    assert result["open_window_bytes_max"] <= memory_hour.OPEN_WINDOW_BOUND
    assert result["fingerprint_stream_bytes"] <= memory_hour.WINDOWS * memory_hour.FINGERPRINT_BOUND
    # the fingerprints keep their meaning at 50,000 distinct endpoints
    assert result["endpoint_entropy_max_error_bits"] <= ENTROPY_BITS
    assert result["top_endpoint_share_max_error"] <= SHARE
    assert result["endpoints_distinct_max_error"] <= DISTINCT
