"""`anomalydesk collect --workers N`: one port served by N collector processes.

The first process (the supervisor) binds the port, prepares the store once, forks N workers and
then only accepts connections: each accepted connection is handed, round robin, to a worker over a
Unix socket pair (`SCM_RIGHTS`), which serves it to the end like a connection of its own (a
keep-alive connection stays with one worker). A worker is a whole collector — validation,
micro-batching, deadlines, its own Redis client — so every answer is the one a single process gives.
What the workers share:

- **rate limits**: one token bucket per key for all of them, in shared memory
  (`shared_limits.SharedRateLimiter`) — `--rate-limit` and `--rate-burst` mean what they mean with
  one worker, whichever worker a request lands on;
- **exactly-once**: in Redis already (batch ids), so a retry on another worker is still a no-op;
- **API keys**: each worker checks `--api-keys-file` every second itself, so a revoked key stops
  working on all of them within about a second;
- **`/prometheus`**: the worker that is asked fetches the other workers' counters over their private
  Unix sockets (a 0700 directory of the supervisor's) and answers the sums, with
  `anomalydesk_collector_workers{state="configured"|"reporting"}` beside them.

Per worker: the bounds of waiting work (`COLLECTOR_MAX_PENDING_*`) and `/health`'s backlog (it says
which worker answered). A worker that exits is replaced; SIGINT/SIGTERM stop accepting, and each
worker writes what it holds before it exits. A replacement goes on from the counters of the worker it
replaces (`_CarriedCounts`), so the sums never go down. Unix only (fork, `SCM_RIGHTS`).

Why this module is long: it is one job, the two ends of one hand-over protocol — the supervisor's
accept loop, fork and restart, and the worker's receiving side and counter exchange — which are
read together (a change to one end is a change to the other); the shared rate limiter is its own
module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import multiprocessing
import os
import select
import selectors
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import redis
from aiohttp import web

from anomalydesk import logs
from anomalydesk.ingest.access import json_answer
from anomalydesk.ingest.collector import Collector, CollectorSettings, Peers, load_keys, tls_context
from anomalydesk.ingest.collector_metrics import CollectorMetrics
from anomalydesk.ingest.collector_server import StoreBinding, _prepare_or_warn, prepare_store
from anomalydesk.ingest.shared_limits import SharedRateLimiter
from anomalydesk.store.connection import ConnectionFailed, redact_url
from anomalydesk.store.locate import resolve_url

log = logging.getLogger(__name__)

_READY = b"R"
_CONNECTION = b"c"
_START_SECONDS = 60.0  # a worker must listen on its channel within this
_STOP_SECONDS = 30.0  # and exit within this after SIGTERM (it writes what it holds first)
_PEER_SECONDS = 1.0  # /prometheus waits this long for each other worker's counters
_COUNTS_SAVE_SECONDS = 1.0  # a worker saves its counters this often (and before a scrape shows them)
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_RESPAWN_PAUSE = 1.0  # a worker that keeps exiting is not restarted in a tight loop
_HANDOVER_SECONDS = 1.0  # a worker whose channel stays full this long is skipped for the next one


class WorkersFailed(RuntimeError):
    """The workers cannot run here or did not start; the message says why."""


def workers_supported() -> bool:
    """True where `--workers N` > 1 can run (fork and descriptor passing: Linux, macOS, the BSDs)."""
    return hasattr(socket, "send_fds") and "fork" in multiprocessing.get_all_start_methods()


def default_workers() -> int:
    """`--workers` by default: the cores this process may run on (1 where workers are not supported)."""
    if not workers_supported():
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS has no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def _socket_path(rundir: str, index: int) -> str:
    return os.path.join(rundir, f"worker-{index}.sock")


class _CarriedCounts:
    """A worker's counters kept in the supervisor's run directory, so the worker that replaces a dead
    one goes on from them: started at zero, the sums on `/prometheus` went down, which Prometheus
    reads as a counter reset (and `rate()` as a spike of the whole sum). Saved before any scrape shows
    them (and every `_COUNTS_SAVE_SECONDS`), so a sum never goes below one a scrape answered; what a
    worker counted after its last save and before it died is lost, and no scrape saw it."""

    def __init__(self, rundir: str, index: int):
        self.path = os.path.join(rundir, f"worker-{index}.counts.json")

    def restore(self, metrics: CollectorMetrics) -> None:
        try:
            with open(self.path, "rb") as f:
                saved = orjson.loads(f.read())
            CollectorMetrics.merged([saved])  # a malformed file fails here, before `metrics` is touched
            metrics.add(saved)
        except FileNotFoundError:  # the first worker of this index
            return
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("the counts of the worker this one replaces are unreadable (%s): starting at zero", err)

    def save(self, snapshot: dict[str, Any]) -> None:
        carried = {**snapshot, "pending_events": 0, "inflight_ingests": 0}  # gauges are not carried over
        partial = self.path + ".part"
        try:
            with open(partial, "wb") as f:
                f.write(orjson.dumps(carried))
            os.replace(partial, self.path)  # whole or not at all
        except OSError as err:
            log.warning("saving this worker's counts failed (%s): a replacement would start lower", err)


def _peer_reader(rundir: str, index: int, count: int) -> Peers:
    """Fetches the other workers' metrics snapshots (those answering within _PEER_SECONDS)."""

    async def one(path: str) -> dict[str, Any] | None:
        try:
            async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path),
                                             timeout=aiohttp.ClientTimeout(total=_PEER_SECONDS)) as session, \
                    session.get("http://worker/snapshot") as answer:
                return await answer.json() if answer.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return None  # restarting or stopped: the scrape says how many reported

    async def peers() -> tuple[list[dict[str, Any]], int]:
        found = await asyncio.gather(*(one(_socket_path(rundir, i)) for i in range(count) if i != index))
        return [snapshot for snapshot in found if snapshot is not None], count

    return peers


@dataclass
class _Shared:
    """What every worker gets from the supervisor (inherited across fork, never pickled)."""

    settings: CollectorSettings
    url: str
    count: int
    limiter: SharedRateLimiter
    rundir: str
    ssl_context: ssl.SSLContext | None


def _worker_main(index: int, shared: _Shared, channel: socket.socket, inherited: list[int]) -> None:
    """A worker process: close what belongs to the supervisor, then serve connections handed over."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)  # until the event loop handles them
    # blocked by the supervisor across the fork (`Supervisor._fork`): one that came in meanwhile is
    # delivered now, to the default action, instead of to the supervisor's handler copied into this process
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)
    _own_log_file(index)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_worker_serve(index, shared, channel))
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_worker_serve(index, shared, channel))


def _own_log_file(index: int) -> None:
    """A worker writes `collect-worker-<index>.log`: one rotating file per process (a shared one would be
    rotated by one process under the others)."""
    root = logging.getLogger()
    if not any(isinstance(h, logging.handlers.RotatingFileHandler) for h in root.handlers):
        return  # the command was not set up with a log file (tests, embedding)
    console = [h.level for h in root.handlers if type(h) is logging.StreamHandler]
    verbosity = (logging.WARNING - console[0]) // 10 if console else 0
    logs.setup(f"collect-worker-{index}", verbosity)


async def _worker_serve(index: int, shared: _Shared, channel: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    binding = StoreBinding(shared.url)
    counts = _CarriedCounts(shared.rundir, index)
    collector = Collector(binding, shared.settings, load_keys(shared.settings), limiter=shared.limiter,
                          peers=_peer_reader(shared.rundir, index, shared.count), worker=(index, shared.count),
                          observed=counts.save)  # fmt: skip
    counts.restore(collector.metrics)
    preparing = loop.create_task(_prepare_or_warn(binding))  # the supervisor prepared already: a check
    runner = web.AppRunner(collector.app(), access_log=None, handle_signals=False)
    await runner.setup()

    async def snapshot(_request: web.Request) -> web.Response:
        own = collector.metrics_snapshot()
        counts.save(own)
        return json_answer(200, own)

    async def save_counts() -> None:
        while True:
            await asyncio.sleep(_COUNTS_SAVE_SECONDS)
            counts.save(collector.metrics_snapshot())

    internal = web.Application()
    internal.router.add_get("/snapshot", snapshot)
    internal_runner = web.AppRunner(internal, access_log=None, handle_signals=False)
    await internal_runner.setup()
    await web.UnixSite(internal_runner, _socket_path(shared.rundir, index)).start()

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    connecting: set[asyncio.Task[Any]] = set()

    def handed_over() -> None:
        while True:
            try:
                message, fds, _flags, _addr = socket.recv_fds(channel, 16, 8)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                message, fds = b"", []
            if not fds and not message:  # the supervisor is gone: stop like on SIGTERM
                loop.remove_reader(channel.fileno())
                stop.set()
                return
            for fd in fds:
                sock = socket.socket(fileno=fd)
                sock.setblocking(False)
                task = loop.create_task(loop.connect_accepted_socket(runner.server, sock,  # type: ignore[arg-type]
                                                                     ssl=shared.ssl_context))
                connecting.add(task)
                task.add_done_callback(lambda t, s=sock: _connected(t, s, connecting))

    channel.setblocking(False)
    loop.add_reader(channel.fileno(), handed_over)
    try:
        channel.send(_READY)
    except OSError:  # the supervisor is gone already (stopped while starting): nothing to serve
        stop.set()
    saving = loop.create_task(save_counts())
    try:
        await stop.wait()
    finally:
        preparing.cancel()
        saving.cancel()
        with contextlib.suppress(Exception):
            loop.remove_reader(channel.fileno())
        channel.close()
        await runner.cleanup()  # closes its connections, writes what the micro-batcher holds
        counts.save(collector.metrics_snapshot())
        await internal_runner.cleanup()
        await binding.aclose()


def _connected(task: asyncio.Task[Any], sock: socket.socket, connecting: set[asyncio.Task[Any]]) -> None:
    connecting.discard(task)
    if task.cancelled() or task.exception() is not None:  # e.g. a failed TLS handshake: the client is gone
        sock.close()


@dataclass
class _Worker:
    process: Any  # multiprocessing.Process (fork context)
    channel: socket.socket
    started: float
    ready: bool = False  # it said it takes connections: until then the others get them


class Supervisor:
    """Binds the port, runs the workers, hands each accepted connection to the next one."""

    def __init__(self, settings: CollectorSettings, url: str, count: int):
        self.settings = settings
        self.count = count
        self.listener = _listen(settings.host, settings.port)
        self.rundir = tempfile.mkdtemp(prefix="anomalydesk-collect-")  # 0700: the workers' metrics sockets
        self.shared = _Shared(settings, url, count,
                              SharedRateLimiter(settings.rate_limit, max(settings.rate_burst, 1.0)),
                              self.rundir, tls_context(settings))
        self.workers: list[_Worker | None] = [None] * count
        self._next = 0
        self._stopping = False
        self._wake_fds: list[int] = []
        self._respawn: dict[int, float] = {}  # worker index → when to start it again (monotonic)
        self._context = multiprocessing.get_context("fork")

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def _fork(self, index: int) -> None:
        """Fork worker `index` (it takes connections once it has said so: `_await_ready`)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        inherited = [self.listener.fileno(), ours.fileno(), *self._wake_fds,
                     *(w.channel.fileno() for w in self.workers if w is not None)]
        process = self._context.Process(target=_worker_main, args=(index, self.shared, theirs, inherited),
                                        name=f"anomalydesk-collect-{index}")
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a stop signal that came meanwhile: ours now
        theirs.close()
        ours.settimeout(_HANDOVER_SECONDS)  # a worker that stops reading its channel must not stop accepting
        self.workers[index] = _Worker(process, ours, time.monotonic())

    def _await_ready(self, indices: list[int], wake: socket.socket | None) -> None:
        """Wait until each of these workers said it takes connections (WorkersFailed if one does not)."""
        deadline = time.monotonic() + _START_SECONDS
        waiting = {self.workers[i].channel: i for i in indices}  # type: ignore[union-attr]
        while waiting and not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkersFailed(f"collector workers {sorted(waiting.values())} did not start within "
                                    f"{_START_SECONDS:g} s")
            ready, _, _ = select.select([*waiting, *([wake] if wake else [])], [], [], remaining)
            for channel in ready:
                if channel is wake:
                    with contextlib.suppress(OSError):
                        wake.recv(64)
                    continue
                index = waiting.pop(channel)
                try:
                    said = channel.recv(16)
                except OSError:
                    said = b""
                if said != _READY:
                    worker = self.workers[index]
                    if worker is not None:
                        worker.process.join(timeout=5)
                    raise WorkersFailed(f"collector worker {index} did not start (exit code "
                                        f"{worker.process.exitcode if worker else None})")
                self.workers[index].ready = True  # type: ignore[union-attr]

    def run(self, on_ready: Callable[[int], None] | None = None) -> None:
        """Serve until SIGINT/SIGTERM: start the workers, then accept and hand over."""
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        self._wake_fds = [wake_read.fileno(), wake_write.fileno()]
        previous = signal.set_wakeup_fd(wake_write.fileno())
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for index in range(self.count):  # all at once: each prepares on its own
                self._fork(index)
            self._await_ready(list(range(self.count)), wake_read)
            if self._stopping:  # stopped while starting
                return
            if on_ready is not None:
                on_ready(self.port)
            self._serve(wake_read)
        finally:
            signal.set_wakeup_fd(previous)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            self.stop()
            wake_read.close()
            wake_write.close()

    def _on_signal(self, _sig: int, _frame: object) -> None:
        self._stopping = True

    def _serve(self, wake: socket.socket) -> None:
        self.listener.setblocking(False)
        with selectors.DefaultSelector() as selector:
            selector.register(self.listener, selectors.EVENT_READ, "accept")
            selector.register(wake, selectors.EVENT_READ, "wake")
            watched: dict[int, int] = {}
            while not self._stopping:
                for index, worker in enumerate(self.workers):  # exits are seen through the sentinels
                    if worker is not None and worker.process.sentinel not in watched:
                        selector.register(worker.process.sentinel, selectors.EVENT_READ, ("exited", index))
                        watched[worker.process.sentinel] = index
                        if not worker.ready:  # a replacement: its "ready" is read here, not waited for
                            selector.register(worker.channel, selectors.EVENT_READ, ("ready", index))
                due = min(self._respawn.values(), default=None)
                timeout = None if due is None else max(0.0, due - time.monotonic())
                for key, _ in selector.select(timeout):
                    if key.data == "accept":
                        self._accept_all()
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            wake.recv(64)
                    elif key.data[0] == "ready":
                        selector.unregister(key.fileobj)
                        self._heard(key.data[1], key.fileobj)
                    elif not self._stopping:
                        selector.unregister(key.fileobj)
                        watched.pop(key.fd, None)
                        worker = self.workers[key.data[1]]
                        if worker is not None and not worker.ready:
                            with contextlib.suppress(KeyError, ValueError):
                                selector.unregister(worker.channel)
                        self._replace(key.data[1])
                now = time.monotonic()
                for index in [i for i, at in self._respawn.items() if at <= now and not self._stopping]:
                    del self._respawn[index]
                    try:
                        self._fork(index)
                    except OSError as err:
                        log.error("collector worker %d could not be started again: %s", index, err)
                        self._respawn[index] = now + _RESPAWN_PAUSE

    def _accept_all(self) -> None:
        while True:
            try:
                connection, _address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # e.g. out of file descriptors: the client retries
                log.warning("collector: accept failed: %s", err)
                return
            try:
                self._hand_over(connection)
            finally:
                connection.close()  # the worker has its own descriptor now

    def _hand_over(self, connection: socket.socket) -> None:
        anyone_ready = any(w is not None and w.ready for w in self.workers)
        for _ in range(self.count):
            worker = self.workers[self._next]
            self._next = (self._next + 1) % self.count
            if worker is None or (anyone_ready and not worker.ready):
                continue
            try:
                socket.send_fds(worker.channel, [_CONNECTION], [connection.fileno()])
                return
            except OSError:  # TimeoutError among them
                continue  # that worker just exited, or is stuck: the next one takes it
        log.error("collector: no worker to take a connection; it is closed")

    def _replace(self, index: int) -> None:
        """A worker exited: start another in its place — at once, or `_RESPAWN_PAUSE` after the last start
        for one that keeps exiting — without holding up the accept loop (the others take its connections
        until the new one says it is ready)."""
        worker = self.workers[index]
        if worker is None:
            return
        worker.process.join(timeout=1)
        worker.channel.close()
        self.workers[index] = None
        log.error("collector worker %d exited (code %s); starting it again", index, worker.process.exitcode)
        self._respawn[index] = worker.started + _RESPAWN_PAUSE

    def _heard(self, index: int, channel: Any) -> None:
        """A replacement worker's first word: ready (it gets connections from now on) or gone."""
        worker = self.workers[index]
        if worker is None or worker.channel is not channel:
            return
        try:
            said = channel.recv(16)
        except OSError:
            said = b""
        if said == _READY:
            worker.ready = True

    def stop(self) -> None:
        """Stop accepting, let every worker write what it holds and exit, remove the run directory."""
        self._stopping = True
        self.listener.close()
        for worker in self.workers:
            if worker is not None and worker.process.is_alive():
                worker.process.terminate()  # SIGTERM: the worker drains its micro-batcher
        deadline = time.monotonic() + _STOP_SECONDS
        for worker in self.workers:
            if worker is None:
                continue
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.error("collector worker %s did not stop in time; killed", worker.process.name)
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.channel.close()
        self.workers = [None] * self.count
        shutil.rmtree(self.rundir, ignore_errors=True)


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket every worker's connections come from."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    return socket.create_server((bare, port), family=family, backlog=1024)


def run_workers(settings: CollectorSettings, url: str | None, count: int,
                on_ready: Callable[[str], None] | None = None) -> None:
    """`collect --workers N` (N ≥ 2): serve until SIGINT/SIGTERM; `on_ready(url)` once all N take connections."""
    if not workers_supported():
        raise WorkersFailed("--workers above 1 needs fork and descriptor passing (not available on "
                           f"{sys.platform}); run with --workers 1")
    url = resolve_url(url)
    load_keys(settings)  # refuses unusable settings before anything starts (SettingsError)
    tls_context(settings)
    try:
        prepare_store(url)  # once, before the workers: they find the library and the setup in place
    except (ConnectionFailed, redis.RedisError) as err:
        log.warning("Redis at %s is not reachable yet (%s); answering 503 until it is", redact_url(url), err)
    supervisor = Supervisor(settings, url, count)
    scheme = "https" if settings.tls_cert else "http"
    host = f"[{settings.host.strip('[]')}]" if ":" in settings.host else settings.host

    def ready(port: int) -> None:
        log.info("collector listening on %s://%s:%d with %d workers (Redis %s)", scheme, host, port, count,
                 redact_url(url))
        if on_ready is not None:
            on_ready(f"{scheme}://{host}:{port}")

    supervisor.run(ready)

