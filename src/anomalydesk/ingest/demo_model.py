"""The simulated microservice system behind `anomalydesk demo` (pure: numpy, no Redis).

A gateway in front of users / orders / payments / inventory (then `svc-6`, `svc-7`, … with
`--services N`). Each service has an endpoint mix with parameterised paths (sent raw, e.g.
`GET:/users/4711`, and normalised to `GET:/users/{id}` on the way out), per-endpoint status and
log-normal latency models, and a share of the demo's total rate. Load follows a 24 h cycle whose mean
over the day is 1, so `--rate` is the mean rate over a day; latency rises gently with that load.
`orders` reports orders per window and `payments` each payment's amount as business metrics.

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
from functools import lru_cache

import numpy as np

from anomalydesk import config
from anomalydesk.events import EventError, normalize_endpoint, validate_service

FAULT_KINDS: tuple[str, ...] = ("latency", "errors", "drop", "spike", "new-dependency", "business")
BASE_SERVICES: tuple[str, ...] = ("gateway", "users", "orders", "payments", "inventory")
KPI_SERVICES: tuple[str, ...] = ("orders", "payments")

DAY_SECONDS = 86_400.0
PEAK_HOUR_UTC = 15.0  # the daily cycle peaks mid-afternoon and bottoms out in the small hours
DAILY_AMPLITUDE = 0.45
EVENING_AMPLITUDE = 0.10  # a second, 12 h harmonic: the evening shoulder
LATENCY_LOAD_SLOPE = 0.3  # median latency ×(1 + 0.3·(load − 1))
SERVER_ERROR_CODES = np.array([500, 502, 503, 504])
SERVER_ERROR_WEIGHTS = np.array([0.55, 0.2, 0.15, 0.1])
_SERVER_ERROR_CUM = np.cumsum(SERVER_ERROR_WEIGHTS)[:-1]

ORDERS_KPI = "orders_per_window"
PAYMENT_KPI = "payment_amount"
PAYMENT_MEDIAN = 48.0  # currency units; log-normal amounts
PAYMENT_SIGMA = 0.25
PAYMENT_RANGE = (15.0, 160.0)  # about ±4.6 sigma: a normal window has no amount outside it
ORDERS_RANGE_SIGMAS = 3.5  # the orders range is the expected count ± 3.5 Poisson sigmas (and ±10 %)

_PLACEHOLDER_RE = re.compile(r"\{(id|uuid|hex)\}")


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of a service: raw path template, traffic share and its status/latency model."""

    template: str  # METHOD:/path with {id}, {uuid} or {hex} placeholders
    share: float
    median_ms: float
    sigma: float  # log-normal shape of the latency
    ok_status: int
    p4xx: float
    client_error: int
    p5xx: float = 0.002

    @property
    def name(self) -> str:
        """The normalised endpoint name the sink receives."""
        return _PLACEHOLDER_RE.sub("{id}", self.template)


def _ep(template: str, share: float, median: float, sigma: float = 0.5, p4xx: float = 0.01) -> Endpoint:
    method = template.split(":", 1)[0]
    ok = {"POST": 201, "DELETE": 204}.get(method, 200)
    client_error = 404 if method in ("GET", "DELETE") and "{" in template else (422 if method != "GET" else 400)
    return Endpoint(template, share, median, sigma, ok, p4xx, client_error)


_MIXES: dict[str, tuple[Endpoint, ...]] = {
    "gateway": (
        _ep("GET:/api/products", 0.16, 35, 0.45),
        _ep("GET:/api/products/{id}", 0.20, 22, 0.4, 0.02),
        _ep("GET:/api/cart/{uuid}", 0.10, 18, 0.4, 0.01),
        _ep("POST:/api/cart/{uuid}/items", 0.08, 40, 0.5, 0.02),
        _ep("GET:/api/search", 0.09, 90, 0.6, 0.01),
        _ep("POST:/api/auth/login", 0.06, 120, 0.35, 0.08),
        _ep("POST:/api/auth/refresh", 0.05, 15, 0.3, 0.03),
        _ep("POST:/api/orders", 0.06, 180, 0.5, 0.02),
        _ep("GET:/api/orders/{id}", 0.07, 45, 0.45, 0.02),
        _ep("POST:/api/payments", 0.05, 260, 0.5, 0.03),
        _ep("GET:/api/users/{id}", 0.05, 30, 0.4, 0.01),
        _ep("GET:/health", 0.03, 1.5, 0.3, 0.0),
    ),
    "users": (
        _ep("GET:/users/{id}", 0.36, 8, 0.45, 0.02),
        _ep("GET:/users/{id}/preferences", 0.12, 6, 0.4, 0.01),
        _ep("GET:/users/{id}/addresses", 0.12, 9, 0.4, 0.01),
        _ep("PATCH:/users/{id}", 0.06, 25, 0.5, 0.04),
        _ep("POST:/users", 0.04, 60, 0.5, 0.06),
        _ep("POST:/sessions", 0.14, 45, 0.35, 0.07),
        _ep("DELETE:/sessions/{hex}", 0.06, 5, 0.4, 0.01),
        _ep("POST:/users/{id}/addresses", 0.05, 30, 0.5, 0.05),
        _ep("GET:/health", 0.05, 1.0, 0.3, 0.0),
    ),
    "orders": (
        _ep("POST:/orders", 0.20, 95, 0.5, 0.03),
        _ep("GET:/orders/{uuid}", 0.28, 14, 0.45, 0.02),
        _ep("GET:/users/{id}/orders", 0.18, 30, 0.55, 0.01),
        _ep("GET:/orders/{uuid}/items", 0.14, 20, 0.45, 0.01),
        _ep("PATCH:/orders/{uuid}/status", 0.10, 35, 0.5, 0.03),
        _ep("DELETE:/orders/{uuid}", 0.05, 28, 0.5, 0.05),
        _ep("GET:/health", 0.05, 1.0, 0.3, 0.0),
    ),
    "payments": (
        _ep("POST:/payments", 0.34, 180, 0.45, 0.04),
        _ep("GET:/payments/{hex}", 0.24, 12, 0.4, 0.01),
        _ep("POST:/payments/{hex}/capture", 0.18, 140, 0.45, 0.02),
        _ep("POST:/payments/{hex}/refund", 0.05, 160, 0.5, 0.05),
        _ep("GET:/payment-methods/{id}", 0.14, 10, 0.4, 0.01),
        _ep("GET:/health", 0.05, 1.0, 0.3, 0.0),
    ),
    "inventory": (
        _ep("GET:/items/{id}/stock", 0.38, 6, 0.4, 0.01),
        _ep("GET:/items/{id}", 0.16, 9, 0.4, 0.02),
        _ep("POST:/reservations", 0.15, 28, 0.5, 0.04),
        _ep("DELETE:/reservations/{uuid}", 0.08, 12, 0.45, 0.03),
        _ep("PUT:/items/{id}/stock", 0.07, 22, 0.5, 0.02),
        _ep("GET:/warehouses/{id}/items", 0.11, 55, 0.6, 0.01),
        _ep("GET:/health", 0.05, 1.0, 0.3, 0.0),
    ),
}
_GENERIC_MIX: tuple[Endpoint, ...] = (
    _ep("GET:/v1/resources", 0.28, 30, 0.5, 0.01),
    _ep("GET:/v1/resources/{id}", 0.38, 12, 0.45, 0.03),
    _ep("POST:/v1/resources", 0.15, 45, 0.5, 0.04),
    _ep("PUT:/v1/resources/{id}", 0.09, 40, 0.5, 0.03),
    _ep("DELETE:/v1/resources/{id}", 0.05, 25, 0.5, 0.04),
    _ep("GET:/health", 0.05, 1.0, 0.3, 0.0),
)
_MIXES_INDEX = {  # the endpoint whose successful calls carry the service's KPI
    "orders": [e.name for e in _MIXES["orders"]].index("POST:/orders"),
    "payments": [e.name for e in _MIXES["payments"]].index("POST:/payments"),
}
_WEIGHTS = {"gateway": 30.0, "users": 20.0, "orders": 17.0, "payments": 13.0, "inventory": 20.0}
_GENERIC_WEIGHT = 10.0
_NEW_DEPENDENCY_PATHS = (
    "GET:/ext/{tag}/accounts/{id}", "POST:/ext/{tag}/score", "GET:/ext/{tag}/limits",
    "PUT:/ext/{tag}/sessions/{uuid}", "POST:/ext/{tag}/audit",
)  # fmt: skip


class ServiceModel:
    """A simulated service: name, weight in the total rate, endpoint mix (also as numpy columns)."""

    def __init__(self, name: str, weight: float, endpoints: tuple[Endpoint, ...]):
        self.name = name
        self.weight = weight
        self.endpoints = endpoints
        self.templates = [e.template for e in endpoints]
        shares = np.array([e.share for e in endpoints])
        self.cumulative_share = np.cumsum(shares / shares.sum())
        self.median_ms = np.array([e.median_ms for e in endpoints])
        self.sigma = np.array([e.sigma for e in endpoints])
        self.ok_status = np.array([e.ok_status for e in endpoints])
        self.client_error = np.array([e.client_error for e in endpoints])
        self.p4xx = np.array([e.p4xx for e in endpoints])
        self.p5xx = np.array([e.p5xx for e in endpoints])

    def index_of(self, name: str) -> int:
        """Position of the endpoint with normalised `name` (ValueError if the service has none)."""
        for i, endpoint in enumerate(self.endpoints):
            if endpoint.name == name:
                return i
        raise ValueError(f"{self.name} has no endpoint {name}")

    def share_of(self, i: int) -> float:
        """Fraction of the service's requests that go to endpoint i."""
        return self.endpoints[i].share / sum(e.share for e in self.endpoints)


def service_names(n: int) -> list[str]:
    """The demo's service names for `--services N`: the five base services, then svc-6, svc-7, …."""
    if not 1 <= n <= config.DEMO_MAX_SERVICES:
        raise ValueError(f"--services must be between 1 and {config.DEMO_MAX_SERVICES}, got {n}")
    return [*BASE_SERVICES[:n], *(f"svc-{i}" for i in range(len(BASE_SERVICES) + 1, n + 1))]


def build_services(n: int) -> list[ServiceModel]:
    """The N simulated services, in order."""
    models = []
    for name in service_names(n):
        mix = _MIXES.get(name, _GENERIC_MIX)
        models.append(ServiceModel(name, _WEIGHTS.get(name, _GENERIC_WEIGHT), mix))
    return models


def load_factor(t: np.ndarray | float) -> np.ndarray | float:
    """The daily load pattern at epoch seconds `t` (UTC): 24 h period, mean 1 over a day."""
    if isinstance(t, float | int):
        hours = (t % DAY_SECONDS) / 3600.0
        return (1.0 + DAILY_AMPLITUDE * math.cos(2 * math.pi * (hours - PEAK_HOUR_UTC) / 24.0)
                + EVENING_AMPLITUDE * math.cos(2 * math.pi * (hours - 20.0) / 12.0))  # fmt: skip
    hours = (np.asarray(t, dtype=np.float64) % DAY_SECONDS) / 3600.0
    return (
        1.0
        + DAILY_AMPLITUDE * np.cos(2 * np.pi * (hours - PEAK_HOUR_UTC) / 24.0)
        + EVENING_AMPLITUDE * np.cos(2 * np.pi * (hours - 20.0) / 12.0)
    )


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
    """Parse KIND@START[+LEN][:SERVICE] (LEN defaults to 60 s, SERVICE to payments)."""
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
        length = parse_seconds(length_text, "LEN") if plus else float(config.DEMO_INJECT_DEFAULT_SECONDS)
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
        """The ground-truth record: kind, service, start, end (epoch seconds)."""
        return {"kind": self.kind, "service": self.service,
                "start": round(self.start, 3), "end": round(self.end, 3)}  # fmt: skip

    def __str__(self) -> str:
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


@lru_cache(maxsize=1024)
def _split_template(template: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`GET:/a/{id}/b` → (("GET:/a/", "/b"), ("id",)): literal parts around the placeholders."""
    parts = _PLACEHOLDER_RE.split(template)
    return tuple(parts[0::2]), tuple(parts[1::2])


def raw_paths(templates: Sequence[str], rng: np.random.Generator) -> list[str]:
    """One concrete raw path per template: fresh numeric ids, 16-digit hex ids and UUIDs filled in."""
    split = [_split_template(t) for t in templates]
    draws = iter(rng.integers(0, 2**63, size=2 * sum(len(kinds) for _, kinds in split)).tolist())
    out = []
    for literals, kinds in split:
        text = literals[0]
        for kind, literal in zip(kinds, literals[1:], strict=True):
            a, b = next(draws), next(draws)
            if kind == "id":
                value = str(a % 9_999_999 + 1)
            elif kind == "hex":
                value = f"{a:016x}"
            else:
                digits = f"{a:016x}{b:016x}"
                value = f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
            text += value + literal
        out.append(text)
    return out


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
        self._orders_ep = _MIXES_INDEX["orders"]
        self._payments_ep = _MIXES_INDEX["payments"]

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
        amounts = PAYMENT_MEDIAN * np.exp(PAYMENT_SIGMA * rng.standard_normal(ts.size))
        for fault in business:
            amounts = np.where(fault.mask(ts), amounts * config.DEMO_FAULT_BUSINESS_FACTOR, amounts)
        low, high = PAYMENT_RANGE
        return KpiValues(PAYMENT_KPI, np.round(amounts, 2), ts, np.full(ts.size, low), np.full(ts.size, high))

    def _orders_kpi(self, svc: int, traffic: Traffic, t0: float, t1: float, rate: float,
                    business: Sequence[Fault]) -> KpiValues:
        """Orders per window, reported at each window's middle over the trailing window length."""
        W = self.window_s
        recent = self._orders.setdefault(svc, deque())
        ordered = (traffic.endpoint_idx == self._orders_ep) & (traffic.status < 400)
        recent.append(traffic.timestamps[ordered])
        first = math.ceil((t0 - W / 2) / W)
        report_at = (np.arange(first, math.ceil((t1 - W / 2) / W)) + 0.5) * W
        report_at = report_at[report_at >= t0]
        seen = np.concatenate(list(recent)) if recent else np.empty(0)
        values, lows, highs = [], [], []
        model = self.services[svc]
        p_ok = 1.0 - model.p4xx[self._orders_ep] - model.p5xx[self._orders_ep]
        order_share = model.share_of(self._orders_ep)
        for t in report_at:
            covered = min(W, t - self._started[svc])
            count = np.count_nonzero((seen >= t - W) & (seen < t))
            value = count * W / covered if covered > 0 else 0.0
            if any(f.start <= t < f.end for f in business):
                value *= config.DEMO_FAULT_BUSINESS_FACTOR
            expected = self.expected_rate(svc, rate, t) * order_share * p_ok * W
            slack = ORDERS_RANGE_SIGMAS * math.sqrt(expected) + 0.1 * expected
            values.append(value)
            lows.append(max(0.0, expected - slack))
            highs.append(expected + slack)
        while recent and (recent[0].size == 0 or recent[0][-1] < t1 - 2 * W):
            recent.popleft()
        return KpiValues(ORDERS_KPI, np.array(values), report_at, np.array(lows), np.array(highs))
