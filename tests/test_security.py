"""Security: TLS end to end, least-privilege ACL users (rules read from docs/acl.md), crafted model blobs.

The gears functions are fuzzed in tests/test_gears_fuzz.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import trustme
from redis.backoff import NoBackoff
from redis.retry import Retry

from anomalydesk.config import SketchSettings
from anomalydesk.detect.detector import Detector
from anomalydesk.detect.model import Model
from anomalydesk.events import parse_metric
from anomalydesk.ingest.collector import CollectorSettings
from anomalydesk.ingest.collector_server import BackgroundCollector
from anomalydesk.store import admin, fingerprints, models, sink, sketches
from anomalydesk.store.connection import ConnectionFailed, connect
from anomalydesk.store.keys import Keys
from conftest import RedisServer, free_port
from test_collector import post

pytestmark = pytest.mark.backends  # runs once per sketch backend (conftest.BOTH_BACKENDS)

K = Keys()
ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "pw-for-tests-only"


def metric(service: str = "orders", status: int = 200) -> object:
    return parse_metric({"service": service, "endpoint": "GET:/orders/42", "status_code": status, "response_time": 9})


def cli(url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "anomalydesk.cli", "--redis", url, *argv],
                          capture_output=True, text=True, timeout=300, env={**os.environ})  # fmt: skip


# --- TLS ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory, sketch_backend: str) -> Iterator[str]:
    """A redis-server with a TLS port (client certificates required; RedisBloom loaded in the native
    run); the rediss:// URL for it."""
    certs = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(certs / "ca.crt"))
    for name, who in (("server", "127.0.0.1"), ("client", "anomalydesk-client")):
        cert = ca.issue_cert(who)
        cert.cert_chain_pems[0].write_to_path(str(certs / f"{name}.crt"))
        cert.private_key_pem.write_to_path(str(certs / f"{name}.key"))
    port = free_port()
    server = RedisServer(certs, "--tls-port", str(port), "--tls-cert-file", str(certs / "server.crt"),
                         "--tls-key-file", str(certs / "server.key"), "--tls-ca-cert-file", str(certs / "ca.crt"),
                         "--tls-auth-clients", "yes", backend=sketch_backend)  # fmt: skip
    yield (f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certs / 'ca.crt'}"
           f"&ssl_certfile={certs / 'client.crt'}&ssl_keyfile={certs / 'client.key'}")  # fmt: skip
    server.stop()


def test_ingest_collector_and_status_over_tls(tls: str, sketch_backend: str) -> None:
    r = connect(tls)
    assert r.connection_pool.connection_kwargs.get("ssl_cert_reqs") == "required"
    admin.setup(r, SketchSettings())
    assert sink.ingest(r, [metric() for _ in range(5)]).accepted == 5
    with BackgroundCollector(CollectorSettings(port=0), tls) as running:
        event = {"service": "users", "endpoint": "GET:/u", "status_code": 200, "response_time": 4}
        status, _, body = post(running.url, "/metrics", [event] * 3)
    assert (status, body) == (202, {"accepted": 3, "rejected": []})
    assert sink.seal_all(r, now=time.time() + 60) >= 2
    assert sum(fp.get("requests") for fp in fingerprints.read(r, "orders")) == 5
    done = cli(tls, "status", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["events_total"] == 8
    assert json.loads(done.stdout)["sketch_backend"] == sketch_backend
    r.close()


def test_plain_connection_to_the_tls_port_fails_clearly(tls: str) -> None:
    plain = tls.replace("rediss://", "redis://").split("?")[0]
    with pytest.raises(ConnectionFailed, match=r"cannot connect to Redis at redis://127\.0\.0\.1"):
        connect(plain, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))  # one try is enough to show it


# --- ACL users ----------------------------------------------------------------------------------------
def acl_rules(block: str) -> list[str]:
    """The ACL SETUSER arguments of a fenced block in docs/acl.md (the documented rules are the tested ones)."""
    text = (ROOT / "docs" / "acl.md").read_text(encoding="utf-8")
    match = re.search(rf"```{block}\n(.*?)```", text, re.DOTALL)
    assert match, f"docs/acl.md has no {block} block"
    words = match.group(1).split()
    assert words[:2] == ["ACL", "SETUSER"] and words[2] in ("ad-collector", "ad-app")
    return [w if w != ">CHANGE-ME" else f">{PASSWORD}" for w in words[2:]]


@pytest.fixture()
def acl_server(redis_server: RedisServer, redis_url: str, sketch_backend: str) -> Iterator[RedisServer]:
    admin_client = redis_server.client()
    blocks = ("acl-collector", "acl-app") + (("acl-collector-native",) if sketch_backend == "native" else ())
    for block in blocks:
        admin_client.execute_command("ACL", "SETUSER", *acl_rules(block))
    yield redis_server
    for user in ("ad-collector", "ad-app"):
        admin_client.execute_command("ACL", "DELUSER", user)
    admin_client.close()


def url_for(server: RedisServer, user: str) -> str:
    return f"redis://{user}:{PASSWORD}@127.0.0.1:{server.port}/0"


def denied(call) -> bool:
    try:
        call()
    except redis.exceptions.NoPermissionError:
        return True
    return False


def test_collector_user_may_ingest_and_nothing_more(acl_server: RedisServer, r: redis.Redis) -> None:
    admin.setup(r, SketchSettings())  # the administrator's part
    models.save(r, "orders", b'{"secret": "model"}', {"note": "x"})
    r.hset(K.incidents, "i1", "{}")
    url = url_for(acl_server, "ad-collector")
    with BackgroundCollector(CollectorSettings(port=0), url) as running:
        good = {"service": "orders", "endpoint": "GET:/o", "status_code": 500, "response_time": 4}
        status, _, body = post(running.url, "/metrics", [good] * 4 + [{"service": "orders"}])
    assert status == 200 and body["accepted"] == 4, body
    c = connect(url)
    assert sink.ingest(c, [metric("payments") for _ in range(3)]).accepted == 3  # the direct sink too
    # a second call into the same open window: the library's checks of existing keys run as this user
    assert sink.ingest(c, [metric("payments") for _ in range(3)]).accepted == 3
    # history after live traffic (a backfill): it clears the open live window's first sightings
    past = [parse_metric({"service": "payments", "endpoint": "GET:/orders/42", "status_code": 200, "response_time": 4,
                          "timestamp": time.time() - 3600})]  # fmt: skip
    assert sink.ingest(c, past, replay=True).accepted == 1
    assert admin.status(r)["events_total"] == 11
    assert int(r.hget(K.stats, "events_rejected")) == 1
    for call in (
        lambda: c.hgetall(K.models("orders")), lambda: c.hget(K.models("orders"), "1"),
        lambda: c.hgetall(K.models_index), lambda: c.hgetall(K.incidents), lambda: c.xrange(K.alerts_log),
        lambda: c.hget(K.detector_states, "orders"), lambda: c.xrange(K.fingerprints("orders")),
        lambda: c.flushall(), lambda: c.flushdb(), lambda: c.function_delete("anomalydesk"),
        lambda: c.function_flush(), lambda: c.function_load("#!lua name=x\nredis.register_function('f', "
                                                            "function() return 1 end)", replace=True),
        lambda: c.config_set("appendonly", "no"), lambda: c.execute_command("ACL", "WHOAMI") and c.acl_list(),
        lambda: c.shutdown(), lambda: c.keys("*"), lambda: c.set("other:key", "1"),
        lambda: c.hset(K.config, "window_seconds", "1"),
    ):  # fmt: skip
        assert denied(call)
    assert r.hget(K.models("orders"), "1") is not None and r.function_list()  # nothing was destroyed
    c.close()


def test_collector_user_applies_a_window_length_change(acl_server: RedisServer, r: redis.Redis) -> None:
    """The window-length change (`ad_configure`: history sealed, open windows renamed to `:rw:*` and
    merged into windows of the new length, first sightings carried with SUNIONSTORE) runs as the
    collector user when its batch meets a service still at the old length."""
    admin.setup(r, SketchSettings(window_seconds=60))
    url = url_for(acl_server, "ad-collector")
    old, fresh = connect(url), connect(url)  # two producers: each keeps the config it read
    first = [parse_metric({"service": "payments", "endpoint": e, "status_code": 200, "response_time": 4})
             for e in ("GET:/a", "GET:/b", "GET:/a")]  # fmt: skip
    assert sink.ingest(old, first).accepted == 3
    (wo,) = (int(w) for w in r.zrange(K.open_windows("payments"), 0, -1))
    assert r.smembers(K.window_new("payments", wo)) == {b"GET:/a", b"GET:/b"}  # first seen in the open window
    # setup wrote the new length but did not reach the service (as if it stopped before configuring it):
    # the collector's next call meets NEEDCONFIG, configures the service itself, then sends again
    r.hset(K.config, mapping={"window_seconds": 120, "config_gen": 1})
    later = [parse_metric({"service": "payments", "endpoint": "GET:/c", "status_code": 200, "response_time": 4})]
    assert sink.ingest(fresh, later * 2).accepted == 2
    state = r.hgetall(K.state("payments"))
    assert (state[b"W"], state[b"g"]) == (b"120", b"1")
    wn = wo * 60 // 120  # nothing sealed yet: the open window goes to the new window holding its start
    assert r.smembers(K.window_new("payments", wn)) >= {b"GET:/a", b"GET:/b"}  # carried, not sighted again
    assert not r.exists(K.window_new("payments", wo))  # the old window's set went with it
    assert not list(r.scan_iter(match=K.tag("payments") + ":rw:*"))  # the temporary names are gone
    assert sink.ingest(old, later).accepted == 1  # the stale producer is refused, re-reads, resends
    opened = [int(w) for w in r.zrange(K.open_windows("payments"), 0, -1)]
    assert wn in opened and sum(int(r.hget(K.window("payments", w), "n")) for w in opened) == 6
    assert admin.status(r)["events_total"] == 6
    old.close()
    fresh.close()


def test_app_user_runs_the_product_but_not_the_server(acl_server: RedisServer, r: redis.Redis) -> None:
    url = url_for(acl_server, "ad-app")
    for argv in (("setup",), ("demo", "--fast", "--duration", "1800", "--services", "2", "--seed", "5"),
                 ("train", "--json"), ("status", "--json"), ("incidents", "list", "--json"),
                 ("models", "list", "--json"), ("services", "retire", "users")):  # fmt: skip
        done = cli(url, *argv)
        assert done.returncode == 0, (argv, done.stderr)
    app = connect(url)
    assert set(models.active_versions(app)) == {"gateway", "users"}
    # the Sketches inspector's queries (module commands inside ad_query on the native backend)
    assert sketches.info(app, "users")["filter"]["items"] > 0 and sketches.topk(app, "users")
    assert sum(sketches.status_counts(app, "users", [200, 500, 503]).values()) > 0
    detector = Detector(app, seal=False, block_ms=10)
    detector.step()  # joins the group, reads, scores with the stored models
    pubsub = app.pubsub()
    pubsub.subscribe(K.alerts_channel)
    pubsub.close()
    for call in (
        lambda: app.flushall(), lambda: app.flushdb(), lambda: app.config_set("appendonly", "no"),
        lambda: app.config_get("requirepass"), lambda: app.acl_setuser("evil", enabled=True),
        lambda: app.shutdown(), lambda: app.function_flush(), lambda: app.function_delete("anomalydesk"),
        lambda: app.keys("*"), lambda: app.get("someone-else:key"), lambda: app.client_list(),
        lambda: app.execute_command("REPLICAOF", "127.0.0.1", "1"),
        lambda: app.execute_command("MONITOR"),
    ):  # fmt: skip
        assert denied(call)
    app.close()


# --- crafted model blobs ----------------------------------------------------------------------------------
def _reduce_payload(marker: Path) -> bytes:
    """A protocol-0 pickle whose loading would call exec() and create `marker` (built by hand, nothing pickled)."""
    code = f"open({str(marker)!r}, 'w').write('executed')"
    return b"cbuiltins\nexec\n(V" + code.encode() + b"\ntR."


def test_the_crafted_payload_really_executes_when_unpickled(tmp_path: Path) -> None:
    """Control, in a throwaway subprocess: the payload below is live, so its refusal means something."""
    marker = tmp_path / "control-marker"
    done = subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
                          input=_reduce_payload(marker), capture_output=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert marker.read_text() == "executed"


@pytest.mark.parametrize("kind", ["pickle", "pickle-in-json", "reduce-dict", "sealed-but-wrong"])
def test_a_crafted_model_blob_is_refused_and_runs_nothing(r: redis.Redis, tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "marker"
    evil = _reduce_payload(marker)
    if kind == "pickle":
        blob = evil
    elif kind == "pickle-in-json":
        blob = json.dumps({"payload": {"format": evil.decode("latin-1")}, "sha256": "0" * 64}).encode()
    elif kind == "reduce-dict":
        blob = json.dumps({"__reduce__": ["builtins.exec", [f"open({str(marker)!r},'w')"]]}).encode()
    else:  # a correctly sealed envelope whose payload is not a model
        from anomalydesk.detect.forest import seal

        blob = seal({"format": "pickle", "data": evil.decode("latin-1"), "py/reduce": "builtins.exec"})
    version = models.save(r, "orders", blob, {"note": kind})
    with pytest.raises(models.ModelLoadError, match=f"model orders v{version} refused"):
        models.load(r, "orders", Model.from_json)
    # the detector loads active models at start: the bad one is refused there too, and nothing runs
    for service in ("orders",):
        r.xgroup_create(K.fingerprints(service), "detectors", id="$", mkstream=True)
    Detector(r, seal=False, block_ms=10).step()
    assert not marker.exists()


def test_no_code_path_can_unpickle() -> None:
    """The product never imports a deserializer that can run code (pickle, joblib, marshal, shelve, dill)."""
    pattern = re.compile(r"^\s*(import|from)\s+(pickle|cPickle|joblib|marshal|shelve|dill|cloudpickle)\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for base in (ROOT / "src", ROOT / "clients")
                 for p in base.rglob("*.py") if pattern.search(p.read_text(encoding="utf-8"))]  # fmt: skip
    assert offenders == []
