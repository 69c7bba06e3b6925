"""The Python ⇄ Lua contract (src/anomalydesk/contract.py): the library's generated block, its version and
source hash, the payload, the reply and the key layout agree on both sides and in docs/architecture.md —
and each check fails when one side is changed alone (shown below with deliberate mismatches)."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import pytest
import redis

from anomalydesk import contract
from anomalydesk.config import SketchSettings
from anomalydesk.store import admin
from anomalydesk.store.encoding import config_from
from anomalydesk.store.gears import library_source
from anomalydesk.store.keys import Keys

ROOT = Path(__file__).resolve().parents[1]
SOURCE = library_source()[0]


def gears_section() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    match = re.search(r"^### gears \(`gears/anomalydesk.lua`\)\n(.*?)(?=^#)", text, re.MULTILINE | re.DOTALL)
    assert match, "docs/architecture.md has no gears section"
    return match.group(1)


def doc_problems(source: str, section: str) -> list[str]:
    """What the library `source`'s header and docs `section` say differently from the contract."""
    problems = []
    registered = set(re.findall(r"function_name = '(ad_\w+)'", source))
    for where, text in (("docs/architecture.md", section), ("the library header", source.split("]]", 1)[0])):
        named = set(re.findall(r"\b(ad_[a-z]+)\(", text)) | set(re.findall(r"`(ad_[a-z]+)`", text))
        if named != registered:
            problems.append(f"{where} names {sorted(named)}, the library registers {sorted(registered)}")
        reply = re.search(r"\[?\{?(accepted, late, [a-z_, \n]+?)[\]}]", text)
        fields = [f.strip() for f in reply.group(1).split(",")] if reply else []
        if fields != list(contract.IngestReply._fields):
            problems.append(f"{where} gives the ad_ingest reply as {fields}")
        cfg = re.search(r'"cfg": ?\{(.*?)\}', text, re.DOTALL)
        cfg_keys = re.findall(r'(?<![:|] )(?<![:|])"(\w+)"', cfg.group(1)) if cfg else []  # names, not values
        if cfg_keys != list(typing.get_type_hints(contract.PayloadConfig)):
            problems.append(f"{where} gives the payload's cfg as {cfg_keys}")
        for key in typing.get_type_hints(contract.IngestPayload):
            if f'"{key}"' not in text:
                problems.append(f"{where} does not name the payload key {key!r}")
        for code in (contract.STALE_CONFIG, contract.NEED_CONFIG):
            if code not in text:
                problems.append(f"{where} does not name the error {code}")
    return problems


def test_the_library_agrees_with_the_contract() -> None:
    assert contract.disagreements(SOURCE) == []
    assert library_source()[1] == contract.LIB_VERSION


def test_a_constant_changed_on_one_side_only_is_caught() -> None:
    edited = SOURCE.replace("local MAX_NAME = 256\n", "local MAX_NAME = 255\n")
    assert edited != SOURCE
    problems = contract.disagreements(edited)
    assert any("contract block differs" in p for p in problems) and any("LIB_VERSION is still" in p for p in problems)
    copied = SOURCE.replace("local HLL_DENSE_BYTES", "local MAX_TOPK = 5\nlocal HLL_DENSE_BYTES")
    assert "MAX_TOPK is also defined outside the contract block" in contract.disagreements(copied)


def test_a_source_change_without_a_new_version_is_caught() -> None:
    edited = SOURCE.replace("return fail('query: what must be", "return fail('query: `what` must be")
    assert edited != SOURCE
    assert [p for p in contract.disagreements(edited) if f"LIB_VERSION is still {contract.LIB_VERSION}" in p]


def test_docs_and_the_header_describe_the_library() -> None:
    assert doc_problems(SOURCE, gears_section()) == []


def test_docs_that_drift_are_caught() -> None:
    section = gears_section()
    assert any("names" in p for p in doc_problems(SOURCE, section.replace("`ad_configure(", "`ad_reset(")))
    assert any("reply" in p for p in doc_problems(SOURCE, section.replace("kpis_late, history_sealed", "kpis_late")))
    assert any("cfg" in p for p in doc_problems(SOURCE, section.replace('"tk", "ret"', '"tk"')))


def test_keys_and_the_library_build_the_same_names(r: redis.Redis) -> None:
    """A real ingest writes exactly the names `Keys` builds from the contract's suffixes."""
    keys = Keys()
    admin.setup(r, SketchSettings(window_seconds=5))
    stored = admin.read_settings(r)
    cfg = config_from(stored.settings, stored.backend, stored.generation).payload_cfg
    window = {"win": 100, "n": 2, "e4": 0, "e5": 1, "ls": 3.0, "h": [20, 2], "ep": ["GET:/a", 2],
              "st": [200, 1, 503, 1]}
    payload = {"v": contract.PAYLOAD_VERSION, "mode": "replay", "batch": "b1", "sparse": 0, "cfg": cfg,
               "w": [window], "k": [], "raw": [["GET:/a", 200, 1.5, None]]}
    assert set(payload) == set(typing.get_type_hints(contract.IngestPayload))
    reply = contract.IngestReply.parse(r.fcall("ad_ingest", 1, keys.state("svc"), keys.prefix, "svc",
                                               json.dumps(payload)))
    assert reply.accepted == 2
    written = {k.decode() for k in r.scan_iter(match=f"{keys.tag('svc')}*")}
    built = {keys.state("svc"), keys.open_windows("svc"), keys.window("svc", 100), keys.window_endpoints("svc", 100),
             keys.window_hll("svc", 100), keys.cms_endpoints("svc"),
             keys.cms_status("svc"), keys.topk("svc"), keys.raw("svc"),
             f"{keys.tag('svc')}{contract.KEY_SUFFIXES['batch']}b1"}
    filters = {k for k in written if k.startswith(keys.filter("svc"))}
    assert filters and written - filters == built
    with pytest.raises(ValueError, match="answered 6 values"):
        contract.IngestReply.parse([1, 0, 0, 0, 0, 0])
