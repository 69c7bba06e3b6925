"""`anomalydesk collect --workers 2` against a real redis-server: one port, two processes, the answers,
limits, key reloads, rate limits, exactly-once and /prometheus of one collector."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from anomalydesk.ingest.collector import CollectorSettings
from anomalydesk.ingest.collector_metrics import CollectorMetrics
from anomalydesk.ingest.collector_server import BackgroundCollector
from anomalydesk.ingest.http_auth import RateLimiter
from anomalydesk.ingest.shared_limits import SharedRateLimiter
from conftest import free_port
from test_collector import events_total, metric, post, request

KEY_A = "key-aaaaaaaaaaaaaaaaaaaa"
KEY_B = "key-bbbbbbbbbbbbbbbbbbbb"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextlib.contextmanager
def collect(redis_url: str, *extra: str, workers: int = 2,
            env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`anomalydesk collect --workers N --json` in a subprocess: (its URL, the process)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "anomalydesk.cli", "collect", "--port", "0", "--redis", redis_url, "--json",
         "--workers", str(workers), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
    )
    try:
        text = ""
        while (match := re.search(r'"listening":\s*"([^"]+)"', text)) is None:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line, f"the collector did not start: {proc.stderr.read()}"  # type: ignore[union-attr]
            text += line
        yield match.group(1), proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.communicate(timeout=60)


def worker_of(url: str) -> int:
    """Which worker answered a request on a new connection (GET /health says)."""
    status, _, body = request(url, "GET", "/health")
    assert status == 200
    return int(body["worker"]["index"])


def samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


# --- the processes -----------------------------------------------------------------------------
def test_connections_go_round_robin_and_every_answer_is_the_single_collectors(redis_url: str,
                                                                              r: redis.Redis) -> None:
    bodies: list[bytes] = [
        json.dumps([metric(), metric(service="users", status=503)]).encode(),  # 202
        json.dumps([metric(), metric(status=42), metric(endpoint="nope")]).encode(),  # 200 + named rejections
        json.dumps([metric(status="200"), metric(latency=-1)]).encode(),  # 422
        b'{"service": ',  # 400
        json.dumps([metric()] * 10_001).encode(),  # 413: too many events
        b'[{"service": "orders", "endpoint": "GET:/x", "status_code": 200, "response_time": NaN}]',  # 422, NaN named
    ]
    with BackgroundCollector(CollectorSettings(port=0), redis_url) as single:
        expected = [post(single.url, "/metrics", body)[::2] for body in bodies]
    stored_by_one = events_total(r)
    assert [status for status, _ in expected] == [202, 200, 422, 400, 413, 422]
    with collect(redis_url) as (url, _proc):
        seen = [worker_of(url) for _ in range(4)]
        assert sorted(seen) == [0, 0, 1, 1] and seen[0] != seen[1]  # one after the other
        for body, answer in zip(bodies, expected, strict=True):
            first, second = post(url, "/metrics", body)[::2], post(url, "/metrics", body)[::2]
            assert first == second == answer  # from both workers (consecutive connections)
    assert events_total(r) == 3 * stored_by_one


def test_rate_limit_is_shared_by_the_workers_not_split(redis_url: str, r: redis.Redis) -> None:
    # a burst of 5 and almost no refill: 5 requests pass whichever worker they reach; with a bucket per
    # worker 10 would
    with collect(redis_url, "--api-key", KEY_A, "--api-key", KEY_B, "--rate-limit", "0.001",
                 "--rate-burst", "5") as (url, _proc):
        codes = [post(url, "/metrics", metric(), bearer(KEY_A))[0] for _ in range(10)]
        assert codes == [202] * 5 + [429] * 5
        assert [post(url, "/metrics", metric(), bearer(KEY_B))[0] for _ in range(6)] == [202] * 5 + [429]
        status, headers, _ = post(url, "/metrics", metric(), bearer(KEY_A))
        assert status == 429 and int(headers["retry-after"]) >= 1
        scraped = samples(request(url, "GET", "/prometheus", headers=bearer(KEY_A))[2])
        assert scraped["anomalydesk_collector_rate_limited_total"] == 7  # 429s answered by both workers
    assert events_total(r) == 10


def test_a_key_revoked_in_the_file_stops_on_every_worker(redis_url: str, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{KEY_A}\n{KEY_B}\n")
    with collect(redis_url, "--api-keys-file", str(keys_file), "--rate-limit", "0") as (url, _proc):
        assert [post(url, "/metrics", metric(), bearer(KEY_A))[0] for _ in range(4)] == [202] * 4
        keys_file.write_text(f"{KEY_B}\n")  # revoke A
        deadline = time.monotonic() + 20
        while [post(url, "/metrics", metric(), bearer(KEY_A))[0] for _ in range(4)] != [401] * 4:
            assert time.monotonic() < deadline, "a worker still took the revoked key"
            time.sleep(0.2)
        assert [post(url, "/metrics", metric(), bearer(KEY_B))[0] for _ in range(4)] == [202] * 4


def test_a_retry_on_the_other_worker_is_counted_once(redis_url: str, r: redis.Redis) -> None:
    batch = [metric(), metric(service="users"), metric(status=7)]
    with collect(redis_url, "--rate-limit", "0") as (url, _proc):
        answers = [post(url, "/metrics", batch, {"Idempotency-Key": "retry-0001"}) for _ in range(4)]
        assert [a[0] for a in answers] == [200] * 4
        assert [a[1].get("idempotent-replayed") for a in answers] == [None, "true", "true", "true"]
        assert events_total(r) == 2
        # the same key from 8 clients at once, spread over both workers: stored once
        codes: list[int] = []
        threads = [threading.Thread(target=lambda: codes.append(
            post(url, "/metrics", batch[:2], {"Idempotency-Key": "retry-0002"})[0])) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert codes == [202] * 8
        assert events_total(r) == 4


def test_prometheus_answers_the_sums_over_the_workers(redis_url: str) -> None:
    with collect(redis_url, "--rate-limit", "0") as (url, _proc):
        for i in range(6):  # three on each worker
            assert post(url, "/metrics", [metric(), metric(latency=i)])[0] == 202
        assert post(url, "/metrics", [metric(), metric(status=42)])[0] == 200
        scrapes = [samples(request(url, "GET", "/prometheus")[2]) for _ in range(2)]  # one from each worker
    for scraped in scrapes:
        assert scraped['anomalydesk_collector_requests_total{path="/metrics",code="202"}'] == 6
        assert scraped['anomalydesk_collector_requests_total{path="/metrics",code="200"}'] == 1
        assert scraped["anomalydesk_collector_events_accepted_total"] == 13
        assert scraped["anomalydesk_collector_events_rejected_total"] == 1
        assert scraped["anomalydesk_collector_ingest_batch_events_count"] == 7
        assert scraped['anomalydesk_collector_ingest_batch_events_bucket{le="+Inf"}'] == 7
        assert scraped['anomalydesk_collector_workers{state="configured"}'] == 2
        assert scraped['anomalydesk_collector_workers{state="reporting"}'] == 2


def test_prometheus_refuses_a_sum_over_fewer_workers_than_run(redis_url: str) -> None:
    import concurrent.futures

    with collect(redis_url, "--rate-limit", "0") as (url, proc):
        stopped = psutil.Process(proc.pid).children()[0]
        stopped.suspend()  # it cannot answer its peer (nor a scrape handed to it) until resumed
        try:
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                scrapes = [pool.submit(request, url, "GET", "/prometheus") for _ in range(2)]  # one reaches each
                done, _ = concurrent.futures.wait(scrapes, timeout=20, return_when="FIRST_COMPLETED")
                assert done, "the running worker did not answer"
                status, head, text = next(iter(done)).result()
                # a sum over one of two workers would read as a counter reset: the scrape fails instead
                assert status == 503 and head["retry-after"] == "1" and "1 of 2 collector workers" in text
                stopped.resume()
                assert all(f.result()[0] in (200, 503) for f in scrapes)
        finally:
            stopped.resume()
        assert request(url, "GET", "/prometheus")[0] == 200


def test_a_worker_that_dies_is_replaced(redis_url: str, r: redis.Redis) -> None:
    with collect(redis_url, "--rate-limit", "0") as (url, proc):
        children = psutil.Process(proc.pid).children()
        assert len(children) == 2
        os.kill(children[0].pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:  # the supervisor starts it again; meanwhile the other worker takes what it can
            pids = {child.pid for child in psutil.Process(proc.pid).children()}
            if len(pids) == 2 and children[0].pid not in pids:
                break
            assert time.monotonic() < deadline, "the dead worker was not replaced"
            time.sleep(0.1)
        assert sorted(worker_of(url) for _ in range(4)) == [0, 0, 1, 1]
        assert [post(url, "/metrics", metric())[0] for _ in range(4)] == [202] * 4
    assert events_total(r) == 4


def _scrape(url: str) -> dict[str, float]:
    """One /prometheus answer over every worker (a 503 while one is restarting: scraped again)."""
    deadline = time.monotonic() + 30
    while (answer := request(url, "GET", "/prometheus"))[0] != 200:
        assert answer[0] == 503 and time.monotonic() < deadline, answer
        time.sleep(0.2)
    return samples(answer[2])


def test_the_worker_that_replaces_a_dead_one_goes_on_from_its_counters(redis_url: str) -> None:
    """Started at zero, the replacement made every sum on /prometheus go down: a counter reset to
    Prometheus, and the whole sum counted again by rate()."""
    with collect(redis_url, "--rate-limit", "0") as (url, proc):
        for i in range(6):  # three on each worker
            assert post(url, "/metrics", [metric(), metric(latency=i)])[0] == 202
        before = _scrape(url)
        assert before["anomalydesk_collector_events_accepted_total"] == 12
        dead = psutil.Process(proc.pid).children()[0]
        os.kill(dead.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while dead.pid in {c.pid for c in psutil.Process(proc.pid).children()} or \
                len(psutil.Process(proc.pid).children()) < 2:  # fmt: skip
            assert time.monotonic() < deadline, "the dead worker was not replaced"
            time.sleep(0.1)
        after = _scrape(url)
        counters = [name for name in before
                    if "_total" in name or "_bucket" in name or name.endswith(("_count", "_sum"))]
        assert len(counters) > 20
        assert {name: (before[name], after.get(name)) for name in counters if after.get(name, -1) < before[name]} == {}
        assert after["anomalydesk_collector_events_accepted_total"] == 12
        for _ in range(4):
            assert post(url, "/metrics", metric())[0] == 202
        assert _scrape(url)["anomalydesk_collector_events_accepted_total"] == 16


def test_sigterm_stores_every_answered_batch_and_leaves_no_process(redis_url: str, r: redis.Redis) -> None:
    answered: list[int] = []
    stop = threading.Event()

    def client(url: str, n: int) -> None:
        while not stop.is_set():
            try:
                key = {"Idempotency-Key": f"t{n}-{len(answered)}"}
                status = post(url, "/metrics", [metric(latency=n)] * 50, key)[0]
            except OSError:  # refused once the port is closed
                return
            if status == 202:
                answered.append(50)

    with collect(redis_url, "--rate-limit", "0") as (url, proc):
        workers = psutil.Process(proc.pid).children()
        threads = [threading.Thread(target=client, args=(url, n)) for n in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert answered
    assert events_total(r) >= sum(answered)  # every 202 is stored (a batch cut off mid-answer may be too)
    assert not any(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE for worker in workers)


def test_each_worker_writes_its_own_log_file_and_sigterm_while_starting_is_clean(tmp_path: Path) -> None:
    # Redis unreachable: the workers start anyway (503 until it is back), each logging to its own file
    env = {"ANOMALYDESK_LOG_DIR": str(tmp_path)}
    with collect("redis://127.0.0.1:1/0", env=env) as (url, _proc):
        status, _, body = post(url, "/metrics", metric())
        assert status == 503 and body["stored"] == "no"
    assert {p.name for p in tmp_path.glob("*.log")} == {"collect.log", "collect-worker-0.log", "collect-worker-1.log"}
    assert "Redis unreachable" in "".join(p.read_text() for p in tmp_path.glob("collect-worker-*.log"))
    proc = subprocess.Popen([sys.executable, "-m", "anomalydesk.cli", "collect", "--port", "0", "--workers", "2",
                             "--redis", "redis://127.0.0.1:1/0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **env})
    deadline = time.monotonic() + 30
    while len(psutil.Process(proc.pid).children()) < 2:  # forked, maybe not listening yet
        assert time.monotonic() < deadline
        time.sleep(0.01)
    children = psutil.Process(proc.pid).children()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children)


def test_a_killed_supervisor_leaves_no_worker_behind_and_frees_the_port(redis_url: str, r: redis.Redis) -> None:
    port = free_port()
    with collect(redis_url, "--rate-limit", "0", "--port", str(port)) as (url, proc):
        assert url.endswith(f":{port}")
        assert [post(url, "/metrics", metric())[0] for _ in range(4)] == [202] * 4
        workers = psutil.Process(proc.pid).children()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 30  # the workers see their channel close, write what they hold, exit
        while any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers):
            assert time.monotonic() < deadline, "a worker outlived its supervisor"
            time.sleep(0.1)
    with collect(redis_url, "--rate-limit", "0", "--port", str(port)) as (url, _proc):
        assert [post(url, "/metrics", metric())[0] for _ in range(2)] == [202] * 2
    assert events_total(r) == 6


def test_workers_flag_is_checked() -> None:
    proc = subprocess.run([sys.executable, "-m", "anomalydesk.cli", "collect", "--workers", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--workers must be at least 1" in proc.stderr


# --- the shared parts, alone ----------------------------------------------------------------------
def test_shared_rate_limiter_answers_like_the_per_process_one() -> None:
    now = [100.0]
    shared = SharedRateLimiter(10, 3, clock=lambda: now[0])
    plain = RateLimiter(10, 3, clock=lambda: now[0])
    for step in range(200):
        bucket = f"k{step % 3}"
        assert shared.acquire(bucket) == pytest.approx(plain.acquire(bucket)), step
        now[0] += 0.013 * (step % 7)
    assert SharedRateLimiter(0, 1).acquire("k") == 0.0  # 0 disables


def test_shared_rate_limiter_is_one_table_across_fork() -> None:
    limiter = SharedRateLimiter(0.001, 5)
    assert limiter.acquire("key") == 0.0
    pid = os.fork()
    if pid == 0:  # the child takes three more tokens of the same bucket
        code = 0 if all(limiter.acquire("key") == 0.0 for _ in range(3)) else 1
        os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    assert limiter.acquire("key") == 0.0  # the fifth
    assert limiter.acquire("key") > 0  # the child's three counted here


def test_a_worker_killed_holding_the_shared_lock_does_not_freeze_the_others() -> None:
    limiter = SharedRateLimiter(10, 10)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker inside acquire()'s critical section, then the OOM killer
        limiter._lock.__enter__()
        os.write(ready_w, b"x")
        time.sleep(60)
        os._exit(0)
    assert os.read(ready_r, 1) == b"x"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    done = threading.Event()
    result: list[float] = []
    threading.Thread(target=lambda: (result.append(limiter.acquire("key")), done.set()), daemon=True).start()
    # a multiprocessing.Lock stays taken when its holder dies: this waited for ever
    assert done.wait(10) and result == [0.0]
    os.close(ready_r)
    os.close(ready_w)


def test_shared_rate_limiter_reuses_full_buckets_and_falls_back_when_crowded() -> None:
    now = [0.0]
    limiter = SharedRateLimiter(1, 2, slots=4, clock=lambda: now[0])
    for i in range(4):  # every slot holds a bucket that is not full
        assert limiter.acquire(f"k{i}") == 0.0
    assert limiter.acquire("crowded") == 0.0 and limiter.fallbacks == 1  # its own bucket, counted
    now[0] += 10  # everything refilled: a full bucket is the same as none, its slot is taken over
    assert limiter.acquire("new") == 0.0 and limiter.fallbacks == 1
    assert limiter.acquire("new") == 0.0 and limiter.acquire("new") > 0  # burst 2, in the shared table


def test_metrics_of_workers_add_up() -> None:
    a, b = CollectorMetrics(), CollectorMetrics()
    a.request("/metrics", 202)
    b.request("/metrics", 202)
    b.request("/metrics", 429)
    a.events_accepted, b.events_accepted, b.rate_limited = 3, 4, 1
    a.batch_events.observe(3)
    b.batch_events.observe(4000)
    merged, pending, inflight = CollectorMetrics.merged([a.snapshot(1, 0), b.snapshot(2, 1)])
    assert merged.requests == {("/metrics", 202): 2, ("/metrics", 429): 1}
    assert (merged.events_accepted, merged.rate_limited, pending, inflight) == (7, 1, 3, 1)
    assert merged.batch_events.count == 2 and merged.batch_events.total == 4003
    text: Any = merged.render(pending, inflight, (2, 2))
    assert 'anomalydesk_collector_workers{state="reporting"} 2' in text
