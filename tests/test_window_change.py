"""Config changes never break ingest nor lose accepted events (real redis-server, short windows).

A window-length change carries open windows into windows of the new length whose first begins at or
after the last sealed window's end; a producer holding the old config is refused (STALECONFIG),
re-reads and resends; models and fingerprints of the old length are not used at the new one.
"""

from __future__ import annotations

import math
import time

import orjson
import pytest
import redis

from anomalydesk.cli import main as cli_main
from anomalydesk.config import SketchSettings
from anomalydesk.detect.service_state import service_states
from anomalydesk.detect.training_run import train_service, training_data
from anomalydesk.events import parse_metric
from anomalydesk.store import admin
from anomalydesk.store.encoding import Columns, config_from, encode
from anomalydesk.store.keys import Keys
from anomalydesk.store.sink import IngestSink, ingest, seal_all

pytestmark = pytest.mark.backends  # runs once per sketch backend (conftest.BOTH_BACKENDS)

K = Keys()
SERVICE = "svc"


def event(ts: float | None = None) -> object:
    return parse_metric({"service": SERVICE, "endpoint": "GET:/a", "status_code": 200, "response_time": 4,
                         "timestamp": ts})  # fmt: skip


class Producers:
    """A fresh producer and one that keeps the config it read before the change (until refused)."""

    def __init__(self, r: redis.Redis):
        self.r = r
        self.fresh, self.old = IngestSink(r), IngestSink(r)
        self.sent = 0

    def send(self, seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end:
            for sink, n in ((self.fresh, 8), (self.old, 4)):
                sink.add_many(event() for _ in range(n))
                sink.flush()
                self.sent += n
            seal_all(self.r)
            time.sleep(0.05)


def sealed_requests(r: redis.Redis) -> int:
    return sum(int(f[b"requests"]) for _id, f in r.xrange(K.fingerprints(SERVICE)))


def state(r: redis.Redis) -> dict[str, int]:
    raw = r.hgetall(K.state(SERVICE))
    return {k.decode(): int(float(v)) for k, v in raw.items() if k in (b"first", b"sealed", b"W", b"g", b"late")}


def test_live_window_change_from_1_to_3_s_loses_nothing_and_ids_keep_increasing(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=1))
    producers = Producers(r)
    producers.send(2.0)
    # a moment when the first 3-s window would start before the last sealed 1-s window ends
    deadline = time.time() + 10
    while (state(r)["sealed"] + 1) % 3 == 0 and time.time() < deadline:
        producers.send(0.2)
    last_sealed = state(r)["sealed"]
    assert (last_sealed + 1) % 3 != 0
    last_id = r.xrevrange(K.fingerprints(SERVICE), count=1)[0][0]
    done = admin.setup(r, SketchSettings(window_seconds=3), force=True)
    assert done["reset_services"] == [SERVICE]
    after = state(r)
    assert after["W"] == 3 and after["g"] == 1
    assert after["first"] * 3 >= last_sealed + 1  # the first new window begins at or after the old end
    producers.send(6.5)  # across two boundaries of the new length
    time.sleep(3.1)
    seal_all(r)
    time.sleep(3.1)
    seal_all(r)
    assert producers.fresh.last_error is None and producers.old.last_error is None
    assert state(r).get("late", 0) == 0
    assert sealed_requests(r) == producers.sent  # every event sent is in a sealed window
    entries = r.xrange(K.fingerprints(SERVICE))
    ids = [tuple(map(int, e[0].split(b"-"))) for e in entries]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    new = [f for i, f in entries if i > last_id]
    assert new and all(f[b"ws"] == b"3" for f in new)
    assert new[0][b"stretched"] == b"1"  # it holds the events between the old end and its own start


def test_a_producer_with_the_old_config_is_refused_then_resends(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=1))
    ingest(r, [event()])
    stale_cfg = config_from(admin.read_settings(r).settings, "functions", 0)
    admin.setup(r, SketchSettings(window_seconds=3), force=True)
    cols = Columns()
    cols.add_metric(event())  # type: ignore[arg-type]
    (service, body), = encode({SERVICE: cols}, stale_cfg, False, "b1")
    with pytest.raises(redis.ResponseError, match=r"^STALECONFIG"):
        r.fcall("ad_ingest", 1, K.state(SERVICE), K.prefix, service, body)
    assert not r.exists(K.tag(SERVICE) + ":batch:b1")  # refused before anything: the batch id is free
    sink = IngestSink(r)
    sink._writer.core._config = stale_cfg  # a producer that read the config before the change
    sink.add_many(event() for _ in range(25))
    result = sink.flush()
    assert result.accepted == 25 and sink._writer.config().window_s == 3


def test_sketch_size_change_recreates_sketches_and_keeps_every_event(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=1, cms_width=1000, cms_depth=4))
    producers = Producers(r)
    producers.send(1.5)
    admin.setup(r, SketchSettings(window_seconds=1, cms_width=2000, cms_depth=5), force=True)
    producers.send(1.5)
    time.sleep(1.1)
    seal_all(r)
    assert producers.old.last_error is None and state(r).get("late", 0) == 0
    assert sealed_requests(r) == producers.sent
    raw = r.hmget(K.state(SERVICE), "cms_w", "cms_d")
    assert [int(x) for x in raw] == [2000, 5]
    after = r.fcall("ad_query", 1, K.state(SERVICE), K.prefix, SERVICE, "endpoint", orjson.dumps(["GET:/a"]))
    assert 0 < after[0] <= producers.sent  # counts since the sketches were recreated


def test_replay_window_change_carries_open_windows_into_the_new_length(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings(window_seconds=1))
    t0 = 1_790_000_000.0
    first = ingest(r, [event(t0 + i / 10) for i in range(101)], replay=True)  # 10/s for 10 s, and one at t0+10
    assert first.accepted == 101
    admin.setup(r, SketchSettings(window_seconds=3), force=True)
    rest = ingest(r, [event(t0 + 10 + i / 10) for i in range(1, 100)], replay=True)
    assert rest.late == 0 and rest.accepted == 99
    seal_all(r, now=t0 + 30)
    assert sealed_requests(r) == 200 and state(r).get("late", 0) == 0
    windows = [(int(f[b"window"]), int(f[b"ws"])) for _id, f in r.xrange(K.fingerprints(SERVICE))]
    assert next(w for w, ws in windows if ws == 3) * 3 >= t0 + 9  # after the last sealed 1-s window
    assert math.floor((t0 + 19.9) / 3) in [w for w, ws in windows if ws == 3]  # the last event, 3-s windows


def test_after_a_window_change_the_service_learns_again_on_the_new_length_only(r: redis.Redis, redis_url: str,
                                                                              capsys: pytest.CaptureFixture[str]
                                                                              ) -> None:  # fmt: skip
    admin.setup(r, SketchSettings(window_seconds=1))
    t0 = 1_790_000_000.0
    ingest(r, [event(t0 + i / 5) for i in range(400 * 5)], replay=True)
    seal_all(r, now=t0 + 400)
    assert train_service(r, SERVICE).version == 1
    assert service_states(r)[SERVICE]["state"] == "ready"
    admin.setup(r, SketchSettings(window_seconds=3), force=True)
    state_now = service_states(r)[SERVICE]
    assert state_now["state"] == "learning" and "3 s" in state_now["reason"], state_now
    # `status` showed "svc v1" as if it scored; it says the model is not used, and why
    assert cli_main(["status", "--redis", redis_url]) == 0
    page = capsys.readouterr().out
    assert f"{SERVICE} v1 (not used)" in page and "counts 1-s windows" in page, page
    data = training_data(r, SERVICE)
    assert len(data) == 0 and data.other_length == 400  # the 1-s windows are not mixed in
    ingest(r, [event(t0 + 400 + i / 5) for i in range(900 * 5)], replay=True)
    seal_all(r, now=t0 + 1300)
    outcome = train_service(r, SERVICE)
    assert outcome.version == 2 and outcome.metadata["other_length_windows"] == 400
    assert service_states(r)[SERVICE]["state"] == "ready"
    assert cli_main(["status", "--redis", redis_url]) == 0
    assert "not used" not in capsys.readouterr().out


def test_a_service_setup_missed_is_brought_to_the_new_length_by_its_next_call(r: redis.Redis) -> None:
    """As if setup stopped after writing the new config, before configuring the services."""
    admin.setup(r, SketchSettings(window_seconds=1))
    producers = Producers(r)
    producers.send(1.2)
    r.hset(K.config, mapping={"window_seconds": 3, "config_gen": 1})  # what setup writes first
    producers.send(1.0)  # the fresh producer's calls meet NEEDCONFIG, configure the service, resend
    assert state(r)["W"] == 3 and state(r)["g"] == 1
    producers.send(3.5)
    time.sleep(3.1)
    seal_all(r)  # the ticker too runs on the new config
    assert producers.fresh.last_error is None and producers.old.last_error is None
    assert state(r).get("late", 0) == 0 and sealed_requests(r) == producers.sent


def test_a_backfill_after_a_window_change_leaves_the_time_live_traffic_covered_at_the_old_length(
        r: redis.Redis) -> None:  # fmt: skip
    """The live stream covered t0 … t0+400 in 1-s windows; after the change to 3 s its first window is
    the first 3-s one, and a backfill of t0+100 … t0+200 went to history as if nobody had seen that time:
    the plots and `stats` held both. It is late now, as it was before the change; earlier time is history."""
    admin.setup(r, SketchSettings(window_seconds=1))
    t0 = 1_790_000_000.0
    ingest(r, [event(t0 + i / 5) for i in range(400 * 5)], replay=True)
    seal_all(r, now=t0 + 400)
    admin.setup(r, SketchSettings(window_seconds=3), force=True)
    assert state(r)["first"] * 3 >= t0 + 399
    covered = ingest(r, [event(t0 + 100 + i / 5) for i in range(100 * 5)], replay=True)
    assert covered.late == 500 and covered.accepted == 0
    straddling = ingest(r, [event(t0 - 1.5), event(t0 + 0.5)], replay=True)  # one 3-s window reaching t0
    assert straddling.late == 2
    earlier = ingest(r, [event(t0 - 300 + i / 5) for i in range(290 * 5)], replay=True)
    assert earlier.late == 0 and earlier.accepted == 1450
    seal_all(r, now=t0 + 400)
    history = r.xrange(K.history(SERVICE, 3))
    assert history and all((int(f[b"window"]) + 1) * 3 <= t0 for _id, f in history)
    assert sum(int(f[b"requests"]) for _id, f in history) == 1450
    assert admin.covered_spans(r, [SERVICE])[SERVICE][0] == t0  # what `demo --fast` leaves out, too
