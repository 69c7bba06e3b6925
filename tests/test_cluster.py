"""Redis Cluster: a real local cluster of 3 primaries (6 nodes with replicas for the failover test).

What runs on a cluster is documented in docs/cluster.md; these tests are its evidence.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from anomalydesk.config import SketchSettings
from anomalydesk.events import parse_metric
from anomalydesk.store import admin, cluster, fingerprints, gears, sink, sketches
from anomalydesk.store.connection import connect
from anomalydesk.store.keys import Keys
from conftest import assert_backend, backend_args, free_port

KEYS = Keys()
DEMO_SERVICES = ["gateway", "users", "orders", "payments", "inventory", "svc-6"]


class LocalCluster:
    """Redis Cluster nodes on loopback, created with `redis-cli --cluster create` (RedisBloom loaded on
    every node for backend="native")."""

    def __init__(self, directory: Path, primaries: int = 3, replicas: int = 0, backend: str = "functions"):
        if shutil.which("redis-cli") is None:
            pytest.fail("redis-cli is not installed (apt-get install redis-tools)")
        self.directory = directory
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.bus_ports: dict[int, int] = {}
        self.backend = backend
        ports = [free_port() for _ in range(primaries * (1 + replicas))]
        try:
            for port in ports:
                self.start_node(port)
            subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                            "--cluster-replicas", str(replicas), "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)  # fmt: skip
            self.wait_ok(ports)
        except BaseException:
            self.stop()  # no node outlives a failed start
            raise

    def start_node(self, port: int) -> None:
        node_dir = self.directory / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        self.bus_ports[port] = free_port()  # not port + 10000: that may pass 65535
        self.procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
             "--cluster-enabled", "yes", "--cluster-port", str(self.bus_ports[port]),
             "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000",
             "--save", "", "--appendonly", "no", "--logfile", "redis.log", "--repl-diskless-sync-delay", "0",
             *backend_args(self.backend)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=port, socket_connect_timeout=0.2).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError(f"cluster node on port {port} did not start")

    def wait_ok(self, ports: list[int], timeout: float = 60) -> None:
        """Until every live node says cluster_state:ok and agrees on the slot owners."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                infos = [redis.Redis(port=p).cluster("info") for p in ports]
                links = [redis.Redis(port=p).info("replication") for p in ports]
                if all(i["cluster_state"] == "ok" for i in infos) and all(
                    r.get("master_link_status", "up") == "up" for r in links
                ):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the cluster did not become ready")

    @property
    def ports(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def kill(self, port: int) -> None:
        self.procs[port].send_signal(signal.SIGKILL)
        self.procs[port].wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    nodes = LocalCluster(tmp_path_factory.mktemp("cluster3"))
    yield nodes
    nodes.stop()


@pytest.fixture()
def rc(cluster3: LocalCluster) -> Iterator[redis.RedisCluster]:
    client = connect(cluster3.url)
    client.flushall()
    client.function_flush()
    yield client
    client.close()


def metric(service: str, status: int = 200) -> object:
    return parse_metric({"service": service, "endpoint": "GET:/items/7", "status_code": status, "response_time": 12})


def cli(url: str, *argv: str, timeout: float = 120) -> dict:
    done = subprocess.run([sys.executable, "-m", "anomalydesk.cli", "--redis", url, "--json", *argv],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ})  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def library_on(port: int) -> bool:
    return gears.server_library(redis.Redis(port=port)) is not None


# --- connecting -------------------------------------------------------------------------------------
def test_cluster_urls_give_a_cluster_client(cluster3: LocalCluster) -> None:
    port = cluster3.ports[0]
    for url in (f"redis+cluster://127.0.0.1:{port}", f"redis://127.0.0.1:{port}/0?cluster=1",
                f"redis://127.0.0.1:{port}"):  # the last one: the node says cluster_enabled:1
        client = connect(url)
        assert cluster.is_cluster(client), url
        assert len(cluster.primaries(client)) == 3
        client.close()
    plain = connect(f"redis://127.0.0.1:{port}?cluster=0")
    assert not cluster.is_cluster(plain)
    plain.close()
    unchecked = connect(f"redis://127.0.0.1:{port}", check=False)  # asked once, briefly
    assert cluster.is_cluster(unchecked)
    unchecked.close()
    assert not cluster.is_cluster(connect(f"redis://127.0.0.1:{free_port()}", check=False))  # nobody there


async def test_async_clients_for_a_cluster(cluster3: LocalCluster) -> None:
    from anomalydesk.store.connection import connect_async

    client = connect_async(f"redis://127.0.0.1:{cluster3.ports[0]}")
    assert cluster.is_cluster(client)
    await client.set("{t}:x", "1")
    assert await client.get("{t}:x") == b"1"
    await client.aclose()


def test_fcall_is_routed_by_its_key_without_command_getkeys(rc: redis.RedisCluster) -> None:
    admin.setup(rc, SketchSettings())
    parser = rc.commands_parser
    assert isinstance(parser, cluster.FcallKeysParser)
    assert parser.get_keys(None, "FCALL", "ad_ingest", 1, KEYS.state("payments"), "ad:", "payments", "{}") == [
        KEYS.state("payments")
    ]


def _getkeys_calls(cluster3: LocalCluster) -> int:
    """COMMAND GETKEYS calls the cluster's nodes served so far (INFO commandstats)."""
    total = 0
    for port in cluster3.ports:
        node = redis.Redis(port=port)
        total += node.info("commandstats").get("cmdstat_command|getkeys", {}).get("calls", 0)
        node.close()
    return total


async def test_writes_route_fcall_without_command_getkeys_sync_and_async(rc: redis.RedisCluster,
                                                                         cluster3: LocalCluster) -> None:
    """store/cluster.py subclasses redis-py's private `redis._parsers.commands` parsers (redis-py is pinned
    in pyproject.toml for it): this fails when that API moves and routing falls back to COMMAND GETKEYS."""
    from anomalydesk.store.connection import connect_async

    admin.setup(rc, SketchSettings())
    before = _getkeys_calls(cluster3)
    sink.ingest(rc, [metric(s) for s in DEMO_SERVICES])  # a pipeline of FCALLs, one per service
    rc.fcall("ad_query", 1, KEYS.state("users"), KEYS.prefix, "users", "endpoint", '["GET:/items/{id}"]')
    ar = connect_async(cluster3.url)
    try:
        result = await sink.ingest_async(ar, [metric(s) for s in DEMO_SERVICES])
        await ar.fcall("ad_query", 1, KEYS.state("users"), KEYS.prefix, "users", "endpoint", '["GET:/items/{id}"]')
    finally:
        await ar.aclose()
    assert result.accepted == len(DEMO_SERVICES)
    assert _getkeys_calls(cluster3) == before


# --- gears on every primary ---------------------------------------------------------------------
def test_setup_loads_the_library_on_every_primary(rc: redis.RedisCluster, cluster3: LocalCluster) -> None:
    assert not any(library_on(p) for p in cluster3.ports)
    admin.setup(rc, SketchSettings())
    assert all(library_on(p) for p in cluster3.ports)


def test_a_primary_that_lost_the_library_gets_it_back_at_the_next_write(
    rc: redis.RedisCluster, cluster3: LocalCluster
) -> None:
    admin.setup(rc, SketchSettings())
    owner = cluster.shard_of(rc, KEYS.state("payments"))
    port = int(owner.rsplit(":", 1)[1])
    redis.Redis(port=port).function_flush()  # as if this primary had just joined the cluster
    assert not library_on(port)
    assert sink.ingest(rc, [metric("payments")] * 5).accepted == 5
    assert library_on(port)


def test_a_write_over_shards_with_one_library_lost_stores_each_payload_once(
    rc: redis.RedisCluster, cluster3: LocalCluster
) -> None:
    admin.setup(rc, SketchSettings())
    sink.ingest(rc, [metric(s) for s in DEMO_SERVICES])  # every service known to the writer
    owner = cluster.shard_of(rc, KEYS.state("payments"))
    redis.Redis(port=int(owner.rsplit(":", 1)[1])).function_flush()
    others = [s for s in DEMO_SERVICES if cluster.shard_of(rc, KEYS.state(s)) != owner]
    assert others  # some payloads land on primaries that kept the library
    result = sink.ingest(rc, [metric(s) for s in DEMO_SERVICES] * 3)
    # what reached the other primaries is not sent again after the reload (it came back as duplicates)
    assert (result.accepted, result.duplicate_batches) == (3 * len(DEMO_SERVICES), 0)


# --- the engine across shards -------------------------------------------------------------------
def test_demo_spreads_services_over_shards_and_everything_reads_back(
    rc: redis.RedisCluster, cluster3: LocalCluster
) -> None:
    demo_journey(rc, cluster3)


def test_the_demo_journey_with_native_sketches_on_every_node(tmp_path: Path) -> None:
    """The same journey on a cluster whose three primaries all have RedisBloom loaded."""
    nodes = LocalCluster(tmp_path / "native", backend="native")
    try:
        for port in nodes.ports:
            assert_backend(redis.Redis(port=port), "native")
        rc = connect(nodes.url)
        demo_journey(rc, nodes, backend="native")
        for service in DEMO_SERVICES[:5]:  # (svc-6 is retired at the end of the journey)
            node = rc.get_redis_connection(rc.get_node_from_key(KEYS.state(service)))
            assert node.type(KEYS.topk(service)) == b"TopK-TYPE" and node.type(KEYS.filter(service)) == b"MBbloom--"
            assert sketches.info(rc, service)["backend"] == "native"
        rc.close()
    finally:
        nodes.stop()


def demo_journey(rc: redis.RedisCluster, cluster3: LocalCluster, backend: str = "functions") -> None:
    url = cluster3.url
    assert cli(url, "setup")["sketch_backend"] == backend
    demo = cli(url, "demo", "--services", "6", "--fast", "--duration", "1300", "--seed", "3")
    shards = {cluster.shard_of(rc, KEYS.state(s)) for s in DEMO_SERVICES}
    assert len(shards) >= 2
    # every service's keys sit on its own shard: the fingerprint stream is on the node that owns the tag
    for service in DEMO_SERVICES:
        node = rc.get_node_from_key(KEYS.fingerprints(service))
        assert rc.get_redis_connection(node).exists(KEYS.fingerprints(service)) == 1

    status = cli(url, "status")
    assert status["sketch_backend"] == backend
    assert sorted(status["services"]) == sorted(DEMO_SERVICES)
    stored = admin.list_services(rc)
    assert status["events_total"] == sum(s["events"] for s in stored)
    assert status["events_total"] >= demo["events"] > 0
    # 1300 s are 260 windows; the demo then catches up with the clock (more windows under load)
    assert status["fingerprints"] == status["windows_sealed"]
    per_service = status["fingerprints"] // 6
    assert per_service * 6 == status["fingerprints"] and per_service >= 260
    for service in DEMO_SERVICES:
        prints = fingerprints.read(rc, service)
        assert len(prints) == per_service
        assert sum(fp.get("requests") for fp in prints) > 0
    assert cli(url, "incidents", "list") == {"incidents": []}
    trained = cli(url, "train", "--service", "payments")  # a model stored with MULTI on its shard
    assert [t["service"] for t in trained["trained"]] == ["payments"]
    # training read every window from the stream's own node (raw replies, not through the cluster client)
    assert trained["trained"][0]["windows"] == len([fp for fp in fingerprints.read(rc, "payments") if not fp.no_data])
    assert cli(url, "status")["models"] == {"payments": 1}
    assert cli(url, "query", "topk", "--service", "payments")
    per_node = [redis.Redis(port=p).info("memory")["used_memory"] for p in cluster3.ports]
    assert max(per_node) < status["used_memory"] <= 1.2 * sum(per_node)  # all primaries, not one node
    cli(url, "services", "retire", "svc-6")
    assert cli(url, "status")["retired_services"] == ["svc-6"]


def test_collector_on_a_cluster(rc: redis.RedisCluster, cluster3: LocalCluster) -> None:
    from anomalydesk.ingest.collector import CollectorSettings
    from anomalydesk.ingest.collector_server import BackgroundCollector
    from test_collector import post

    admin.setup(rc, SketchSettings())
    with BackgroundCollector(CollectorSettings(port=0), cluster3.url) as running:
        batch = [{"service": s, "endpoint": "GET:/a", "status_code": 200, "response_time": 3}
                 for s in DEMO_SERVICES for _ in range(4)]  # fmt: skip
        status, _, body = post(running.url, "/metrics", batch)
    assert (status, body) == (202, {"accepted": 24, "rejected": []})
    assert admin.status(rc)["events_total"] == 24


def node_ids(port: int) -> dict[str, str]:
    """host:port → node id, from CLUSTER NODES as the node on `port` sees it."""
    lines = redis.Redis(port=port).execute_command("CLUSTER", "NODES").decode().splitlines()
    return {line.split()[1].split("@")[0]: line.split()[0] for line in lines}


def move_slot(slot: int, source: int, target: int, ports: list[int]) -> None:
    """Move one slot with its keys from the primary on `source` to the one on `target` (as a reshard does)."""
    src, dst = redis.Redis(port=source), redis.Redis(port=target)
    ids = node_ids(source)
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[f"127.0.0.1:{source}"])
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[f"127.0.0.1:{target}"])
    while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
    for port in ports:
        redis.Redis(port=port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[f"127.0.0.1:{target}"])


def test_a_primary_added_later_gets_the_library_when_slots_move_to_it(tmp_path: Path) -> None:
    nodes = LocalCluster(tmp_path)
    rc = connect(nodes.url)
    try:
        admin.setup(rc, SketchSettings())
        assert sink.ingest(rc, [metric(s) for s in DEMO_SERVICES]).accepted == 6
        port = free_port()
        nodes.start_node(port)
        # a bare CLUSTER MEET (`redis-cli --cluster add-node` would copy the functions over)
        redis.Redis(port=port).execute_command("CLUSTER", "MEET", "127.0.0.1", nodes.ports[0],
                                               nodes.bus_ports[nodes.ports[0]])
        deadline = time.monotonic() + 30
        while len(node_ids(nodes.ports[0])) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        nodes.wait_ok(nodes.ports)
        source = cluster.shard_of(rc, KEYS.state("payments"))
        move_slot(rc.keyslot(KEYS.state("payments")), int(source.rsplit(":", 1)[1]), port, nodes.ports)
        assert not library_on(port)  # MIGRATE moves keys, not functions
        assert sink.ingest(rc, [metric("payments")] * 3).accepted == 3
        assert cluster.shard_of(rc, KEYS.state("payments")) == f"127.0.0.1:{port}"
        assert library_on(port)
        assert {s["name"]: s["events"] for s in admin.list_services(rc)}["payments"] == 4
    finally:
        rc.close()
        nodes.stop()


# --- failover ---------------------------------------------------------------------------------------
def wait_replicated(primary: redis.Redis, timeout: float = 10) -> None:
    """Until every replica of `primary` has acknowledged its whole replication stream."""
    deadline = time.monotonic() + timeout
    while True:
        info = primary.info("replication")
        offsets = [int(v["offset"]) for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        if offsets and min(offsets) >= int(info["master_repl_offset"]):
            return
        assert time.monotonic() < deadline, f"replicas did not catch up: {info}"
        time.sleep(0.05)


def flush_until_done(writer: sink.IngestSink, timeout: float = 60) -> sink.IngestResult:
    """Flush as a producer's background thread does: an unreachable shard keeps events buffered, retried."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return writer.flush()
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_the_system_carries_on_after_a_primary_fails_over(tmp_path: Path) -> None:
    nodes = LocalCluster(tmp_path, primaries=3, replicas=1)
    rc = connect(nodes.url)
    try:
        admin.setup(rc, SketchSettings())
        before = sink.ingest(rc, [metric(s) for s in DEMO_SERVICES for _ in range(10)])
        assert before.accepted == 60
        phase = detector_before_failover(rc)
        victim = int(cluster.shard_of(rc, KEYS.state("payments")).rsplit(":", 1)[1])
        # replication is asynchronous: let the replica catch up, or acknowledged writes die with the primary
        # (WAIT on a new connection would wait for nothing: it counts that connection's own writes)
        wait_replicated(redis.Redis(port=victim))
        nodes.kill(victim)
        sent_after, writer = 0, sink.IngestSink(rc, retry_attempts=20)
        for _ in range(5):  # writes during and after the failover: retried until a replica is promoted
            writer.add_many([metric(s) for s in DEMO_SERVICES])
            flush_until_done(writer)
            sent_after += len(DEMO_SERVICES)
        nodes.wait_ok(nodes.ports)
        new_owner = cluster.shard_of(rc, KEYS.state("payments"))
        assert new_owner != f"127.0.0.1:{victim}"
        assert library_on(int(new_owner.rsplit(":", 1)[1]))  # functions replicate with the data
        events = {s["name"]: s["events"] for s in admin.list_services(rc)}
        assert events == {s: 10 + 5 for s in DEMO_SERVICES}
        # normal traffic (100 requests a window, the toy model's limit is 200) of the two services with
        # incidents in the coming windows: quiet windows of every service alone would be a system gap,
        # which resolves nothing (detect/system_gap.py)
        t = time.time()
        normal = [parse_metric({"service": s, "endpoint": "GET:/items/7", "status_code": 200, "response_time": 12,
                                "timestamp": t + 15 + k * 5}) for s in ("payments", "users") for k in range(3)
                  for _ in range(100)]  # fmt: skip
        assert sink.ingest(rc, normal, replay=True).accepted == 600
        assert sink.seal_all(rc, now=time.time() + 60) >= len(DEMO_SERVICES)
        assert all(fingerprints.read(rc, s) for s in DEMO_SERVICES)
        assert admin.status(rc)["events_total"] == 60 + sent_after + len(normal)
        detector_after_failover(rc, nodes, victim, phase)
    finally:
        rc.close()
        nodes.stop()


def detector_before_failover(rc: redis.RedisCluster) -> Callable[[], int]:
    """Open incidents on payments (the victim's shard) and users; returns a step function for later."""
    from anomalydesk.detect.detector import Detector
    from anomalydesk.detect.incident_flow import Confirmation
    from anomalydesk.store import models as registry
    from test_detector import add_window, toy_decode, toy_scorer

    for service in ("payments", "users"):
        registry.save(rc, service, json.dumps({"limit": 200}), {"windows": 100})
        for i, value in enumerate([300, 300, 300]):
            add_window(rc, service, 4000 + i, requests=value)
    det = Detector(rc, scorer=toy_scorer, decode=toy_decode, seal=False, block_ms=10,  # type: ignore[arg-type]
                   confirmation=Confirmation(k=2, n=3, cooldown=2))  # fmt: skip

    def step() -> int:
        from anomalydesk.detect.detector import UNAVAILABLE

        deadline = time.monotonic() + 60
        while True:  # as Detector.run does: a failover in progress is waited out
            try:
                return det.step().processed
            except UNAVAILABLE:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    assert sum(step() for _ in range(3)) == 6
    return step


def detector_after_failover(rc: redis.RedisCluster, nodes: LocalCluster, victim: int,
                            step: Callable[[], int]) -> None:  # fmt: skip
    """The detector carries on: the alert log and the incidents were on the failed primary.

    Normal windows follow the failover, so both incidents resolve on the promoted replica.
    """
    from anomalydesk.detect import incidents as inc

    assert cluster.shard_of(rc, KEYS.alerts_log) != f"127.0.0.1:{victim}"
    before = [json.loads(f[b"alert"]) for _, f in rc.xrange(KEYS.alerts_log)]
    assert sorted(a["service"] for a in before if a["kind"] == "new") == ["payments", "users"]
    # what seal_all wrote after the failover, for every service (the others have no model: only read)
    waiting = sum(len(rc.xrange(KEYS.fingerprints(s), min="(20010000-1")) for s in DEMO_SERVICES)
    assert waiting >= 6 * 3
    assert sum(step() for _ in range(5)) == waiting
    after = [json.loads(f[b"alert"]) for _, f in rc.xrange(KEYS.alerts_log)]
    assert sorted(a["service"] for a in after[len(before):] if a["kind"] == "resolved") == ["payments", "users"]
    assert len({a["id"] for a in after}) == len(after)
    for service in ("payments", "users"):
        assert rc.xpending(KEYS.fingerprints(service), "detectors")["pending"] == 0
        last = int(rc.xrevrange(KEYS.fingerprints(service), count=1)[0][1][b"window"])
        assert json.loads(rc.hget(KEYS.detector_states, service))["last_window"] == last
    incident = next(a["incident_id"] for a in before if a["service"] == "payments")
    # an operator's action on the promoted replica (resolved by now: marked a false positive, as an
    # operator reviewing it would; an acknowledgement of a closed incident is refused)
    marked = inc.false_positive(rc, incident, who="after-failover").false_positive
    assert marked is not None and marked.by == "after-failover"


# --- detector and incidents -------------------------------------------------------------------------
def test_traffic_stopped_on_purpose_is_recorded_and_resumed_on_a_cluster(rc: redis.RedisCluster) -> None:
    """`store.traffic_stops` on a cluster client: one global hash, its resume script routed by that key."""
    from anomalydesk.store import traffic_stops

    traffic_stops.record(rc, ["payments", "users"], 1000.0, keys=KEYS)
    assert traffic_stops.resume(rc, ["payments", "gateway"], 1010.0, keys=KEYS) == 1  # gateway: no stop
    assert traffic_stops.resume(rc, ["users"], 990.0, keys=KEYS) == 0  # before the stop: not its end
    stops = traffic_stops.read(rc, keys=KEYS)
    assert (stops["payments"].since, stops["payments"].resumed, stops["users"].resumed) == (1000.0, 1010.0, None)
    assert traffic_stops.stopped_at(stops, 1005.0) == {"payments", "users"}
    assert traffic_stops.stopped_at(stops, 1010.0) == {"users"}


def test_detector_and_operator_actions_run_on_a_cluster(rc: redis.RedisCluster, cluster3: LocalCluster) -> None:
    """Services on 2+ shards scored by one Detector; incidents acted on through the CLI; alerts published."""
    from anomalydesk.detect import incidents as inc
    from anomalydesk.detect import window_scores
    from anomalydesk.detect.detector import Detector
    from anomalydesk.detect.incident_flow import Confirmation
    from anomalydesk.store import models as registry
    from test_detector import add_window, toy_decode, toy_scorer

    services = ["payments", "users", "gateway"]
    assert len({cluster.shard_of(rc, KEYS.state(s)) for s in services}) >= 2
    incident_node = cluster.shard_of(rc, KEYS.incidents)
    assert cluster.shard_of(rc, KEYS.alerts_log) == cluster.shard_of(rc, KEYS.detector_states) == incident_node
    admin.setup(rc, SketchSettings())
    for service in services:
        registry.save(rc, service, json.dumps({"limit": 200}), {"windows": 100})
    flow = [100, 300, 300, 900, 100, 100, 100, 300, 300]  # opens, escalates, resolves; opens again
    for service in services:
        for i, value in enumerate(flow):
            add_window(rc, service, 1000 + i, requests=value)
    det = Detector(rc, scorer=toy_scorer, decode=toy_decode, seal=False, block_ms=10,  # type: ignore[arg-type]
                   confirmation=Confirmation(k=2, n=3, cooldown=2))  # fmt: skip
    assert sum(det.step().processed for _ in range(4)) == len(services) * len(flow)
    logged = [json.loads(f[b"alert"]) for _, f in rc.xrange(KEYS.alerts_log)]
    for service in services:
        kinds = [a["kind"] for a in logged if a["service"] == service]
        assert kinds == ["new", "escalated", "resolved", "new"], (service, kinds)
        assert rc.xpending(KEYS.fingerprints(service), "detectors")["pending"] == 0
        assert json.loads(rc.hget(KEYS.detector_states, service))["last_window"] == 1000 + len(flow) - 1
        # each window's score, committed in the incident slot's script with its state
        assert cluster.shard_of(rc, KEYS.scores(service)) == incident_node
        assert [s.window for s in window_scores.read(rc, service)] == [1000 + i for i in range(len(flow))]
    assert len({a["id"] for a in logged}) == len(logged)

    # operator actions through the CLI; a subscriber on a node that does not hold the incident slot
    # receives what the script PUBLISHes there
    listener_port = next(p for p in cluster3.ports if f"127.0.0.1:{p}" != incident_node)
    pubsub = redis.Redis(port=listener_port).pubsub()
    pubsub.subscribe(KEYS.alerts_channel)
    url = cluster3.url
    opened = {i["service"]: i["id"] for i in cli(url, "incidents", "list")["incidents"]}
    assert sorted(opened) == sorted(services)
    assert cli(url, "incidents", "ack", opened["payments"], "--by", "alice")["acked"]["by"] == "alice"
    assert cli(url, "incidents", "snooze", opened["payments"], "15m")["snoozed_until"]
    assert cli(url, "incidents", "resolve", opened["payments"], "--by", "bob")["status"] == "resolved"
    assert cli(url, "incidents", "false-positive", opened["users"])["false_positive"]
    silence = cli(url, "incidents", "silence", "gate*", "--start", "1970-01-01T00:00:00Z", "--until", "1h",
                  "--reason", "maintenance (test)")  # the test's windows lie in 1970
    assert [s["id"] for s in cli(url, "incidents", "silences")["silences"]] == [silence["id"]]
    published: list[dict] = []
    deadline = time.monotonic() + 30
    while len(published) < 2 and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message and message["type"] == "message":
            published.append(json.loads(message["data"]))
    pubsub.close()
    assert sorted(a["incident_id"] for a in published) == sorted([opened["payments"], opened["users"]])
    assert all(a["kind"] == "resolved" for a in published)
    stored = inc.get(rc, opened["payments"])
    assert stored.acked is not None and stored.resolved is not None
    assert (stored.status, stored.acked.by, stored.resolved.how) == ("resolved", "alice", "operator")
    assert stored.rev == 3  # opened at rev 0 by its last window, then ack, snooze, resolve

    # the detector sees the operators' changes: payments' anomaly continues as a new incident (resolved:
    # the operator said it was fixed), users' does not (a false positive's run opens nothing more), the
    # silenced gateway's incident is kept but its alerts are muted
    for service in services:
        for i, value in enumerate([900, 900], start=len(flow)):
            add_window(rc, service, 1000 + i, requests=value)
    assert sum(det.step().processed for _ in range(3)) == 2 * len(services)
    status = cli(url, "status")
    assert status["incidents_open"] == 2 and status["alerts_total"] == rc.xlen(KEYS.alerts_log)
    after = [json.loads(f[b"alert"]) for _, f in rc.xrange(KEYS.alerts_log)][len(logged):]
    new_payments = [a for a in after if a["service"] == "payments" and a["kind"] == "new"]
    assert len(new_payments) == 1 and new_payments[0]["incident_id"] != opened["payments"]
    assert not [a for a in after if a["service"] == "users" and a["kind"] == "new"]
    gateway = [a for a in after if a["service"] == "gateway"]
    assert gateway and all(a.get("silenced") for a in gateway)
    assert cli(url, "incidents", "unsilence", silence["id"]) == {"removed": silence["id"]}
    det.release()
    assert rc.get(KEYS.detector_lease) is None


class XackFails:
    """A cluster client whose XACKs fail: a detector killed between its commit script and the XACK."""

    def __init__(self, rc: redis.RedisCluster):
        self.rc = rc

    def xack(self, *args: object) -> int:
        raise redis.ConnectionError("killed before the XACK (test)")


def test_a_window_committed_but_not_acknowledged_writes_nothing_twice_on_a_cluster(rc: redis.RedisCluster) -> None:
    from anomalydesk.detect.detector import Detector
    from anomalydesk.detect.incident_flow import Confirmation
    from anomalydesk.store import models as registry
    from test_detector import add_window, toy_decode, toy_scorer

    registry.save(rc, "payments", json.dumps({"limit": 200}), {"windows": 100})
    for i in range(4):
        add_window(rc, "payments", 2000 + i, requests=900)

    def detector(name: str) -> Detector:
        return Detector(rc, name=name, scorer=toy_scorer, decode=toy_decode, seal=False, block_ms=10,  # type: ignore[arg-type]
                        confirmation=Confirmation(k=1, n=1, cooldown=2))  # fmt: skip

    crashing = detector("crashing")
    crashing._committer.r = XackFails(rc)  # type: ignore[assignment]
    with pytest.raises(redis.ConnectionError):
        crashing.step()
    committed = [f[b"alert"] for _, f in rc.xrange(KEYS.alerts_log)]
    assert committed and json.loads(rc.hget(KEYS.detector_states, "payments"))["last_window"] == 2000
    assert rc.xpending(KEYS.fingerprints("payments"), "detectors")["pending"] == 4
    rc.delete(KEYS.detector_owner("payments"))  # its lease ran out
    assert sum(detector("next").step().processed for _ in range(3)) == 4
    alerts = [json.loads(f[b"alert"]) for _, f in rc.xrange(KEYS.alerts_log)]
    assert [a["id"] for a in alerts][: len(committed)] == [json.loads(a)["id"] for a in committed]
    assert len({a["id"] for a in alerts}) == len(alerts)
    assert rc.xpending(KEYS.fingerprints("payments"), "detectors")["pending"] == 0
    assert json.loads(rc.hget(KEYS.detector_states, "payments"))["last_window"] == 2003

def test_detectors_share_services_and_the_app_detector_respects_the_lease_on_a_cluster(
    rc: redis.RedisCluster,
) -> None:
    from anomalydesk.detect.detector import Detector
    from anomalydesk.store import models as registry
    from test_detector import add_window, toy_decode, toy_scorer

    services = ["payments", "users", "gateway"]
    for service in services:
        registry.save(rc, service, json.dumps({"limit": 200}), {"windows": 100})
        for i in range(3):
            add_window(rc, service, 5000 + i, requests=500)

    def detector(name: str, **kw: object) -> Detector:
        return Detector(rc, name=name, scorer=toy_scorer, decode=toy_decode, seal=False, block_ms=10,  # type: ignore[arg-type]
                        service_lease_ms=60_000, **kw)  # type: ignore[arg-type]  # fmt: skip

    one, two, app = detector("one"), detector("two"), detector("app", respect_lease=True)
    assert one.step().services == sorted(services)
    assert two.step().services == []  # every service is owned by "one"
    assert app.step().active is False
    rc.delete(KEYS.detector_owner("users"))  # as if "one" had stopped renewing it
    one._last_refresh = two._last_refresh = 0.0
    assert two.step().services == ["users"] and one.step().services == ["gateway", "payments"]
    for _ in range(3):
        one.step(), two.step()
    assert sorted(json.loads(f[b"alert"])["service"] for _, f in rc.xrange(KEYS.alerts_log)) == sorted(services)
    for service in services:
        assert rc.xpending(KEYS.fingerprints(service), "detectors")["pending"] == 0
    one.release()
    two.release()
    assert app.step().active is True and app.step().services == sorted(services)

def copy_to(rc: redis.RedisCluster, target: redis.Redis) -> int:
    """Every key of every primary (streams with their consumer groups) into one standalone server."""
    copied = 0
    for node in cluster.primaries(rc):
        source = cluster.node_client(rc, node)
        for key in source.scan_iter(count=1000):
            target.restore(key, 0, source.dump(key), replace=True)
            copied += 1
    return copied


@pytest.mark.slow
def test_detect_killed_on_a_cluster_opens_the_fault_incidents_once_and_skips_nothing(
    rc: redis.RedisCluster, cluster3: LocalCluster, tmp_path: Path
) -> None:
    """`detect` on demo fingerprints of 6 services over 3 shards, SIGKILLed 10 times, then finished.

    The alerts must be exactly those a detector that never crashed writes on a standalone copy of
    the same data, every fingerprint handled, none pending, and the injected faults (on services
    of different shards) opened as incidents.
    """
    import math

    from anomalydesk.detect.detector import Detector
    from anomalydesk.ingest.demo import run_fast
    from anomalydesk.ingest.demo_model import parse_inject
    from conftest import RedisServer, kill_at_random_then_finish

    window, kills_wanted = 5, 10
    admin.setup(rc, SketchSettings())
    end = math.floor(time.time() / 86400) * 86400 - 2 * 86400 + 12 * 3600  # same hour, same traffic every run
    run_fast(rc, duration=7200, services=6, seed=31, end=end)
    assert len(cli(cluster3.url, "train", timeout=600)["trained"]) == 6
    for service in DEMO_SERVICES:
        rc.xgroup_create(KEYS.fingerprints(service), "detectors", id="$")
    faults = {"payments": ("spike", 600), "users": ("errors", 1500), "orders": ("latency", 2400)}
    assert len({cluster.shard_of(rc, KEYS.state(s)) for s in faults}) >= 2
    specs = [parse_inject(f"{kind}@{at}+120:{service}") for service, (kind, at) in faults.items()]
    run_fast(rc, duration=3600, services=6, seed=32, end=end + 3600, injects=specs)
    reference_server = RedisServer(tmp_path / "reference")
    try:
        reference = reference_server.client()
        assert copy_to(rc, reference) > 0

        def progress(client: redis.Redis) -> dict[str, int]:
            states = {s: client.hget(KEYS.detector_states, s) for s in DEMO_SERVICES}
            return {s: json.loads(raw)["last_window"] if raw else -1 for s, raw in states.items()}

        target = {s: int(rc.xrevrange(KEYS.fingerprints(s), count=1)[0][1][b"window"]) for s in DEMO_SERVICES}

        def start(name: str) -> subprocess.Popen[bytes]:
            return subprocess.Popen([sys.executable, "-m", "anomalydesk.cli", "detect", "--redis", cluster3.url,
                                     "--no-seal", "--name", name, "--service-lease-ms", "500"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})  # fmt: skip

        kill_at_random_then_finish(start, lambda: progress(rc), target, kills_wanted, seed=9)
        for service in DEMO_SERVICES:
            assert rc.xpending(KEYS.fingerprints(service), "detectors")["pending"] == 0
        got = [json.loads(f[b"alert"]) for _, f in rc.xrange(KEYS.alerts_log)]
        ids = [a["id"] for a in got]
        assert len(ids) == len(set(ids)), "an alert was written twice"
        det = Detector(reference, seal=False, block_ms=10)
        while det.step().processed > 0:
            pass
        assert progress(reference) == target
        expected = [json.loads(f[b"alert"])["id"] for _, f in reference.xrange(KEYS.alerts_log)]
        assert sorted(ids) == sorted(expected)
        for service, (kind, at) in faults.items():
            first = int((end + at) // window)
            opened = [a for a in got if a["service"] == service and a["kind"] == "new"
                      and first <= a["window"] <= first + 6]  # fmt: skip
            assert opened, f"no incident for the {kind} fault on {service}"
        print(f"\ndetect on a cluster killed {kills_wanted} times; {len(ids)} alerts, none twice, none missing")
    finally:
        reference_server.stop()


def test_webhook_notifier_on_a_cluster(rc: redis.RedisCluster, cluster3: LocalCluster) -> None:
    """`notify` reads the alert log with its consumer groups; ack + counters and dead letters in one slot."""
    from anomalydesk.detect.webhooks import Route, dead_letter_key, route_status
    from test_webhooks import FAST, Receiver, RunningNotifier, log_alert, wait_for

    good, gone = Receiver().start(), Receiver(answer=lambda _n: 404).start()
    routes = [Route("all", good.url), Route("gone", gone.url)]
    try:
        with RunningNotifier(cluster3.url, routes, **FAST):
            sent = [log_alert(rc, service, "critical", window=300 + i) for i, service in enumerate(DEMO_SERVICES[:3])]
            wait_for(lambda: len(good.received) == 3 and rc.xlen(dead_letter_key(KEYS)) == 3, "deliveries")
    finally:
        good.stop()
        gone.stop()
    assert [body for _, body in good.received] == sent
    status = {s["name"]: s for s in route_status(rc, routes)}
    assert (status["all"]["delivered"], status["all"]["pending"]) == (3, 0)
    assert (status["gone"]["dead"], status["gone"]["pending"]) == (3, 0)
