"""The contract between the Python side and the gears library (`gears/anomalydesk.lua`), in one place.

What both sides must agree on lives here and nowhere else:
- the constants the library uses (name lengths, caps, limits, error codes, the latency histogram's
  layout, the library version): the library's block between `-- BEGIN CONTRACT` and `-- END CONTRACT`
  is generated from `LUA_CONSTANTS` (`python -m anomalydesk.contract --write`), and
  tests/test_contract.py fails while the block and this module differ;
- the per-service key layout (`KEY_SUFFIXES`), which `store.keys.Keys` and the library's `keyset` both
  build names from;
- the ingest payload (`IngestPayload` and its parts) and the `ad_ingest` reply (`IngestReply`);
- the library version: `LIB_VERSION`, with the SHA-256 of the library source each version was
  released with (`LIBRARY_SHA256`): a change to the source without a new version fails the contract test,
  so two different libraries never share a version on one server.

Imports nothing of AnomalyDesk: `config`, `fingerprint`, `store` and `ingest` import from here.
"""

from __future__ import annotations

import hashlib
import re
import sys
from typing import Any, Literal, NamedTuple, TypedDict

LIB_VERSION = 12
# the library source of each version (sha256 of gears/anomalydesk.lua as committed)
LIBRARY_SHA256: dict[int, str] = {
    3: "660068e4fb39de9cb91972f3d426668aaeecb5ed990e37f41fa98ecaed95f3df",
    4: "4c0f5ee26d0a76f8f4d81e0bd634b66b0d11327aa476e8b2da250a70742e91ba",
    5: "ddecc67284d43fdbf46603d90c2c48255d40b6f477f9a40dcccea3ae8954540d",
    6: "8c2d744f783e1d3d824a2be2895feaba1311b5191a2370b8ce34a4adda812fbf",
    7: "db2ccc4e9a4daffdede2dad88f38e1cd03b34b4a492bc093ec4f8cb57e142590",
    8: "a7da56fe6fb0b5ca73fb7c7cf329801e1439b85fcfa4c53388893677665d2d93",
    9: "3b018807e05757a79981aa17621fe5c4454de99a66cdd22493f1d3d2caf094a4",
    10: "de0e371141f339f3d48eb122911e1f3a24de18175147cdb03a3c900849196703",
    11: "1bd6ddb7a1df5c530262ad93fcb8592fafee13a10cec70bfe06347442a478b97",
    12: "48718c87fec05904d52e4de416a70480cfc50a0a5a6c43d422120e19d6479636",
}

# --- names, caps and limits -------------------------------------------------------------------
MAX_SERVICE_NAME = 64  # [A-Za-z0-9._-], so a service is one Redis Cluster hash tag
SERVICE_PATTERN = "^[A-Za-z0-9._-]+$"
MAX_ENDPOINT = 256  # after normalisation ("METHOD:/path")
MAX_KPI_NAME = 128
WINDOW_ENDPOINTS_CAP = 512  # distinct endpoints counted exactly per window; the rest as OTHER_ENDPOINT
OTHER_ENDPOINT = "(other)"
BATCH_TTL_SECONDS = 600  # a repeated batch id within this time is answered as a duplicate
MAX_SILENT_WINDOWS_SEALED = 720  # a long silence seals at most this many zero-traffic windows
# Top-K: Space-Saving counters (functions) or HeavyKeeper width (native) = max(TOPK_MIN_COUNTERS, 10·k)
TOPK_MIN_COUNTERS = 100
TOPK_DEPTH = 7  # native HeavyKeeper rows
TOPK_DECAY = "0.9"  # native HeavyKeeper decay (a string: Lua passes it on as written)
# latency histogram: bucket 0 holds [0, LAT_MIN_MS); bucket b ≥ 1 a 1/LAT_BUCKETS_PER_OCTAVE octave
LAT_MIN_MS = 0.1
LAT_BUCKETS_PER_OCTAVE = 8
LAT_MAX_BUCKET = 200  # 0.1 ms · 2**(200/8) ≈ 56 minutes; anything slower lands here
# bounds that keep every later write valid: counts and windows stay integers Redis accepts (Lua prints
# numbers ≥ 1e14 in exponent form), sums stay finite when added up, no list is longer than unpack() spreads
MAX_COUNT = 1e12
MAX_SUM = 1e18
MAX_PAIRS = 4000  # the sink never sends more than 2,000 endpoints in one call
MAX_EPOCH_S = 1e11
MAX_WINDOW_SECONDS = 86_400  # a window is at most a day (`SketchSettings` refuses longer ones up front)
# sketch sizes a config may choose (`SketchSettings` refuses larger ones before anything is written)
MAX_CMS_WIDTH = 1_000_000
MAX_CMS_DEPTH = 20
MAX_CMS_COUNTERS = 4_000_000  # width × depth: 16 MiB of u32 counters per sketch
MAX_FILTER_CAPACITY = 10_000_000
MIN_FILTER_ERROR = 1e-9
MAX_TOPK = 1_000
PAYLOAD_VERSION = 1  # the payload's "v"
FINGERPRINT_SCHEMA = 1  # the fingerprint entries' "schema"
# the first word of a retryable refusal (the rest of the message says why)
STALE_CONFIG = "STALECONFIG"  # the caller's config generation is older: re-read ad:config, re-encode, resend
NEED_CONFIG = "NEEDCONFIG"  # a newer config changes the window length: ad_configure first, then resend

# Lua local name → value, in the order of the generated block
LUA_CONSTANTS: dict[str, int | float | str] = {
    "LIB_VERSION": str(LIB_VERSION),
    "MAX_BUCKET": LAT_MAX_BUCKET,
    "MAX_NAME": MAX_ENDPOINT,
    "MAX_KPI_NAME": MAX_KPI_NAME,
    "MAX_SERVICE_NAME": MAX_SERVICE_NAME,
    "SERVICE_PATTERN": SERVICE_PATTERN,
    "WINDOW_ENDPOINTS_CAP": WINDOW_ENDPOINTS_CAP,
    "OTHER_ENDPOINT": OTHER_ENDPOINT,
    "TOPK_MIN_COUNTERS": TOPK_MIN_COUNTERS,
    "TOPK_DEPTH": TOPK_DEPTH,
    "TOPK_DECAY": TOPK_DECAY,
    "BATCH_TTL": BATCH_TTL_SECONDS,
    "MAX_SILENT": MAX_SILENT_WINDOWS_SEALED,
    "LAT_MIN_MS": LAT_MIN_MS,
    "LAT_PER_OCTAVE": LAT_BUCKETS_PER_OCTAVE,
    "MAX_COUNT": MAX_COUNT,
    "MAX_SUM": MAX_SUM,
    "MAX_PAIRS": MAX_PAIRS,
    "MAX_EPOCH_S": MAX_EPOCH_S,
    "MAX_WINDOW_SECONDS": MAX_WINDOW_SECONDS,
    "MAX_CMS_WIDTH": MAX_CMS_WIDTH,
    "MAX_CMS_DEPTH": MAX_CMS_DEPTH,
    "MAX_CMS_COUNTERS": MAX_CMS_COUNTERS,
    "MAX_FILTER_CAPACITY": MAX_FILTER_CAPACITY,
    "MIN_FILTER_ERROR": MIN_FILTER_ERROR,
    "MAX_TOPK": MAX_TOPK,
    "PAYLOAD_VERSION": PAYLOAD_VERSION,
    "FINGERPRINT_SCHEMA": FINGERPRINT_SCHEMA,
    "STALE": STALE_CONFIG,
    "NEED_CONFIG": NEED_CONFIG,
}

# --- the per-service key layout ------------------------------------------------------------------
# every per-service key is <prefix>{<service>}<suffix>[<argument>]: the hash tag keeps one service in
# one Redis Cluster slot, so one FCALL touches one slot
KEY_SUFFIXES: dict[str, str] = {
    "state": ":state",  # hash: window bookkeeping, config generation, the sketches' sizes
    "fp": ":fp",  # stream of sealed live fingerprints, entry id = window start in ms
    "hist": ":hist:",  # + window length: stream of sealed history fingerprints
    "open": ":open",  # sorted set of the windows with aggregates not sealed yet
    "win": ":w:",  # + window: hash of one open window's aggregates
    "we": ":we:",  # + window: hash of one open window's exact endpoint counts
    "wh": ":wh:",  # + window: HyperLogLog of one open window's endpoints
    "wn": ":wn:",  # + window: set of the endpoints first seen in one open live window (history may clear them)
    "tmp": ":rw:",  # + kind:window: a window on its way into a new window length (inside ad_configure)
    "cms_ep": ":cms:ep",  # Count-Min Sketch of endpoints
    "cms_st": ":cms:st",  # Count-Min Sketch of status codes
    "bf": ":bf",  # the interaction filter (functions: + ":<layer>")
    "topk": ":topk",  # Top-K endpoints
    "topk_order": ":topk:order",  # sorted set inside one ad_ingest only: names in Redis's byte order
    "raw": ":raw",  # stream of sampled raw events (full-fidelity mode)
    "batch": ":batch:",  # + batch id: string with a TTL, a batch already applied
}


# --- the ingest payload and reply ------------------------------------------------------------------
class PayloadConfig(TypedDict):
    """`cfg`: what the client read from `ad:config`, sent with every call."""

    g: int  # config generation
    W: int  # window seconds
    cw: int  # Count-Min width
    cd: int  # Count-Min depth
    fc: int  # filter capacity
    fe: float  # filter error
    tk: int  # Top-K k
    ret: int  # fingerprints kept per stream
    be: Literal["native", "functions"]
    rm: int  # raw stream length


class PayloadWindow(TypedDict):
    """One window's pre-aggregated events in `w`."""

    win: int  # window index (ignored in live mode)
    n: int  # requests
    e4: int  # 4xx
    e5: int  # 5xx
    ls: float  # latency sum, ms
    h: list[int]  # [bucket, count, ...]
    ep: list[Any]  # [endpoint, count, ...]
    st: list[int]  # [status, count, ...]


# `k`: [window, name, sum, count, out_of_range, low|None, high|None, min, max]
KpiRow = list[Any]
# `raw`: [endpoint, status, latency_ms, timestamp|None]
RawEvent = list[Any]


class IngestPayload(TypedDict, total=False):
    """The JSON argument of `ad_ingest` (validated whole by the library before anything is written)."""

    v: int  # PAYLOAD_VERSION
    mode: Literal["live", "replay"]
    batch: str | None
    sparse: int  # 0 | 1
    cfg: PayloadConfig
    w: list[PayloadWindow]
    k: list[KpiRow]
    raw: list[RawEvent]


class IngestReply(NamedTuple):
    """`ad_ingest`'s reply, in order (accepted/late count request events and KPI reports together)."""

    accepted: int
    late: int
    sealed: int
    duplicate: int  # 1: the batch id was applied before, nothing was written
    kpis_accepted: int
    kpis_late: int
    history_sealed: int

    @classmethod
    def parse(cls, reply: Any) -> IngestReply:
        """The reply as numbers; ValueError when its length is not the contract's."""
        values = list(reply)
        if len(values) != len(cls._fields):
            raise ValueError(f"ad_ingest answered {len(values)} values, the contract has {len(cls._fields)}")
        return cls(*(int(v) for v in values))


# --- the generated block -------------------------------------------------------------------------------
BEGIN, END = "-- BEGIN CONTRACT", "-- END CONTRACT"


def _lua_value(value: int | float | str) -> str:
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else f"{value:g}"
    return repr(value)


def lua_block() -> str:
    """The library's contract block, as this module says it must read."""
    lines = [f"{BEGIN}: generated from src/anomalydesk/contract.py (python -m anomalydesk.contract --write)"]
    lines += [f"local {name} = {_lua_value(value)}" for name, value in LUA_CONSTANTS.items()]
    suffixes = ", ".join(f"{name} = {_lua_value(suffix)}" for name, suffix in KEY_SUFFIXES.items())
    lines.append(f"local KEY_SUFFIX = {{ {suffixes} }}")
    lines.append(END)
    return "\n".join(lines)


_BLOCK_RE = re.compile(rf"^{re.escape(BEGIN)}.*?^{re.escape(END)}$", re.MULTILINE | re.DOTALL)


def with_block(source: str) -> str:
    """`source` with its contract block replaced by `lua_block()`; ValueError when it has none."""
    if len(_BLOCK_RE.findall(source)) != 1:
        raise ValueError(f"the library must hold exactly one block from {BEGIN!r} to {END!r}")
    return _BLOCK_RE.sub(lambda _: lua_block(), source)


def disagreements(source: str) -> list[str]:
    """What the library `source` and this module disagree on (empty when they agree)."""
    problems = []
    try:
        if with_block(source) != source:
            problems.append("the contract block differs from src/anomalydesk/contract.py: "
                            "run `python -m anomalydesk.contract --write`")  # fmt: skip
    except ValueError as err:
        return [str(err)]
    outside = _BLOCK_RE.sub("", source)
    for name in LUA_CONSTANTS:
        if re.search(rf"^\s*local {name}\s*=", outside, re.MULTILINE):
            problems.append(f"{name} is also defined outside the contract block")
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
    recorded = LIBRARY_SHA256.get(LIB_VERSION)
    if recorded is None:
        problems.append(f"LIB_VERSION {LIB_VERSION} has no recorded source hash in contract.LIBRARY_SHA256")
    elif recorded != digest:
        problems.append(f"the library source changed but LIB_VERSION is still {LIB_VERSION} (sha256 {digest}, "
                        f"recorded {recorded or 'nothing'}): give the change a new LIB_VERSION, record its hash")
    return problems


def main(argv: list[str]) -> int:
    """`--write`: regenerate the library's block; `--check`: print disagreements (exit 1 when any)."""
    from pathlib import Path

    # the source tree's library (a development tool: store.gears.library_path would import this module back)
    library = Path(__file__).resolve().parents[2] / "gears" / "anomalydesk.lua"
    source = library.read_text(encoding="utf-8")
    if argv[:1] == ["--write"]:
        written = with_block(source)
        library.write_text(written, encoding="utf-8")
        print(f"{library}: contract block written; sha256 {hashlib.sha256(written.encode()).hexdigest()}")
        return 0
    problems = disagreements(source)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
