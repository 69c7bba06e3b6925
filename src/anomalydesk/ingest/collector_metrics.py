"""The collector's own metrics, exposed at `GET /prometheus` in the Prometheus text format (0.0.4)."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX = "anomalydesk_collector"


@dataclass
class Histogram:
    """A cumulative histogram with fixed upper bounds (the `le` buckets) plus sum and count."""

    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def add(self, other: dict[str, Any]) -> None:
        """Add another histogram's `snapshot()` (same bounds) to this one."""
        if tuple(other["bounds"]) != self.bounds:
            raise ValueError("histograms with different buckets cannot be added")
        self.counts = [a + b for a, b in zip(self.counts, other["counts"], strict=True)]
        self.total += other["total"]
        self.count += other["count"]

    def snapshot(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "total": self.total, "count": self.count}

    def lines(self, name: str) -> list[str]:
        out = []
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append(f'{name}_bucket{{le="{_number(bound)}"}} {running}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {_number(self.total)}")
        out.append(f"{name}_count {self.count}")
        return out


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


_COUNTERS = ("events_accepted", "events_rejected", "duplicate_batches", "redis_errors", "rate_limited",
             "auth_failures", "deadlines_passed", "overloaded")


@dataclass
class CollectorMetrics:
    """Counters the collector updates as it works; `render()` is the `/prometheus` body."""

    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    events_accepted: int = 0
    events_rejected: int = 0
    duplicate_batches: int = 0
    redis_errors: int = 0
    rate_limited: int = 0
    auth_failures: int = 0
    deadlines_passed: int = 0
    overloaded: int = 0
    batch_events: Histogram = field(
        default_factory=lambda: Histogram((1, 5, 10, 50, 100, 500, 1000, 2000, 5000, 10000))
    )
    redis_seconds: Histogram = field(
        default_factory=lambda: Histogram((0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5))
    )

    def request(self, path: str, code: int) -> None:
        self.requests[(path, code)] += 1

    def snapshot(self, pending_events: int, inflight_ingests: int) -> dict[str, Any]:
        """Everything `render` shows, as JSON-able data (one worker's part of `collect --workers N`)."""
        return {"requests": [[path, code, n] for (path, code), n in self.requests.items()],
                "counters": {name: getattr(self, name) for name in _COUNTERS},
                "batch_events": self.batch_events.snapshot(), "redis_seconds": self.redis_seconds.snapshot(),
                "pending_events": pending_events, "inflight_ingests": inflight_ingests}

    def add(self, snapshot: dict[str, Any]) -> tuple[int, int]:
        """Add another worker's `snapshot()` to these metrics; its (pending_events, inflight_ingests)."""
        for path, code, n in snapshot["requests"]:
            self.requests[(path, int(code))] += int(n)
        for name in _COUNTERS:
            setattr(self, name, getattr(self, name) + int(snapshot["counters"][name]))
        self.batch_events.add(snapshot["batch_events"])
        self.redis_seconds.add(snapshot["redis_seconds"])
        return int(snapshot["pending_events"]), int(snapshot["inflight_ingests"])

    @classmethod
    def merged(cls, snapshots: Iterable[dict[str, Any]]) -> tuple[CollectorMetrics, int, int]:
        """The sum of several workers' snapshots: (metrics, pending_events, inflight_ingests)."""
        total, pending, inflight = cls(), 0, 0
        for snapshot in snapshots:
            p, i = total.add(snapshot)
            pending, inflight = pending + p, inflight + i
        return total, pending, inflight

    def render(self, pending_events: int, inflight_ingests: int, workers: tuple[int, int] | None = None) -> str:
        """The exposition text: HELP/TYPE lines, then samples."""
        p = _PREFIX
        lines = [
            f"# HELP {p}_requests_total HTTP requests answered, by route and status code.",
            f"# TYPE {p}_requests_total counter",
        ]
        for (path, code), n in sorted(self.requests.items()):
            lines.append(f'{p}_requests_total{{path="{_label(path)}",code="{code}"}} {n}')
        for name, value, text in (
            ("events_accepted_total", self.events_accepted, "Events stored in Redis."),
            ("events_rejected_total", self.events_rejected, "Events refused as invalid (index, field, reason)."),
            ("duplicate_batches_total", self.duplicate_batches, "Retried batches recognised by their id."),
            ("redis_errors_total", self.redis_errors, "Ingest calls that failed because Redis was unreachable."),
            ("rate_limited_total", self.rate_limited, "Requests answered 429."),
            ("auth_failures_total", self.auth_failures, "Requests answered 401."),
            ("deadlines_passed_total", self.deadlines_passed,
             "Ingest calls cancelled at the request's deadline (answered 503)."),
            ("overloaded_total", self.overloaded,
             "Requests answered 503 because the pending events or bytes were at their bound."),
        ):
            lines += [f"# HELP {p}_{name} {text}", f"# TYPE {p}_{name} counter", f"{p}_{name} {value}"]
        lines += [
            f"# HELP {p}_ingest_batch_events Events per ingest call to Redis (after micro-batching).",
            f"# TYPE {p}_ingest_batch_events histogram",
            *self.batch_events.lines(f"{p}_ingest_batch_events"),
            f"# HELP {p}_redis_ingest_seconds Duration of one ingest call to Redis.",
            f"# TYPE {p}_redis_ingest_seconds histogram",
            *self.redis_seconds.lines(f"{p}_redis_ingest_seconds"),
            f"# HELP {p}_pending_events Events waiting for their ingest call.",
            f"# TYPE {p}_pending_events gauge",
            f"{p}_pending_events {pending_events}",
            f"# HELP {p}_inflight_ingests Ingest calls to Redis in flight.",
            f"# TYPE {p}_inflight_ingests gauge",
            f"{p}_inflight_ingests {inflight_ingests}",
        ]
        if workers is not None:  # collect --workers N: the sums above are over the workers that answered
            reporting, configured = workers
            lines += [
                f"# HELP {p}_workers Worker processes of this collector: configured, and reporting in this scrape.",
                f"# TYPE {p}_workers gauge",
                f'{p}_workers{{state="configured"}} {configured}',
                f'{p}_workers{{state="reporting"}} {reporting}',
            ]
        return "\n".join(lines) + "\n"
