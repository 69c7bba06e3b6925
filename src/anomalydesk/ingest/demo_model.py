"""The simulated microservice system behind `anomalydesk demo` (pure: numpy, no Redis).

The services themselves (endpoint mixes, shares, the daily load cycle) are in `demo_services`; this
module turns them into traffic for an interval: Poisson arrivals, endpoints, status codes,
log-normal latencies that rise gently with the load, and the business KPIs (`orders` reports orders
per window, `payments` each payment's amount). It also parses `--inject` and applies faults.

Faults are injected on purpose and only at the service named: they do not propagate to callers, so
the ground truth names exactly one service. Volume faults (drop, spike) change how much traffic
arrives, not the service's capacity, so they do not move latency either.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from anomalydesk import config
from anomalydesk.events import EventError, normalize_endpoint, validate_service
from anomalydesk.ingest.demo_services import (
    KPI_ENDPOINT,
    KPI_SERVICES,
    build_services,
    load_factor,
    raw_paths,
)

FAULT_KINDS: tuple[str, ...] = ("latency", "errors", "drop", "spike", "new-dependency", "business", "shift")
PERMANENT_KINDS = ("shift",)  # without +LEN these last for good: a deploy that moved the service's level
LATENCY_LOAD_SLOPE = 0.3  # median latency ×(1 + 0.3·(load − 1))
SERVER_ERROR_CODES = np.array([500, 502, 503, 504])
SERVER_ERROR_WEIGHTS = np.array([0.55, 0.2, 0.15, 0.1])
_SERVER_ERROR_CUM = np.cumsum(SERVER_ERROR_WEIGHTS)[:-1]

ORDERS_KPI = "orders_per_window"
PAYMENT_KPI = "payment_amount"
PAYMENT_MEDIAN = 48.0  # currency units; log-normal amounts
PAYMENT_SIGMA = 0.25
PAYMENT_RANGE = (15.0, 160.0)  # about ±4.6 sigma: a normal window has no amount outside it …
PAYMENT_MAX_SIGMAS = 4.5  # … nor a normal day (the log-normal is cut here, inside the range)
ORDERS_RANGE_SIGMAS = (5.5, 5.0)  # orders range: the expected count − 5.5 / + 5 sigmas on the square-root
# scale (`orders_range`): a normal day leaves it about once in 65 days (the old ±3.5 σ + 10 %: twice a day)

_NEW_DEPENDENCY_PATHS = (
    "GET:/ext/{tag}/accounts/{id}", "POST:/ext/{tag}/score", "GET:/ext/{tag}/limits",
    "PUT:/ext/{tag}/sessions/{uuid}", "POST:/ext/{tag}/audit",
)  # fmt: skip


# --- faults -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class InjectSpec:
    """A parsed `--inject KIND@START[+LEN][:SERVICE]`: offsets in seconds from the demo's start."""

    kind: str
    offset: float
    length: float
    service: str


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smh]?)\Z")
_UNIT = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_seconds(text: str, what: str) -> float:
    """`90`, `90s`, `1.5m`, `2h` → seconds; ValueError naming `what` otherwise."""
    match = _DURATION_RE.match(text.strip())
    if match is None:
        raise ValueError(f"{what} must be a number of seconds (optionally with s, m or h), got {text!r}")
    return float(match.group(1)) * _UNIT[match.group(2)]


def parse_inject(spec: str) -> InjectSpec:
    """Parse KIND@START[+LEN][:SERVICE] (LEN defaults to 60 s — a `shift` to for ever —, SERVICE to payments)."""
    example = "expected KIND@START[+LEN][:SERVICE], e.g. errors@30+20:payments"
    head, sep, service = spec.partition(":")
    if sep:
        try:
            validate_service(service)
        except EventError as err:
            raise ValueError(f"--inject {spec!r}: service {err.reason}") from None
    else:
        service = config.DEMO_INJECT_DEFAULT_SERVICE
    kind, at, when = head.partition("@")
    if not at or not kind or not when:
        raise ValueError(f"--inject {spec!r}: {example}")
    if kind not in FAULT_KINDS:
        raise ValueError(f"--inject {spec!r}: unknown fault kind {kind!r} (kinds: {', '.join(FAULT_KINDS)})")
    start_text, plus, length_text = when.partition("+")
    try:
        offset = parse_seconds(start_text, "START")
        length = (parse_seconds(length_text, "LEN") if plus else
                  math.inf if kind in PERMANENT_KINDS else float(config.DEMO_INJECT_DEFAULT_SECONDS))
    except ValueError as err:
        raise ValueError(f"--inject {spec!r}: {err} ({example})") from None
    if length <= 0:
        raise ValueError(f"--inject {spec!r}: LEN must be more than 0 seconds")
    return InjectSpec(kind, offset, length, service)


@dataclass(frozen=True)
class Fault:
    """One injected fault: what, where, and when (epoch seconds, end exclusive)."""

    kind: str
    service: str
    start: float
    end: float

    def overlaps(self, t0: float, t1: float) -> bool:
        """True if the fault is active at some time in [t0, t1)."""
        return self.start < t1 and t0 < self.end

    def mask(self, timestamps: np.ndarray) -> np.ndarray:
        """Which of `timestamps` fall inside the fault."""
        return (timestamps >= self.start) & (timestamps < self.end)

    def truth(self) -> dict[str, object]:
        """The ground-truth record: kind, service, start, end (epoch seconds; None: it never ends)."""
        return {"kind": self.kind, "service": self.service, "start": round(self.start, 3),
                "end": round(self.end, 3) if math.isfinite(self.end) else None}  # fmt: skip

    def __str__(self) -> str:
        if not math.isfinite(self.end):
            return f"{self.kind} on {self.service} from {time.strftime('%H:%M:%S', time.localtime(self.start))} on"
        return f"{self.kind} on {self.service} until {time.strftime('%H:%M:%S', time.localtime(self.end))}"

    def new_endpoints(self) -> list[str]:
        """Raw templates of the endpoints a new-dependency fault calls (unique to this fault)."""
        tag = f"dep-{int(self.start) % 1_000_000:06d}"  # letters + digits: never an {id} segment
        return [path.replace("{tag}", tag) for path in _NEW_DEPENDENCY_PATHS]


def check_fault(kind: str, service: str, services: Sequence[str]) -> None:
    """Raise ValueError if `kind` cannot be injected into `service` in a demo of `services`."""
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r} (kinds: {', '.join(FAULT_KINDS)})")
    if service not in services:
        raise ValueError(f"service {service!r} is not part of this demo (services: {', '.join(services)})")
    if kind == "business" and service not in KPI_SERVICES:
        raise ValueError(f"a business fault needs a service with business KPIs ({', '.join(KPI_SERVICES)}), "
                         f"not {service!r}")


def orders_range(expected: float, sigmas: tuple[float, float] = ORDERS_RANGE_SIGMAS) -> tuple[float, float]:
    """Expected range of a Poisson count with mean `expected`: (below, above) sigmas on the square-root scale.

    The square root of a Poisson count has a standard deviation of about 1/2 whatever its mean, so
    (√μ ∓ sigmas/2)² bounds it with the Poisson's own skew: wider above than below, which a
    symmetric μ ± k·√μ is not (its lower tail is still a little heavier than the normal's, hence
    more sigmas below). At 5-second windows a normal day has 17,280 chances to leave the range: the
    symmetric ±3.5 σ (+10 %) range was left about twice a day (exact Poisson tails over the demo's
    daily load), this one about once in 65 days; a business fault of ×0.3 at daytime load still
    leaves it in most windows.
    """
    root = math.sqrt(max(expected, 0.0))
    below, above = sigmas
    return max(0.0, root - below / 2) ** 2, (root + above / 2) ** 2


# --- generated traffic ------------------------------------------------------------------------
@dataclass
class KpiValues:
    """Business metric values of one KPI: one value per timestamp, each with its expected range."""

    name: str
    values: np.ndarray
    timestamps: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclass
class Traffic:
    """One service's generated requests for an interval, ready for `IngestSink.add_arrays`."""

    service: str
    endpoints: list[str]  # normalised names; endpoint_idx indexes this list
    endpoint_idx: np.ndarray
    status: np.ndarray
    latency_ms: np.ndarray
    timestamps: np.ndarray  # epoch seconds, sorted
    kpis: list[KpiValues] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.endpoint_idx.size)


class Simulation:
    """The simulated system: generates each service's traffic for an interval, faults applied.

    Stateful only for the orders KPI (orders per window is counted over the trailing window), so
    intervals of one service must be generated in time order. Not thread-safe: one owner.
    """

    def __init__(self, n_services: int, window_s: int):
        if window_s < 1:
            raise ValueError(f"window must be at least 1 second, got {window_s}")
        self.services = build_services(n_services)
        self.names = [s.name for s in self.services]
        self.window_s = window_s
        total = sum(s.weight for s in self.services)
        self.shares = [s.weight / total for s in self.services]
        self._orders: dict[int, deque[np.ndarray]] = {}  # per service: recent order timestamps
        self._started: dict[int, float] = {}
        self._orders_ep = KPI_ENDPOINT["orders"]
        self._payments_ep = KPI_ENDPOINT["payments"]

    def set_window(self, window_s: int, at: float) -> None:
        """Generate windows of `window_s` seconds from `at` on (the live demo follows `setup --window
        … --force`); `at` is where the last interval generated ended.

        Orders are kept for two windows of the old length before `at`: a report whose trailing new
        window reaches further back would undercount, so none is made (as in a demo's first window)."""
        if window_s < 1:
            raise ValueError(f"window must be at least 1 second, got {window_s}")
        kept_from = at - 2 * self.window_s
        for svc, started in self._started.items():
            self._started[svc] = max(started, kept_from)
        self.window_s = window_s

    def expected_rate(self, svc: int, rate: float, t: float) -> float:
        """Requests per second service `svc` receives at time `t` when the demo's mean rate is `rate`."""
        return rate * self.shares[svc] * float(load_factor(t))

    def generate(self, svc: int, t0: float, t1: float, rate: float, rng: np.random.Generator,
                 faults: Sequence[Fault] = ()) -> Traffic:
        """Requests of service `svc` in [t0, t1) at mean total rate `rate`, with `faults` applied."""
        model = self.services[svc]
        mine = [f for f in faults if f.service == model.name and f.overlaps(t0, t1)]
        self._started.setdefault(svc, t0)
        ts = self._arrivals(svc, t0, t1, rate, rng, mine)
        n = ts.size
        # the endpoint each request calls; its status and latency follow that endpoint's model
        base = np.minimum(np.searchsorted(model.cumulative_share, rng.random(n), side="right"),
                          len(model.endpoints) - 1)  # fmt: skip
        idx = base
        endpoints = [normalize_endpoint(p) for p in raw_paths(model.templates, rng)]
        for fault in (f for f in mine if f.kind == "new-dependency"):
            # a share of the calls goes to endpoints this service never used; only the label changes
            extra = fault.new_endpoints()
            moved = fault.mask(ts) & (rng.random(n) < config.DEMO_FAULT_NEW_DEPENDENCY_SHARE)
            idx = np.where(moved, len(endpoints) + rng.integers(0, len(extra), n), idx)
            endpoints += [normalize_endpoint(p) for p in raw_paths(extra, rng)]

        u = rng.random(n)
        server_errors = SERVER_ERROR_CODES[np.searchsorted(_SERVER_ERROR_CUM, rng.random(n), side="right")]
        p5, p4 = model.p5xx[base], model.p4xx[base]
        status = np.where(u < p5, server_errors,
                          np.where(u < p5 + p4, model.client_error[base], model.ok_status[base]))  # fmt: skip
        for fault in (f for f in mine if f.kind == "errors"):
            hit = fault.mask(ts) & (status < 400) & (rng.random(n) < config.DEMO_FAULT_ERROR_RATE)
            status = np.where(hit, server_errors, status)

        scale = 1.0 + LATENCY_LOAD_SLOPE * (np.asarray(load_factor(ts)) - 1.0)
        latency = model.median_ms[base] * scale * np.exp(model.sigma[base] * rng.standard_normal(n))
        for fault in (f for f in mine if f.kind == "latency"):
            latency = np.where(fault.mask(ts), latency * config.DEMO_FAULT_LATENCY_FACTOR, latency)
        for fault in (f for f in mine if f.kind == "shift"):  # a deploy: every response a bit slower, for good
            latency = np.where(fault.mask(ts), latency * config.DEMO_SHIFT_LATENCY_FACTOR, latency)

        traffic = Traffic(model.name, endpoints, idx.astype(np.int64), status.astype(np.int64), latency, ts)
        business = [f for f in mine if f.kind == "business"]
        if model.name == "payments":
            traffic.kpis.append(self._payments(traffic, business, rng))
        elif model.name == "orders":
            traffic.kpis.append(self._orders_kpi(svc, traffic, t0, t1, rate, business))
        return traffic

    def _arrivals(self, svc: int, t0: float, t1: float, rate: float, rng: np.random.Generator,
                  faults: Sequence[Fault]) -> np.ndarray:
        """Sorted request timestamps in [t0, t1): Poisson arrivals at the daily load, spikes and drops."""
        W = self.window_s
        first_cut = math.floor(t0 / W) * W + W
        if first_cut >= t1:  # inside one window (live ticks, mostly)
            count = rng.poisson(rate * self.shares[svc] * float(load_factor((t0 + t1) / 2)) * (t1 - t0))
            ts = t0 + rng.random(int(count)) * (t1 - t0)
        else:
            # piecewise-constant load, cut at window boundaries so every window has its own level
            edges = np.concatenate(([t0], np.arange(first_cut, t1, W, dtype=np.float64), [t1]))
            lengths = np.diff(edges)
            means = rate * self.shares[svc] * np.asarray(load_factor(edges[:-1] + lengths / 2)) * lengths
            counts = rng.poisson(means)
            ts = np.repeat(edges[:-1], counts) + rng.random(int(counts.sum())) * np.repeat(lengths, counts)
        for fault in (f for f in faults if f.kind == "spike"):
            ts = np.concatenate((ts, self._extra(fault, t0, t1, rate * self.shares[svc], rng)))
        ts.sort()
        for fault in (f for f in faults if f.kind == "drop"):
            ts = ts[~(fault.mask(ts) & (rng.random(ts.size) < config.DEMO_FAULT_DROP_FRACTION))]
        return ts

    def _extra(self, fault: Fault, t0: float, t1: float, rate: float, rng: np.random.Generator) -> np.ndarray:
        """The additional requests of a spike: (factor − 1)× the normal rate while it lasts."""
        a, b = max(t0, fault.start), min(t1, fault.end)
        mean = (config.DEMO_FAULT_SPIKE_FACTOR - 1) * rate * float(load_factor((a + b) / 2)) * (b - a)
        return a + rng.random(int(rng.poisson(mean))) * (b - a)

    def _payments(self, traffic: Traffic, business: Sequence[Fault], rng: np.random.Generator) -> KpiValues:
        paid = (traffic.endpoint_idx == self._payments_ep) & (traffic.status < 400)
        ts = traffic.timestamps[paid]
        z = np.clip(rng.standard_normal(ts.size), -PAYMENT_MAX_SIGMAS, PAYMENT_MAX_SIGMAS)
        amounts = PAYMENT_MEDIAN * np.exp(PAYMENT_SIGMA * z)
        for fault in business:
            amounts = np.where(fault.mask(ts), amounts * config.DEMO_FAULT_BUSINESS_FACTOR, amounts)
        low, high = PAYMENT_RANGE
        return KpiValues(PAYMENT_KPI, np.round(amounts, 2), ts, np.full(ts.size, low), np.full(ts.size, high))

    def _orders_kpi(self, svc: int, traffic: Traffic, t0: float, t1: float, rate: float,
                    business: Sequence[Fault]) -> KpiValues:
        """Orders per window, reported at each window's middle over the trailing window length."""
        W = self.window_s
        # an interval generated again (run_fast's catch-up regenerates the chunk the history ended in;
        # the same seed gives the same orders) replaces what it covers instead of counting it twice
        recent = self._orders[svc] = deque(seen[seen < t0] for seen in self._orders.get(svc, ()))
        ordered = (traffic.endpoint_idx == self._orders_ep) & (traffic.status < 400)
        recent.append(traffic.timestamps[ordered])
        first = math.ceil((t0 - W / 2) / W)
        report_at = (np.arange(first, math.ceil((t1 - W / 2) / W)) + 0.5) * W
        report_at = report_at[report_at >= t0]
        seen = np.concatenate(list(recent)) if recent else np.empty(0)
        values, lows, highs, reported = [], [], [], []
        model = self.services[svc]
        p_ok = 1.0 - model.p4xx[self._orders_ep] - model.p5xx[self._orders_ep]
        order_share = model.share_of(self._orders_ep)
        for t in report_at:
            if t - self._started[svc] < W:
                continue  # a partly covered window would extrapolate a few seconds' noise: report none
            value = float(np.count_nonzero((seen >= t - W) & (seen < t)))
            if any(f.start <= t < f.end for f in business):
                value *= config.DEMO_FAULT_BUSINESS_FACTOR
            low, high = orders_range(self.expected_rate(svc, rate, t) * order_share * p_ok * W)
            reported.append(t)
            values.append(value)
            lows.append(low)
            highs.append(high)
        while recent and (recent[0].size == 0 or recent[0][-1] < t1 - 2 * W):
            recent.popleft()
        return KpiValues(ORDERS_KPI, np.array(values), np.array(reported), np.array(lows), np.array(highs))
