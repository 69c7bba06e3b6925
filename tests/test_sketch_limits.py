"""Sketch sizes are capped: by `SketchSettings` (so `setup` refuses before anything is written) and by the
gears library (so a client that skips the check is refused by Redis, whole batch, nothing written)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import redis

from anomalydesk import config, contract
from anomalydesk.cli import main as cli_main
from anomalydesk.config import SketchSettings
from anomalydesk.events import parse_metric
from anomalydesk.store import admin, sink
from anomalydesk.store.keys import Keys

pytestmark = pytest.mark.backends  # runs once per sketch backend (conftest.BOTH_BACKENDS)

K = Keys()
SERVICE = "newsvc"
LUA = Path(__file__).resolve().parents[1] / "gears" / "anomalydesk.lua"

TOO_BIG = [
    ({"cms_width": config.SKETCH_MAX_CMS_WIDTH + 1, "cms_depth": 1}, "cms_width", "1,000,000"),
    ({"cms_width": 100, "cms_depth": config.SKETCH_MAX_CMS_DEPTH + 1}, "cms_depth", "20"),
    ({"cms_width": 400_001, "cms_depth": 10}, "cms_width × cms_depth", "4,000,000"),
    ({"cms_error": 1e-7}, "cms_width 27182819 (from cms_error 1e-07)", "1,000,000"),
    ({"cms_prob": 1e-12}, "cms_depth 28 (from cms_prob 1e-12)", "20"),
    ({"filter_capacity": config.SKETCH_MAX_FILTER_CAPACITY + 1}, "filter_capacity", "10,000,000"),
    ({"filter_error": 1e-10}, "filter_error", "1e-09"),
    ({"topk": config.SKETCH_MAX_TOPK + 1}, "topk", "1,000"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "named", "limit"), TOO_BIG)
def test_settings_beyond_a_limit_name_the_field_and_the_limit(fields: dict, named: str, limit: str) -> None:
    with pytest.raises(ValueError, match="limit") as caught:
        SketchSettings(**fields)
    assert named in str(caught.value) and limit in str(caught.value)


def test_settings_at_the_limits_are_accepted() -> None:
    at = SketchSettings(cms_width=config.SKETCH_MAX_CMS_COUNTERS // config.SKETCH_MAX_CMS_DEPTH,
                        cms_depth=config.SKETCH_MAX_CMS_DEPTH, filter_capacity=config.SKETCH_MAX_FILTER_CAPACITY,
                        filter_error=config.SKETCH_MIN_FILTER_ERROR, topk=config.SKETCH_MAX_TOPK)  # fmt: skip
    assert at.cms_dims() == (200_000, 20)


def test_the_lua_limits_mirror_config() -> None:
    source = LUA.read_text(encoding="utf-8")

    def lua(name: str) -> float:
        match = re.search(rf"^local {name} = ([0-9.e-]+)$", source, re.MULTILINE)
        assert match, f"{name} not found in {LUA.name}"
        return float(match.group(1))

    assert lua("MAX_CMS_WIDTH") == config.SKETCH_MAX_CMS_WIDTH
    assert lua("MAX_CMS_DEPTH") == config.SKETCH_MAX_CMS_DEPTH
    assert lua("MAX_CMS_COUNTERS") == config.SKETCH_MAX_CMS_COUNTERS
    assert lua("MAX_FILTER_CAPACITY") == config.SKETCH_MAX_FILTER_CAPACITY
    assert lua("MIN_FILTER_ERROR") == config.SKETCH_MIN_FILTER_ERROR
    assert lua("MAX_TOPK") == config.SKETCH_MAX_TOPK
    assert lua("MAX_WINDOW_SECONDS") == contract.MAX_WINDOW_SECONDS == 86_400


@pytest.mark.parametrize(("flags", "named"), [
    (["--cms-width", "2000000", "--cms-depth", "2"], "cms_width 2000000 exceeds the limit 1,000,000"),
    (["--cms-error", "0.0000001", "--cms-prob", "0.01"], "cms_width 27182819 (from cms_error 1e-07)"),
    (["--cf-capacity", "20000000"], "filter_capacity 20,000,000 exceeds the limit 10,000,000"),
    (["--topk", "100000"], "topk 100,000 exceeds the limit 1,000"),
    # the library refuses windows over a day: setup once saved the length, then failed to configure the
    # services with a traceback, and every ingest after it answered "cfg.W must be an integer …"
    (["--window", "100000"], "window_seconds 100,000 is outside 1..86,400"),
])  # fmt: skip
def test_setup_refuses_huge_sizes_before_writing(r: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str],
                                                 flags: list[str], named: str) -> None:  # fmt: skip
    assert cli_main(["setup", "--redis", redis_url]) == 0
    before = r.hgetall(K.config)
    code = cli_main(["setup", "--redis", redis_url, *flags, "--force"])
    err = capsys.readouterr().err
    assert code != 0
    assert named in err, err
    assert r.hgetall(K.config) == before


# --- the library refuses what a client that skips the check would send --------------------------
def payload(r: redis.Redis, **cfg: Any) -> bytes:
    """A small valid batch for a new service, with cfg fields replaced."""
    writer = sink.Writer(r, K)
    events = [parse_metric({"service": SERVICE, "endpoint": f"GET:/x/{i}", "status_code": 200, "response_time": 4.0,
                            "timestamp": 1_700_000_000.0 + i}) for i in range(4)]  # fmt: skip
    [(_, body)] = sink.encode(sink.columns_of(events), writer.config(), True, None)
    decoded = json.loads(body)
    decoded["cfg"].update(cfg)
    return json.dumps(decoded).encode()


def ingest(r: redis.Redis, body: bytes) -> Any:
    return r.fcall("ad_ingest", 1, K.state(SERVICE), K.prefix, SERVICE, body)


@pytest.mark.parametrize(("cfg", "message"), [
    ({"cw": 1_000_001}, "cfg.cw (Count-Min Sketch width) must be an integer in 1..1000000"),
    ({"cd": 21}, "cfg.cd (Count-Min Sketch depth) must be an integer in 1..20"),
    ({"cw": 1_000_000, "cd": 5}, "cfg.cw * cfg.cd (Count-Min Sketch counters) must be at most 4000000"),
    ({"fc": 10_000_001}, "cfg.fc (filter capacity) must be an integer in 1..10000000"),
    ({"fe": 1e-12}, "cfg.fe (filter error) must be a number in [1e-09, 1)"),
    ({"tk": 1001}, "cfg.tk (Top-K k) must be an integer in 1..1000"),
    ({"W": 86_401}, "cfg.W (window length) must be an integer number of seconds in 1..86400"),
])  # fmt: skip
def test_the_library_refuses_huge_sizes_for_a_new_service(r: redis.Redis, cfg: dict, message: str) -> None:
    admin.setup(r, SketchSettings())
    before = {key: r.dump(key) for key in r.scan_iter()}
    with pytest.raises(redis.ResponseError) as caught:
        ingest(r, payload(r, **cfg))
    assert str(caught.value) == f"anomalydesk: invalid batch: {message}"
    assert {key: r.dump(key) for key in r.scan_iter()} == before
    assert r.exists(K.state(SERVICE)) == 0


def test_the_library_accepts_sizes_at_the_limits(r: redis.Redis) -> None:
    admin.setup(r, SketchSettings())
    reply = ingest(r, payload(r, cw=200_000, cd=20, fc=1_000_000, fe=1e-9, tk=1000))
    assert reply[0] == 4
    state = r.hgetall(K.state(SERVICE))
    assert (state[b"cms_w"], state[b"cms_d"], state[b"topk_k"]) == (b"200000", b"20", b"1000")
