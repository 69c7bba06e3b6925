"""The simulated shop's services: endpoint mixes, raw paths, rate shares and the daily load cycle.

A gateway in front of users / orders / payments / inventory (then `svc-6`, `svc-7`, … with
`--services N`). Each service has an endpoint mix with parameterised paths (sent raw, e.g.
`GET:/users/4711`, and normalised to `GET:/users/{id}` on the way out), per-endpoint status and
log-normal latency models, and a share of the demo's total rate. Load follows a 24 h cycle whose mean
over the day is 1, so `--rate` is the mean rate over a day. Pure: numpy, no Redis.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from anomalydesk import config

BASE_SERVICES: tuple[str, ...] = ("gateway", "users", "orders", "payments", "inventory")
KPI_SERVICES: tuple[str, ...] = ("orders", "payments")

DAY_SECONDS = 86_400.0
PEAK_HOUR_UTC = 15.0  # the daily cycle peaks mid-afternoon and bottoms out in the small hours
DAILY_AMPLITUDE = 0.45
EVENING_AMPLITUDE = 0.10  # a second, 12 h harmonic: the evening shoulder
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
KPI_ENDPOINT = {  # the endpoint whose successful calls carry the service's KPI
    "orders": [e.name for e in _MIXES["orders"]].index("POST:/orders"),
    "payments": [e.name for e in _MIXES["payments"]].index("POST:/payments"),
}
_WEIGHTS = {"gateway": 30.0, "users": 20.0, "orders": 17.0, "payments": 13.0, "inventory": 20.0}
_GENERIC_WEIGHT = 10.0
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
