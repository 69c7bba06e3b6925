"""The fingerprint: a fixed-length, versioned vector per service and window.

The gears library (`gears/anomalydesk.lua`, function `seal`) computes it server-side from the window
aggregates and appends it to the service's fingerprint stream, one field per feature below plus
`window`, `start`, `schema`, `no_data` and `kpis` (JSON: per-KPI mean of the window). Its length does
not depend on how many endpoints or KPIs a service has. docs/fingerprint.md documents each feature.

The latency histogram uses log buckets shared by every producer (client pre-aggregation, OTLP
histograms, the Lua quantile code): bucket 0 holds [0, LAT_MIN_MS); bucket b >= 1 holds
[LAT_MIN_MS * 2**((b-1)/LAT_BUCKETS_PER_OCTAVE), LAT_MIN_MS * 2**(b/LAT_BUCKETS_PER_OCTAVE)); the last
bucket also holds everything above. A quantile is reported as its bucket's geometric midpoint, so
its relative error is at most 2**(1/(2*LAT_BUCKETS_PER_OCTAVE)) - 1 (about 4.4 %).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from anomalydesk import contract

SCHEMA_VERSION = contract.FINGERPRINT_SCHEMA

LAT_MIN_MS = contract.LAT_MIN_MS
LAT_BUCKETS_PER_OCTAVE = contract.LAT_BUCKETS_PER_OCTAVE
LAT_MAX_BUCKET = contract.LAT_MAX_BUCKET  # 0.1 ms * 2**(200/8) ≈ 56 minutes; anything slower lands here
LAT_QUANTILE_REL_ERROR = 2 ** (1 / (2 * LAT_BUCKETS_PER_OCTAVE)) - 1

_LOG2_MIN = math.log2(LAT_MIN_MS)


@dataclass(frozen=True)
class Feature:
    name: str
    label: str  # the operator's words
    unit: str  # "", "%", "ms", "/window"
    description: str


FEATURES: tuple[Feature, ...] = (
    Feature("requests", "requests", "/window", "Requests in the window"),
    Feature("rate_4xx", "4xx ratio", "%", "Share of requests answered 4xx"),
    Feature("rate_5xx", "5xx ratio", "%", "Share of requests answered 5xx"),
    Feature("latency_p50_ms", "p50 latency", "ms", "Median response time"),
    Feature("latency_p95_ms", "p95 latency", "ms", "95th percentile response time"),
    Feature("latency_p99_ms", "p99 latency", "ms", "99th percentile response time"),
    Feature("latency_mean_ms", "mean latency", "ms", "Mean response time"),
    Feature("endpoints_distinct", "distinct endpoints", "", "Distinct endpoints called (HyperLogLog)"),
    Feature("new_interactions", "new endpoints", "", "Endpoints never seen before (filter misses)"),
    Feature("top_endpoint_share", "top endpoint share", "%", "Share of requests to the busiest endpoint"),
    Feature("endpoint_entropy", "endpoint mix entropy", "bits", "Shannon entropy of the endpoint mix"),
    Feature("kpi_level", "business KPI level", "x", "Mean KPI value relative to its expected range midpoint"),
    Feature("kpi_out_of_range", "KPIs out of range", "", "Business values outside their expected range"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
FEATURE_INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}
N_FEATURES = len(FEATURES)
# statistics of a window's requests: without a request they have no value (sealing writes 0)
PER_REQUEST: tuple[str, ...] = ("rate_4xx", "rate_5xx", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
                                "latency_mean_ms", "top_endpoint_share", "endpoint_entropy")  # fmt: skip
_PER_REQUEST_COLUMNS = [FEATURE_INDEX[name] for name in PER_REQUEST]


def shown_values(vectors: np.ndarray) -> np.ndarray:
    """(n, N_FEATURES) feature vectors as a plot or an export shows them: the per-request statistics of a
    window without requests (a gap, a stop, a quiet night) are NaN, not the 0 sealing writes — a p95
    latency of 0 ms or a 5xx ratio of 0 % drawn through a stopped minute is no measurement."""
    shown = np.array(vectors, dtype=np.float64, copy=True)
    if shown.size:
        idle = shown[:, FEATURE_INDEX["requests"]] == 0
        shown[np.ix_(idle, _PER_REQUEST_COLUMNS)] = np.nan
    return shown
_BY_NAME = dict(zip(FEATURE_NAMES, FEATURES, strict=True))
_FIXED_BELOW = 1e-6  # smaller magnitudes read in scientific notation ("4.2e-07"), never as a run of zeros


def format_number(value: float) -> str:
    """A number as an operator reads it: 1,240 · 24.6 · 3.2 · 0.31 · 0.0042. Below 10 with two significant
    digits (not rounded to a fixed number of decimals), so a small value that is not 0 never reads as 0;
    only 0 itself reads "0"."""
    value = float(value)
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)  # "nan", "inf": said, not a crash in the view that shows it
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.0f}" if value.is_integer() else f"{value:.1f}"
    if magnitude < _FIXED_BELOW:
        return f"{value:.2g}"
    decimals = 1 - math.floor(math.log10(magnitude))  # two significant digits
    return f"{value:.{decimals}f}".rstrip("0").rstrip(".")


def format_ratio(value: float) -> str:
    """A share (0–1) as a percentage: 0.18 → "18%", 0.0031 → "0.31%", 0.00004 → "0.004%", 0 → "0%"."""
    return f"{format_number(float(value) * 100)}%"


def format_value(name: str, value: float) -> str:
    """A feature's value in its unit (`FEATURES`), as reasons, notifications and the app show it: 18%,
    1,240 ms, 3.2/window, 0.8×, 2.5 bits. The one formatter of feature values."""
    feature = _BY_NAME.get(name)
    unit = feature.unit if feature else ""
    if unit == "%":
        return format_ratio(value)
    if unit == "/window":
        return f"{format_number(value)}/window"
    if unit == "x":
        return f"{format_number(value)}×"
    return f"{format_number(value)} {unit}" if unit else format_number(value)


def latency_bucket(ms: float) -> int:
    """The histogram bucket of a response time in milliseconds (ms >= 0)."""
    if ms < LAT_MIN_MS:
        return 0
    b = int((math.log2(ms) - _LOG2_MIN) * LAT_BUCKETS_PER_OCTAVE) + 1
    return b if b < LAT_MAX_BUCKET else LAT_MAX_BUCKET


def latency_buckets(ms: np.ndarray) -> np.ndarray:
    """Vectorised `latency_bucket` for an array of response times."""
    ms = np.asarray(ms, dtype=np.float64)
    with np.errstate(divide="ignore"):
        b = np.floor((np.log2(np.maximum(ms, LAT_MIN_MS)) - _LOG2_MIN) * LAT_BUCKETS_PER_OCTAVE) + 1
    b = np.where(ms < LAT_MIN_MS, 0, b)
    return np.minimum(b, LAT_MAX_BUCKET).astype(np.int64)


def bucket_bounds(b: int) -> tuple[float, float]:
    """[low, high) milliseconds of bucket b (the last bucket's high is its nominal bound)."""
    if b <= 0:
        return 0.0, LAT_MIN_MS
    return (
        LAT_MIN_MS * 2 ** ((b - 1) / LAT_BUCKETS_PER_OCTAVE),
        LAT_MIN_MS * 2 ** (b / LAT_BUCKETS_PER_OCTAVE),
    )


def bucket_value(b: int) -> float:
    """The value a quantile falling in bucket b is reported as (geometric midpoint; bucket 0 → half)."""
    low, high = bucket_bounds(b)
    return high / 2 if b <= 0 else math.sqrt(low * high)


@dataclass(frozen=True)
class Fingerprint:
    service: str
    window: int  # window index: floor(epoch seconds / window_seconds)
    start: float  # epoch seconds of the window's start
    vector: np.ndarray  # float64, N_FEATURES, in FEATURE_NAMES order
    schema: int = SCHEMA_VERSION
    no_data: bool = False
    kpis: Mapping[str, float] | None = None
    window_seconds: int | None = None  # `ws`: the window length it was sealed at (None: before it was recorded)
    silent: bool = False  # no event at all: a window sealing made up for zero traffic
    stretched: bool = False  # holds events from outside its own span (after a window-length change)

    def get(self, name: str) -> float:
        return float(self.vector[FEATURE_INDEX[name]])

    def as_dict(self) -> dict[str, float]:
        return dict(zip(FEATURE_NAMES, (float(v) for v in self.vector), strict=True))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def from_stream_entry(service: str, fields: Mapping[bytes | str, bytes | str]) -> Fingerprint:
    """Parse one fingerprint stream entry (as redis-py returns it) into a Fingerprint."""
    import json

    f = {_text(k): _text(v) for k, v in fields.items()}
    vector = np.array([float(f.get(name, "0")) for name in FEATURE_NAMES], dtype=np.float64)
    kpis = json.loads(f["kpis"]) if f.get("kpis") else None
    return Fingerprint(
        service=service,
        window=int(f["window"]),
        start=float(f["start"]),
        vector=vector,
        schema=int(f.get("schema", SCHEMA_VERSION)),
        no_data=f.get("no_data", "0") == "1",
        kpis=kpis or None,
        window_seconds=int(f["ws"]) if f.get("ws") else None,
        silent=f.get("silent", "0") == "1",
        stretched=f.get("stretched", "0") == "1",
    )


def matrix(fingerprints: list[Fingerprint]) -> np.ndarray:
    """Stack fingerprints' vectors into an (n, N_FEATURES) array."""
    if not fingerprints:
        return np.empty((0, N_FEATURES), dtype=np.float64)
    return np.vstack([fp.vector for fp in fingerprints])
