"""The fast demo (`run_fast`): a simulated clock, as fast as the machine goes, ending at the present.

Events carry timestamps and go through a replay-mode sink, so their windows follow them; a day of
traffic takes seconds and live traffic can continue afterwards without late events. The next chunk
of traffic is generated in a thread while Redis works on the current one (`_prefetched`). A run that
ends at the present records that its traffic ended on purpose (`store.traffic_stops`).
"""

from __future__ import annotations

import math
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import redis

from anomalydesk import config
from anomalydesk.ingest.demo_model import Fault, InjectSpec, Simulation, Traffic
from anomalydesk.ingest.demo_run import TruthRecorder, check_options, plan_faults, prepare, send
from anomalydesk.store import traffic_stops
from anomalydesk.store.admin import covered_spans
from anomalydesk.store.ingest_buffer import IngestSink
from anomalydesk.store.ingest_core import IngestResult
from anomalydesk.store.keys import Keys
from anomalydesk.store.sealing import seal_all

_T = TypeVar("_T")


def chunk_seconds(rate: float, window_s: int) -> int:
    """Simulated seconds per step of fast history: whole windows, fewer of them at high rates."""
    return window_s * max(1, min(config.DEMO_FAST_CHUNK_SECONDS // window_s,
                                 round(config.DEMO_FAST_CHUNK_EVENTS / (rate * window_s))))  # fmt: skip


def history_chunk(sim: Simulation, svc: int, chunk: int, chunk_s: int, rate: float, seed: int,
                   faults: Sequence[Fault] = ()) -> Traffic:
    """Service `svc`'s traffic in step `chunk` of fast history: a function of seed, rate, service and time."""
    c0 = chunk * chunk_s
    return sim.generate(svc, c0, c0 + chunk_s, rate, np.random.default_rng([seed, svc, chunk]), faults)


def _inside(ts: np.ndarray, start: float, end: float, skip: tuple[float, float] | None) -> np.ndarray:
    keep = (ts >= start) & (ts < end)
    return keep if skip is None else keep & ((ts < skip[0]) | (ts >= skip[1]))


def _clip(traffic: Traffic, start: float, end: float, skip: tuple[float, float] | None = None) -> Traffic:
    """The traffic in [start, end), without the span `skip` [a, b) when given."""
    keep = _inside(traffic.timestamps, start, end, skip)
    if not keep.all():
        traffic = Traffic(traffic.service, traffic.endpoints, traffic.endpoint_idx[keep], traffic.status[keep],
                          traffic.latency_ms[keep], traffic.timestamps[keep], traffic.kpis)  # fmt: skip
    for kpi in traffic.kpis:
        inside = _inside(kpi.timestamps, start, end, skip)
        kpi.values, kpi.timestamps = kpi.values[inside], kpi.timestamps[inside]
        kpi.low, kpi.high = kpi.low[inside], kpi.high[inside]
    return traffic


def run_fast(r: redis.Redis, *, duration: float, rate: float = config.DEMO_DEFAULT_RATE,
             services: int = config.DEMO_DEFAULT_SERVICES, seed: int | None = None,
             injects: Sequence[InjectSpec] = (), truth_path: Path | str | None = None,
             end: float | None = None, keys: Keys | None = None,
             progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Generate `duration` simulated seconds ending now (or at `end`) as fast as possible.

    Deterministic for a seed: the traffic of a window depends only on the seed, the rate, the
    service and the absolute time (a random generator per service and aligned chunk), so two runs
    with the same seed and rate produce identical fingerprints for every window they both cover. `progress` gets the
    fraction done. Returns the summary `demo --fast --json` prints.
    """
    check_options(rate, services, duration)
    keys = keys or Keys(config.key_prefix())
    window_s = prepare(r, keys)
    seed = random.randrange(2**31) if seed is None else seed
    sim = Simulation(services, window_s)
    catch_up = end is None
    if end is None:
        end = server_window_start(r, window_s)  # the current window stays open for live traffic
    start = end - duration
    faults = plan_faults(injects, start, end, sim.names)
    truth = TruthRecorder(r, keys, truth_path)
    chunk_s = chunk_seconds(rate, window_s)
    first, last = math.floor(start / chunk_s), math.ceil(end / chunk_s)

    # what a service's live stream covers already is left out: earlier windows land in its history,
    # later ones continue a replayed stream (read before the first write: this run starts others' streams)
    covered = covered_spans(r, sim.names, keys)

    def chunks(lo: float, hi: float) -> Iterator[list[Traffic]]:
        for chunk in range(math.floor(lo / chunk_s), math.ceil(hi / chunk_s)):
            yield [_clip(history_chunk(sim, svc, chunk, chunk_s, rate, seed, faults), lo, hi,
                         covered.get(sim.names[svc]))
                   for svc in range(services)]  # fmt: skip

    # the sink holds one chunk of every service; we flush after each chunk, never on size
    per_chunk = rate * chunk_s * 2 * config.DEMO_FAULT_SPIKE_FACTOR
    sink = IngestSink(r, replay=True, max_batch=2**62, max_buffered=int(max(per_chunk, 1e6)), keys=keys)
    wall0 = time.perf_counter()
    events = kpis = 0
    result = IngestResult()
    try:
        for fault in faults:
            truth.record(fault)
        for done, traffics in enumerate(_prefetched(chunks(start, end)), start=1):
            for traffic in traffics:
                kpis += send(sink, traffic, replay=True)
                events += len(traffic)
            result = result + sink.flush()  # one FCALL per service per chunk, chunks in time order
            if progress is not None:
                progress(done / (last - first))
        # the run took wall time: generate what the present moved on meanwhile (shorter each round),
        # so live traffic that follows finds no gap of silent windows
        while catch_up and (now := server_window_start(r, window_s)) > end:
            for traffics in chunks(end, now):
                for traffic in traffics:
                    kpis += send(sink, traffic, replay=True)
                    events += len(traffic)
                result = result + sink.flush()
            end = now
        result = result + sink.close()
        sealed = seal_all(r, now=end, keys=keys)
        if catch_up:  # ended at the present on purpose: unless live traffic follows, the silence is no gap
            fed = [name for name in sim.names if covered.get(name, (0.0, 0.0))[1] != math.inf]
            traffic_stops.record(r, fed, end, keys=keys)  # (the others have live streams: history only here)
    finally:
        truth.close()
    wall = time.perf_counter() - wall0
    stopped = {name: span[0] for name, span in covered.items() if span[0] < end and span[1] > start}
    summary = {
        "mode": "fast", "services": sim.names, "rate": rate, "seed": seed, "window_seconds": window_s,
        "start": start, "end": end, "duration_s": duration, "caught_up_s": end - start - duration,
        "wall_s": round(wall, 3),
        "events": events, "business_metrics": kpis, "accepted": result.accepted, "late": result.late,
        "events_accepted": result.events_accepted, "events_late": result.events_late,
        "kpis_accepted": result.kpis_accepted, "kpis_late": result.kpis_late,
        "left_out": {name: [a, None if b == math.inf else b] for name, (a, b) in covered.items() if name in stopped},
        "history_windows_sealed": result.history_sealed,
        "windows_sealed": result.sealed + sealed, "events_per_s": round(events / wall, 1) if wall > 0 else None,
        "faults": truth.recorded, "truth_file": str(truth_path) if truth_path is not None else None,
    }  # fmt: skip
    summary["summary"] = _fast_summary(events, kpis, duration, wall, result, stopped, start)
    return summary


def _fast_summary(events: int, kpis: int, duration: float, wall: float, result: IngestResult,
                  stopped: dict[str, float], start: float) -> str:
    """One line: what was sent, where history stopped, and what was refused and why."""
    text = f"{events:,} events and {kpis:,} KPI reports over {duration:g} simulated s in {wall:.1f} s"
    if stopped:
        earliest = min(stopped.values())
        text += (f"; left out what {len(stopped)} service(s) already have (their streams begin at "
                 f"{time.strftime('%H:%M:%S', time.localtime(earliest))}; earlier windows are history)")
    if result.late:
        text += (f"; refused as late (their windows were already sealed): {result.events_late:,} events, "
                 f"{result.kpis_late:,} KPI reports")
    return text


def server_window_start(r: redis.Redis, window_s: int) -> float:
    """Start of the server's current window (live windows follow the server's clock)."""
    seconds, micros = r.time()
    return math.floor((seconds + micros / 1e6) / window_s) * window_s


def _prefetched(items: Iterator[_T], depth: int = 2) -> Iterator[_T]:
    """Iterate `items` in a background thread up to `depth` ahead.

    Generating the next chunk (numpy, which releases the GIL) then overlaps with Redis working on
    the current one. An exception in the producer is raised here; leaving early stops the producer.
    """
    handoff: queue.Queue[Any] = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(end)
        except BaseException as err:  # handed to the consumer, raised there
            put(err)

    thread = threading.Thread(target=produce, name="anomalydesk-demo-generate", daemon=True)
    thread.start()
    try:
        while (item := handoff.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()

