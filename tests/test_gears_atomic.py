"""Fault injection into every gears function (gears/anomalydesk.lua), on both sketch backends.

Each case puts one fault on the server (a key of the wrong type, a stream id in the way) or into one argument
(out of range, used only at the last write step), makes the call and checks it is refused with EVERY key as
it was (a type-aware snapshot); then it removes the fault and sends the SAME call again (same batch id): it
succeeds, is not answered as a duplicate, and its events count. W = 1 s in replay mode (the payload's clock),
so every case takes milliseconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis

from anomalydesk.config import SketchSettings
from anomalydesk.store import admin, sketches
from anomalydesk.store.encoding import config_from
from anomalydesk.store.gears import ensure_library, library_source
from anomalydesk.store.keys import Keys

pytestmark = pytest.mark.backends  # runs once per sketch backend (conftest.BOTH_BACKENDS)

K = Keys()
SVC = "atom"
RAW = [["GET:/a", 200, 1.0, None]]
Snapshot = dict[bytes, tuple[str, Any, bool]]


# --- calls ------------------------------------------------------------------------------------------------
def key(suffix: str, service: str = SVC) -> str:
    return f"{K.tag(service)}:{suffix}"


BACKEND = {"be": "functions"}  # the sketch backend of the test running now (set by _on_the_backend)


@pytest.fixture(autouse=True)
def _on_the_backend(sketch_backend: str) -> None:
    BACKEND["be"] = sketch_backend


def cfg(g: int = 0, W: int = 1, **over: Any) -> dict[str, Any]:
    return {**config_from(SketchSettings(window_seconds=W), BACKEND["be"], g).payload_cfg, **over}


def filter_key(suffix: str) -> str:
    """The filter's first layer (`bf:1`) is the one RedisBloom key `bf` on the native backend."""
    return "bf" if suffix == "bf:1" and BACKEND["be"] == "native" else suffix


def window(win: int, ep: str) -> dict[str, Any]:
    return {"win": win, "n": 2, "e4": 0, "e5": 1, "ls": 15.0, "h": [20, 2], "ep": [ep, 2], "st": [200, 1, 503, 1]}


def ingest(r: redis.Redis, wins: list[int], batch: str = "b-1", c: dict | None = None, service: str = SVC,
           ep: str = "GET:/a", **extra: Any) -> list[int]:
    body = {"v": 1, "mode": "replay", "batch": batch, "sparse": 0, "cfg": c or cfg(),
            "w": [window(w, ep) for w in wins], "k": [], **extra}
    return r.fcall("ad_ingest", 1, K.state(service), K.prefix, service, json.dumps(body))


def seal(r: redis.Redis, now: str = "", c: dict | str | None = None, max_silent: Any = 720, hold: Any = 0,
         service: str = SVC) -> int:
    body = c if isinstance(c, str) else json.dumps(c or cfg())
    return r.fcall("ad_seal", 1, K.state(service), K.prefix, service, body, now, max_silent, hold)


def configure(r: redis.Redis, c: dict, service: str = SVC) -> int:
    return r.fcall("ad_configure", 1, K.state(service), K.prefix, service, json.dumps(c))


def query(r: redis.Redis, what: str, items: list) -> Any:
    return r.fcall("ad_query", 1, K.state(SVC), K.prefix, SVC, what, json.dumps(items))


# --- snapshot and the check -------------------------------------------------------------------------------
def snapshot(r: redis.Redis) -> Snapshot:
    """Every key's full content by type, and whether it has a TTL (a HyperLogLog without its cache bytes)."""
    out: Snapshot = {}
    for name in sorted(r.scan_iter(count=1000)):
        kind = r.type(name).decode()
        if kind == "hash":
            value: Any = sorted(r.hgetall(name).items())
        elif kind == "zset":
            value = r.zrange(name, 0, -1, withscores=True)
        elif kind == "stream":
            value = (r.xrange(name), r.xinfo_stream(name)["last-generated-id"])
        elif kind == "string":
            raw = r.get(name)
            value = raw[:5] + raw[16:] if raw.startswith(b"HYLL") else raw  # PFCOUNT rewrites bytes 8..15
        elif kind == "list":
            value = r.lrange(name, 0, -1)
        elif kind == "set":
            value = sorted(r.smembers(name))
        else:
            value = r.dump(name)
        out[name] = (kind, value, r.pttl(name) >= 0)
    return out


def diff(before: Snapshot, after: Snapshot) -> dict[bytes, Any]:
    """The keys that differ; for a hash on both sides only its changed fields (before, after)."""
    out: dict[bytes, Any] = {}
    for k in sorted(before.keys() | after.keys()):
        a, b = before.get(k), after.get(k)
        if a != b and a and b and a[0] == b[0] == "hash":
            fa, fb = dict(a[1]), dict(b[1])
            out[k] = {f: (fa.get(f), fb.get(f)) for f in sorted(fa.keys() | fb.keys()) if fa.get(f) != fb.get(f)}
        elif a != b:
            out[k] = (a, b)
    return out


def refused_then_retried(r: redis.Redis, call: Callable[[], Any], fix: Callable[[], object] = lambda: None,
                         retry: Callable[[], Any] | None = None, *, events: int | None = None,
                         service: str = SVC, error: str = "anomalydesk", defect: str = "") -> Any:
    """`call` (with the fault in place) must be refused and change nothing; after `fix`, `retry` (default: the
    same call) must succeed; for an ingest (`events` given) not as a duplicate, with `events` counted."""
    before = snapshot(r)
    counted = int(r.hget(K.state(service), "events") or 0)
    try:
        call()
    except redis.ResponseError as err:
        refused = str(err)
    else:
        pytest.fail("the call with the fault in place was accepted")
    changed = diff(before, snapshot(r))
    assert not changed, f"{defect}the refused call ({refused}) wrote: {str(changed)[:1500]}"
    assert refused.startswith(error), f"not a clear refusal: {refused}"
    fix()
    reply = (retry or call)()
    if events is not None:
        assert reply[3] == 0, "the retry was answered as a duplicate: the failed call recorded its batch id"
        assert reply[0] == events, reply
        assert int(r.hget(K.state(service), "events")) == counted + events
    return reply


WRONG: dict[str, Callable[[redis.Redis, str], object]] = {
    "list": lambda r, k: r.rpush(k, "x"),
    "hash": lambda r, k: r.hset(k, "x", "1"),
    "string": lambda r, k: r.set(k, "not a hyperloglog"),
}


def inject(r: redis.Redis, name: str, kind: str) -> Callable[[], None]:
    """Replace `name` by a value of type `kind` (an existing value is kept aside); returns the fix."""
    had = r.exists(name)
    if had:
        r.rename(name, name + ":aside")
    WRONG[kind](r, name)

    def fix() -> None:
        r.delete(name)
        if had:
            r.rename(name + ":aside", name)
    return fix


@pytest.fixture()
def svc(r: redis.Redis) -> redis.Redis:
    """A configured service with window 100 open (replay clock 100, nothing sealed yet)."""
    ensure_library(r)
    admin.setup(r, SketchSettings(window_seconds=1))
    assert ingest(r, [100], batch="base")[0] == 2
    return r


# --- the checks can fail ------------------------------------------------------------------------------------
def test_the_snapshot_sees_every_write_and_the_check_a_half_done_call(r: redis.Redis) -> None:
    for write in (lambda: r.hset("h", "a", 1), lambda: r.zadd("z", {"m": 1}), lambda: r.xadd("s", {"a": 1}),
                  lambda: r.pfadd("hll", "a"), lambda: r.set("str", "v"), lambda: r.rpush("l", "a"),
                  lambda: r.sadd("set", "a")):
        write()
    base = snapshot(r)
    r.pfcount("hll")  # rewrites the cached cardinality only
    assert snapshot(r) == base
    writes = [lambda: r.hset("h", "b", 2), lambda: r.zadd("z", {"m": 2}), lambda: r.xdel("s", r.xadd("s", {"b": 1})),
              lambda: r.pfadd("hll", "b"), lambda: r.expire("str", 60), lambda: r.rpush("l", "b"),
              lambda: r.sadd("set", "b"), lambda: r.set("new", 1)]
    for write in writes:
        write()
        assert snapshot(r) != base
        base = snapshot(r)

    def half_done() -> None:
        r.hset(K.state(SVC), "events", 5)  # a deliberate extra HSET before the refusal
        raise redis.ResponseError("anomalydesk: refused")
    with pytest.raises(AssertionError, match="wrote"):
        refused_then_retried(r, half_done)


# --- ad_ingest ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("suffix", "kind"), [
    ("w:102", "list"), ("w:100", "list"), ("we:101", "string"), ("wh:101", "string"), ("open", "hash"),
    ("cms:ep", "hash"), ("cms:st", "list"), ("topk", "string"), ("bf:1", "hash"), ("fp", "hash"), ("raw", "hash"),
])  # fmt: skip
def test_ingest_with_a_wrong_typed_key(svc: redis.Redis, suffix: str, kind: str) -> None:
    """Windows 101, 102 (and a raw event): 102 makes 100 and 101 sealable, so every write step runs."""
    suffix = filter_key(suffix)
    fix = inject(svc, key(suffix), kind)
    reply = refused_then_retried(svc, lambda: ingest(svc, [101, 102], raw=RAW), fix, events=4)
    assert reply[2] == 2 and len(svc.xrange(key("fp"))) == 2 and svc.xlen(key("raw")) == 1


@pytest.mark.parametrize(("suffix", "kind"), [("hist:1", "hash"), ("w:90", "list"), ("wh:95", "string")])
def test_ingest_of_history_with_a_wrong_typed_key(svc: redis.Redis, suffix: str, kind: str) -> None:
    """Windows 100..110 sealed up to 109; a batch of windows 90 and 95 (before `first`) seals history 90..94."""
    assert ingest(svc, list(range(101, 111)), batch="live")[2] == 10
    fix = inject(svc, key(suffix), kind)
    reply = refused_then_retried(svc, lambda: ingest(svc, [90, 95]), fix, events=4)
    assert reply[6] == 5 and len(svc.xrange(key("hist:1"))) == 5


@pytest.mark.parametrize("stream", ["fp", "hist:1"])
def test_ingest_refused_by_a_stream_id_in_the_way(svc: redis.Redis, stream: str) -> None:
    if stream == "hist:1":
        ingest(svc, list(range(101, 111)), batch="live")
    svc.xadd(key(stream), {"x": 1}, id="99999999999-1")  # after every window sealed below
    wins = [101, 102] if stream == "fp" else [90, 95]
    reply = refused_then_retried(svc, lambda: ingest(svc, wins), lambda: svc.delete(key(stream)), events=4)
    assert reply[2 if stream == "fp" else 6] > 0


@pytest.mark.parametrize(("field", "value"), [("rm", 0), ("rm", -5), ("rm", 1.5), ("ret", 0), ("ret", -1)])
def test_ingest_with_a_last_step_argument_out_of_range(svc: redis.Redis, field: str, value: float) -> None:
    """cfg.rm sizes only the raw stream's XADD, cfg.ret only the fingerprint XADDs: both come last."""
    refused_then_retried(svc, lambda: ingest(svc, [101, 102], c=cfg(**{field: value}), raw=RAW),
                         retry=lambda: ingest(svc, [101, 102], raw=RAW), events=4)


def test_ingest_that_adds_a_bloom_layer_over_a_wrong_typed_key(svc: redis.Redis) -> None:
    """cfg.fc = 1: the first endpoint fills layer 1, so a new endpoint makes the call create layer 2 (`:bf:2`).
    Native: RedisBloom grows its filter inside its one key, so the call only has to succeed, and the filter
    has a second sub-filter after it."""
    small = cfg(fc=1)
    assert ingest(svc, [100], batch="base", c=small, service="bloom")[0] == 2
    if BACKEND["be"] == "native":
        assert ingest(svc, [101], c=small, service="bloom", ep="GET:/b")[0] == 2
        assert sketches.info(svc, "bloom")["filter"]["layers"] == 2
        return
    fix = inject(svc, key("bf:2", "bloom"), "hash")
    refused_then_retried(svc, lambda: ingest(svc, [101], c=small, service="bloom", ep="GET:/b"), fix, events=2,
                         service="bloom", defect=(
                             "a full last bloom layer makes bloom_add() create :bf:<bf_layers+1> in the middle of the "
                             "writes, so that key must be checked first: "))


def test_a_batch_id_is_recorded_by_success_only(svc: redis.Redis) -> None:
    fix = inject(svc, key("w:101"), "list")
    refused_then_retried(svc, lambda: ingest(svc, [101, 102]), fix, events=4)  # a failed call left no id
    assert svc.ttl(key("batch:b-1")) > 0
    before, state = snapshot(svc), svc.hgetall(key("state"))
    assert ingest(svc, [101, 102]) == [0, 0, 0, 1, 0, 0, 0]
    assert set(diff(before, snapshot(svc))) == {key("state").encode()}
    after = svc.hgetall(key("state"))
    assert int(after.pop(b"batches_duplicate")) == int(state.pop(b"batches_duplicate", 0)) + 1
    assert after == state


# --- ad_seal ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("suffix", "kind"), [("w:100", "list"), ("we:100", "string"), ("wh:100", "string"),
                                              ("fp", "hash")])
def test_seal_with_a_wrong_typed_key(svc: redis.Redis, suffix: str, kind: str) -> None:
    fix = inject(svc, key(suffix), kind)
    assert refused_then_retried(svc, lambda: seal(svc, "103"), fix) == 3  # window 100 and silent 101, 102
    assert [e[1][b"requests"] for e in svc.xrange(key("fp"))] == [b"2", b"0", b"0"]


@pytest.mark.parametrize("args", [
    {"max_silent": -1}, {"max_silent": 1_000_001}, {"max_silent": "x"}, {"hold": -1}, {"hold": "inf"},
    {"hold": "nan"}, {"now": "abc"}, {"now": "101.5"}, {"now": "-1"}, {"now": "100000000001"},
    {"c": {**cfg(), "W": 0}}, {"c": cfg(ret=0)}, {"c": "{"}, {"c": "[]"},  # W 0: SketchSettings refuses it
], ids=["silent-1", "silent-big", "silent-x", "hold-1", "hold-inf", "hold-nan", "now-abc", "now-frac", "now-1",
        "now-big", "cfg-W0", "cfg-ret0", "cfg-json", "cfg-list"])  # fmt: skip
def test_seal_with_an_argument_out_of_range(svc: redis.Redis, args: dict[str, Any]) -> None:
    kwargs = {"now": "103", **args}
    assert refused_then_retried(svc, lambda: seal(svc, **kwargs), retry=lambda: seal(svc, "103")) == 3


def test_seal_of_a_far_window_at_a_longer_window_length(svc: redis.Redis) -> None:
    """W = 2: windows go up to 1e11 / 2; a now_window beyond that must be refused before anything is sealed."""
    last = 50_000_000_000  # the last window a W = 2 payload may name (MAX_EPOCH_S / W)
    assert ingest(svc, [last - 1], c=cfg(W=2), service="far")[0] == 2
    refused_then_retried(svc, lambda: seal(svc, str(last + 2), cfg(W=2), 10, service="far"),
                         retry=lambda: seal(svc, str(last), cfg(W=2), 10, service="far"), defect=(
                             "now_window must be bounded by MAX_EPOCH_S / W: a window past it gets the entry id "
                             "'1e+14-1' (Lua's %.14g) and XADD fails after earlier windows were sealed: "))


# --- ad_configure -------------------------------------------------------------------------------------------------
@pytest.fixture()
def rewindow(svc: redis.Redis) -> redis.Redis:
    """Windows 100..104 sealed, 105 open, history window 90 open: W 1 → 3 moves 105 into 35, seals 90."""
    assert ingest(svc, [105], batch="live")[2] == 5
    assert ingest(svc, [90], batch="hist")[0] == 2
    return svc


@pytest.mark.parametrize(("suffix", "kind"), [
    ("w:105", "list"), ("we:105", "string"), ("wh:105", "string"), ("w:35", "list"), ("rw:w:105", "list"),
    ("rw:we:105", "string"), ("rw:wh:105", "string"), ("hist:3", "hash"), ("hist:1", "hash"), ("w:90", "list"),
])  # fmt: skip
def test_configure_a_window_length_change_with_a_wrong_typed_key(rewindow: redis.Redis, suffix: str,
                                                                 kind: str) -> None:
    fix = inject(rewindow, key(suffix), kind)
    assert refused_then_retried(rewindow, lambda: configure(rewindow, cfg(g=1, W=3)), fix) == 1
    state = rewindow.hgetall(key("state"))
    assert (state[b"W"], state[b"g"], state[b"first"]) == (b"3", b"1", b"35")
    assert rewindow.hget(key("w:35"), "n") == b"2" and len(rewindow.xrange(key("hist:1"))) == 1
    assert configure(rewindow, cfg(g=1, W=3)) == 0


def test_configure_with_an_invalid_config(rewindow: redis.Redis) -> None:
    assert refused_then_retried(rewindow, lambda: configure(rewindow, cfg(g=1, W=3, ret=0)),
                                retry=lambda: configure(rewindow, cfg(g=1, W=3))) == 1


def test_a_stale_config_is_refused_by_every_function(svc: redis.Redis) -> None:
    assert configure(svc, cfg(g=2)) == 1
    old, new = cfg(g=1), cfg(g=2)
    refused_then_retried(svc, lambda: configure(svc, old), retry=lambda: configure(svc, new), error="STALECONFIG")
    refused_then_retried(svc, lambda: ingest(svc, [101, 102], c=old), retry=lambda: ingest(svc, [101, 102], c=new),
                         events=4, error="STALECONFIG")
    assert refused_then_retried(svc, lambda: seal(svc, "105", old), retry=lambda: seal(svc, "105", new),
                                error="STALECONFIG") == 3


# --- a call that brings a service to a new config must not apply it and then fail --------------------------
@pytest.mark.parametrize("case", ["first call", "newer generation", "new window length", "seal, newer generation"])
def test_a_refused_call_does_not_apply_its_config(svc: redis.Redis, case: str) -> None:
    service = "fresh" if case == "first call" else SVC
    fix = inject(svc, key("w:100" if case == "first call" else "fp", service), "list")
    calls = {"first call": lambda: ingest(svc, [100], service="fresh"),
             "newer generation": lambda: ingest(svc, [101, 102], c=cfg(g=1)),
             "new window length": lambda: ingest(svc, [40], c=cfg(g=1, W=3)),
             "seal, newer generation": lambda: seal(svc, "103", cfg(g=1))}
    events = {"first call": 2, "newer generation": 4, "new window length": 2}.get(case)
    if case == "new window length":  # moving windows is ad_configure's alone: the call asks for it, writes nothing
        refused_then_retried(svc, calls[case], fix, error="NEEDCONFIG", events=events,
                             retry=lambda: (configure(svc, cfg(g=1, W=3)), calls[case]())[1])
        return
    refused_then_retried(svc, calls[case], fix, service=service, events=events, defect=(
        "ad_ingest/ad_seal must check everything before applying a new config with their writes: "))


# --- ad_query, ad_version ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("what", "items", "suffix", "kind", "answer"), [
    ("endpoint", ["GET:/a"], "cms:ep", "hash", [2]), ("status", [503], "cms:st", "list", [1]),
    ("interaction", ["GET:/a", "GET:/b"], "bf:1", "hash", [1, 0]), ("topk", [], "topk", "string", [b"GET:/a", b"2"]),
])  # fmt: skip
def test_query_with_a_wrong_typed_sketch(svc: redis.Redis, what: str, items: list, suffix: str, kind: str,
                                         answer: list, sketch_backend: str) -> None:
    suffix = filter_key(suffix)
    if sketch_backend == "native":  # TOPK.LIST answers integer counts
        answer = [b"GET:/a", 2] if what == "topk" else answer
    fix = inject(svc, key(suffix), kind)
    assert refused_then_retried(svc, lambda: query(svc, what, items), fix, error="WRONGTYPE") == answer
    before = snapshot(svc)
    assert query(svc, what, items) == answer and snapshot(svc) == before


def test_version_writes_nothing(svc: redis.Redis) -> None:
    before = snapshot(svc)
    shipped = str(library_source()[1]).encode()
    assert svc.fcall("ad_version", 0) == shipped and svc.fcall_ro("ad_version", 0) == shipped
    assert snapshot(svc) == before
