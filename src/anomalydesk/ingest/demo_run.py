"""What every demo run does, fast or live: check the options, prepare the store, plan and record the
faults (ground truth), and hand a service's simulated traffic to the sink."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from anomalydesk import config
from anomalydesk.events import BusinessMetric
from anomalydesk.ingest.demo_model import Fault, InjectSpec, Traffic, check_fault
from anomalydesk.ingest.demo_services import service_names
from anomalydesk.store.admin import read_settings, setup
from anomalydesk.store.gears import ensure_library
from anomalydesk.store.ingest_buffer import IngestSink
from anomalydesk.store.keys import Keys


def prepare(r: redis.Redis, keys: Keys) -> int:
    """Make sure setup ran (default settings if never) and the library is loaded; the window length."""
    stored = read_settings(r, keys)
    if stored.configured:
        ensure_library(r)
        return stored.settings.window_seconds
    setup(r, config.SketchSettings(), keys=keys)
    return read_settings(r, keys).settings.window_seconds


def check_options(rate: float, n_services: int, duration: float | None) -> None:
    """Raise ValueError naming the option when a demo option is out of range."""
    if not (math.isfinite(rate) and 0 < rate <= config.DEMO_MAX_RATE):
        raise ValueError(f"--rate must be more than 0 and at most {config.DEMO_MAX_RATE:,.0f} events/s, got {rate}")
    service_names(n_services)
    if duration is not None and not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"--duration must be more than 0 seconds, got {duration}")


def plan_faults(specs: Sequence[InjectSpec], start: float, end: float | None,
                services: Sequence[str]) -> list[Fault]:
    """Faults at absolute times for `--inject` specs of a demo starting at `start` (end clips them)."""
    faults = []
    for spec in specs:
        check_fault(spec.kind, spec.service, services)
        if end is not None and start + spec.offset >= end:
            raise ValueError(f"--inject {spec.kind}@{spec.offset:g}: starts after the demo ends "
                             f"(--duration {end - start:g} s)")  # fmt: skip
        stop = start + spec.offset + spec.length
        faults.append(Fault(spec.kind, spec.service, start + spec.offset, stop if end is None else min(stop, end)))
    return faults


class TruthRecorder:
    """Writes ground truth: XADD to the truth stream (trimmed) and, optionally, a JSON-lines file."""

    def __init__(self, r: redis.Redis, keys: Keys, path: Path | str | None = None):
        self.r = r
        self.keys = keys
        self.recorded: list[dict[str, Any]] = []
        self._file = open(path, "a", encoding="utf-8") if path is not None else None  # noqa: SIM115

    def record(self, fault: Fault) -> None:
        """Record one fault in the stream and the file."""
        truth = fault.truth()
        self.r.xadd(self.keys.demo_truth, {k: "" if v is None else str(v) for k, v in truth.items()},
                    maxlen=config.DEMO_TRUTH_MAXLEN, approximate=True)  # fmt: skip
        if self._file is not None:
            self._file.write(json.dumps(truth) + "\n")
            self._file.flush()
        self.recorded.append(truth)

    def close(self) -> None:
        """Close the file (the stream needs nothing)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def send(sink: IngestSink, traffic: Traffic, replay: bool) -> int:
    """Hand one service's traffic to the sink (business metrics first); the number of metrics sent."""
    kpis = 0
    for kpi in traffic.kpis:
        stamps = kpi.timestamps.tolist() if replay else [None] * kpi.values.size
        for value, low, high, ts in zip(kpi.values.tolist(), kpi.low.tolist(), kpi.high.tolist(), stamps,
                                        strict=True):  # fmt: skip
            sink.add(BusinessMetric(traffic.service, kpi.name, value, low, high, ts))
        kpis += kpi.values.size
    sink.add_arrays(traffic.service, traffic.endpoints, traffic.endpoint_idx, traffic.status,
                    traffic.latency_ms, traffic.timestamps if replay else None)  # fmt: skip
    return kpis

