"""The gears functions fuzzed with hypothesis on the real redis-server.

Arbitrary bytes, valid payloads with one part replaced by a value of the wrong type or range, huge
batches: the server must answer (no crash), refuse with an `anomalydesk:` error that names the
offending part, and write nothing — a DUMP of every key before and after a refused call is equal.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomalydesk.config import SKETCH_MAX_FILTER_CAPACITY, SketchSettings
from anomalydesk.events import parse_metric
from anomalydesk.store import admin, fingerprints, sink
from anomalydesk.store.keys import Keys

pytestmark = pytest.mark.backends  # runs once per sketch backend (conftest.BOTH_BACKENDS)

K = Keys()
SERVICE = "payments"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def snapshot(r: redis.Redis) -> dict[bytes, bytes | None]:
    """DUMP of every key (the serialized value: any change to any key shows)."""
    return {key: r.dump(key) for key in sorted(r.scan_iter(count=1000))}


def baseline_payload(r: redis.Redis, replay: bool = False) -> dict[str, Any]:
    """A payload the sink would send for a small batch (decoded JSON)."""
    writer = sink.Writer(r, K)
    ts = 1_700_000_000.0
    events = [parse_metric({"service": SERVICE, "endpoint": f"GET:/items/{i % 3}", "status_code": 200 + 300 * (i % 2),
                            "response_time": 5 + i, "timestamp": ts + i}) for i in range(6)]  # fmt: skip
    cols = sink.columns_of(events)
    cols[SERVICE].kpis.append(("orders", 3.0, 1.0, 5.0, ts))
    [(_, body)] = sink.encode(cols, writer.config(), replay, "fuzz-batch")
    return json.loads(body)


def ingest(r: redis.Redis, payload: bytes, service: str = SERVICE, key: str | None = None) -> Any:
    return r.fcall("ad_ingest", 1, key or K.state(service), K.prefix, service, payload)


@pytest.fixture()
def ready(r: redis.Redis) -> redis.Redis:
    admin.setup(r, SketchSettings())
    sink.ingest(r, [parse_metric({"service": SERVICE, "endpoint": "GET:/a", "status_code": 200, "response_time": 3})])
    return r


def check_refused_or_applied(r: redis.Redis, call: Any) -> str:
    """Run `call`; a refusal must be a clear anomalydesk error and leave every key as it was."""
    before = snapshot(r)
    try:
        call()
    except redis.ResponseError as err:
        text = str(err)
        # ERR (which redis-py drops) or STALECONFIG, the code a client re-reads its config on: an earlier
        # example may have stored a valid but other config generation, and a stale call is refused first
        assert text.removeprefix("STALECONFIG ").startswith("anomalydesk: "), f"not a clear error: {text!r}"
        assert snapshot(r) == before, f"refused ({text}) but something was written"
        return "refused"
    finally:
        assert r.ping()
    return "applied"


# --- values a field may wrongly hold --------------------------------------------------------------
WRONG = st.one_of(
    st.none(), st.booleans(), st.text(max_size=20), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from([-1, 0, 1.5, -0.0, 1e20, 2**53 + 1, 1e308, -1e308, 2**63, "1", "NaN", ""]),
    st.integers(min_value=-(2**70), max_value=2**70),
)  # fmt: skip


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside nested dicts/lists (cfg sizes only by type: no giant valid sizes)."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


def replaced(payload: dict, path: tuple, new: Any) -> dict:
    out = copy.deepcopy(payload)
    target = out
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = new
    return out


# --- the fuzz -----------------------------------------------------------------------------------
@FUZZ
@given(blob=st.binary(max_size=3000))
def test_arbitrary_bytes_are_refused_without_a_write(ready: redis.Redis, blob: bytes) -> None:
    check_refused_or_applied(ready, lambda: ingest(ready, blob))


@FUZZ
@given(data=st.data(), replay=st.booleans())
def test_one_wrong_part_refuses_the_whole_batch(ready: redis.Redis, data: st.DataObject, replay: bool) -> None:
    base = baseline_payload(ready, replay)
    path = data.draw(st.sampled_from(paths(base)), label="path")
    new = data.draw(WRONG, label="value")
    size = isinstance(new, int | float) and not isinstance(new, bool)
    if path[0] == "cfg" and size and 0 < new <= SKETCH_MAX_FILTER_CAPACITY:
        new = -abs(new)  # sizes within the limits may be valid (tens of MB each); larger ones must be refused
    payload = replaced(base, path, new)
    outcome = check_refused_or_applied(ready, lambda: ingest(ready, json.dumps(payload).encode()))
    if outcome == "applied":  # a replacement that is still valid (e.g. another valid count) may pass
        assert ready.ping()


@FUZZ
@given(service=st.text(max_size=80), prefix=st.text(max_size=12), key=st.text(max_size=80))
def test_service_prefix_and_key_arguments(ready: redis.Redis, service: str, prefix: str, key: str) -> None:
    body = json.dumps(baseline_payload(ready)).encode()
    check_refused_or_applied(ready, lambda: ready.fcall("ad_ingest", 1, key or "k", prefix, service, body))


@pytest.mark.parametrize("what", ["groups", "endpoints", "pairs", "kpis", "long_names", "counts", "window", "raw"])
def test_huge_batches_are_refused_or_applied_whole(ready: redis.Redis, what: str) -> None:
    base = baseline_payload(ready)
    group = base["w"][0]
    if what == "groups":
        base["w"] = [copy.deepcopy(group) for _ in range(20_000)]
    elif what == "endpoints":  # more distinct endpoints in one call than the sink ever sends
        n = 50_000
        group.update(n=n, e4=0, e5=0, ls=float(n), h=[10, n], st=[200, n],
                     ep=[x for i in range(n) for x in (f"GET:/e{i}", 1)])  # fmt: skip
    elif what == "pairs":  # an odd, huge pair list
        group["h"] = [1] * 100_001
    elif what == "kpis":
        base["k"] = [[0, f"kpi{i}", 1.0, 1, 0, None, None] for i in range(20_000)]
    elif what == "counts":  # consistent, but beyond what a counter can hold
        n = 10**20
        group.update(n=n, e4=0, e5=0, ls=1.0, h=[10, n], st=[200, n], ep=["GET:/a", n])
    elif what == "raw":  # full-fidelity mode: raw events beside the aggregates
        base["cfg"]["rm"] = 1000
        base["raw"] = [["GET:/a", 200, 1.0, None]] * 100_000
    elif what == "window":
        base["mode"] = "replay"
        group["win"] = 10**300
    else:
        group["ep"] = ["GET:/" + "x" * 100_000, group["n"]]
    outcome = check_refused_or_applied(ready, lambda: ingest(ready, json.dumps(base).encode()))
    assert outcome in ("refused", "applied")


def test_a_valid_call_after_the_fuzz_still_counts(ready: redis.Redis) -> None:
    """Control: the baseline payload itself is accepted (so refusals above are about the change)."""
    payload = baseline_payload(ready)
    payload["batch"] = "control"
    assert int(ingest(ready, json.dumps(payload).encode())[0]) == 7


def test_a_backfill_from_long_ago_does_not_block_the_server(ready: redis.Redis) -> None:
    """Found by the fuzz: sealing across a gap of years looped over every window in it (minutes, server BUSY).

    Open windows are listed per service, so skipping a long gap costs the windows that exist. Without
    that, the second ingest below keeps the server busy far beyond the client's socket timeout.
    """
    old, later = 946_684_800.0, 1_262_304_000.0  # 2000-01-01 and 2010-01-01: 63 million 5 s windows apart
    first = parse_metric({"service": "old", "endpoint": "GET:/a", "status_code": 200, "response_time": 1,
                          "timestamp": old})  # fmt: skip
    assert sink.ingest(ready, [first], replay=True).accepted == 1
    old_window = int(old // 5)
    assert ready.exists(f"{K.prefix}{{old}}:w:{old_window}") == 1
    second = parse_metric({"service": "old", "endpoint": "GET:/b", "status_code": 200, "response_time": 1,
                           "timestamp": later})  # fmt: skip
    result = sink.ingest(ready, [second], replay=True)
    # the window with data is sealed, then only the last 720 windows of the silence after it
    assert (result.accepted, result.sealed) == (1, 1 + 720)
    assert ready.exists(f"{K.prefix}{{old}}:w:{old_window}") == 0
    assert [int(w) for w in ready.zrange(f"{K.prefix}{{old}}:open", 0, -1)] == [int(later // 5)]
    state = {k.decode(): v.decode() for k, v in ready.hgetall(K.state("old")).items()}
    assert int(state["windows_skipped"]) == int(later // 5) - old_window - 1 - 720
    assert fingerprints.read(ready, "old", count=1)[0].get("requests") == 1
    assert ready.ping()


def test_a_replayed_batch_spanning_many_windows_seals_every_window_with_data(ready: redis.Redis) -> None:
    """Found while measuring memory: one replay call across more than 720 windows dropped all but the last 720."""
    start = 1_700_000_000.0
    events = [parse_metric({"service": "bulk", "endpoint": "GET:/a", "status_code": 200, "response_time": 1,
                            "timestamp": start + 5 * i}) for i in range(3000)]  # fmt: skip
    events.append(parse_metric({"service": "bulk", "endpoint": "GET:/a", "status_code": 200, "response_time": 1,
                                "timestamp": start + 5 * 3000 + 5 * 2000}))  # then a silence of 2,000 windows
    result = sink.ingest(ready, events, replay=True)
    assert result.accepted == 3001
    prints = fingerprints.read(ready, "bulk")
    assert sum(fp.get("requests") for fp in prints) == 3000  # every event before the clock is in a fingerprint
    assert len(prints) == 3000 + 720  # ... and the silence seals its last 720 windows
