"""The metric mapping file: which of a user's metrics are HTTP traffic, which labels say what, and
which of their own metrics become business KPIs (docs/integrations.md has the format).

TOML (or JSON with the same structure; chosen by the file extension):

    [http]                                   # all optional; the defaults are shown in DEFAULTS
    otlp_histograms = ["http.server.request.duration", "http.server.duration"]
    prom_counters = ["http_requests_total"]
    prom_histograms = ["http_request_duration_seconds"]
    service_labels = ["service", "job"]      # Prometheus: the first present label names the service
    endpoint_labels = ["handler", "route", "path", "endpoint", "uri"]
    method_labels = ["method"]
    status_labels = ["code", "status", "status_code"]
    service = "shop"                         # Prometheus: service when no label gives one

    [[kpi]]
    metric = "orders_placed_total"           # OTLP metric name or Prometheus metric name
    name = "orders_placed"                   # the KPI's name in AnomalyDesk (default: metric)
    kind = "counter"                         # counter: increase per report; gauge: value as is
    service = "shop"                         # default: the service the metric came from
    expected_range = [5, 50]                 # optional
    combine = "sum"                          # across series (label sets): sum | mean
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomalydesk.events import EventError, validate_service

_KPI_NAME_RE = re.compile(r"[A-Za-z0-9._:/-]{1,128}\Z")
_HTTP_LIST_KEYS = ("otlp_histograms", "prom_counters", "prom_histograms", "service_labels", "endpoint_labels",
                   "method_labels", "status_labels")


class MapError(ValueError):
    """The mapping file is unusable; the message names the file and the key."""


@dataclass(frozen=True)
class KpiRule:
    """One user metric that becomes a business KPI."""

    metric: str
    name: str
    kind: str | None = None  # "counter" | "gauge" | None (from the metric's own type)
    service: str | None = None
    low: float | None = None
    high: float | None = None
    combine: str = "sum"


@dataclass(frozen=True)
class MetricMap:
    """What the OTLP receiver and the scraper take from a source (the defaults fit the common names)."""

    otlp_histograms: tuple[str, ...] = ("http.server.request.duration", "http.server.duration")
    prom_counters: tuple[str, ...] = ("http_requests_total",)
    prom_histograms: tuple[str, ...] = ("http_request_duration_seconds",)
    service_labels: tuple[str, ...] = ("service", "job")
    endpoint_labels: tuple[str, ...] = ("handler", "route", "path", "endpoint", "uri")
    method_labels: tuple[str, ...] = ("method",)
    status_labels: tuple[str, ...] = ("code", "status", "status_code")
    service: str | None = None
    kpis: tuple[KpiRule, ...] = field(default_factory=tuple)

    def kpi_for(self, metric: str) -> KpiRule | None:
        """The KPI rule for a metric name (Prometheus counters match with or without `_total`)."""
        for rule in self.kpis:
            if rule.metric == metric or rule.metric == f"{metric}_total" or f"{rule.metric}_total" == metric:
                return rule
        return None

    def summary(self) -> dict[str, Any]:
        """A JSON-able description (CLI output, the app)."""
        return {"http": {k: list(getattr(self, k)) for k in _HTTP_LIST_KEYS} | {"service": self.service},
                "kpis": [vars(k) for k in self.kpis]}


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
        raise MapError(f"{where} must be a list of non-empty strings")
    return tuple(value)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MapError(f"{where} must be a number")
    return float(value)


def _kpi(raw: Any, where: str) -> KpiRule:
    if not isinstance(raw, dict):
        raise MapError(f"{where} must be a table")
    unknown = set(raw) - {"metric", "name", "kind", "service", "expected_range", "combine"}
    if unknown:
        raise MapError(f"{where}: unknown key(s) {sorted(unknown)}")
    metric = raw.get("metric")
    if not isinstance(metric, str) or not metric:
        raise MapError(f"{where}.metric is required (the source's metric name)")
    name = raw.get("name", metric)
    if not isinstance(name, str) or _KPI_NAME_RE.match(name) is None:
        raise MapError(f"{where}.name must match [A-Za-z0-9._:/-]{{1,128}}, got {name!r}")
    kind = raw.get("kind")
    if kind not in (None, "counter", "gauge"):
        raise MapError(f"{where}.kind must be \"counter\" or \"gauge\", got {kind!r}")
    service = raw.get("service")
    if service is not None:
        try:
            validate_service(service, f"{where}.service")
        except EventError as err:
            raise MapError(str(err)) from None
    low = high = None
    if "expected_range" in raw:
        rng = raw["expected_range"]
        if not isinstance(rng, list) or len(rng) != 2:
            raise MapError(f"{where}.expected_range must be [min, max]")
        low, high = _number(rng[0], f"{where}.expected_range"), _number(rng[1], f"{where}.expected_range")
        if low > high:
            raise MapError(f"{where}.expected_range: min {low:g} is above max {high:g}")
    combine = raw.get("combine", "sum")
    if combine not in ("sum", "mean"):
        raise MapError(f"{where}.combine must be \"sum\" or \"mean\", got {combine!r}")
    return KpiRule(metric, name, kind, service, low, high, combine)


def parse_map(raw: Any, source: str = "mapping") -> MetricMap:
    """A MetricMap from the file's parsed content (MapError names what is wrong)."""
    if not isinstance(raw, dict):
        raise MapError(f"{source}: must be a table/object at the top level")
    unknown = set(raw) - {"http", "kpi"}
    if unknown:
        raise MapError(f"{source}: unknown section(s) {sorted(unknown)} (expected [http] and [[kpi]])")
    http = raw.get("http", {})
    if not isinstance(http, dict):
        raise MapError(f"{source}: [http] must be a table")
    unknown = set(http) - {*_HTTP_LIST_KEYS, "service"}
    if unknown:
        raise MapError(f"{source}: [http] has unknown key(s) {sorted(unknown)}")
    kwargs: dict[str, Any] = {k: _strings(http[k], f"{source}: http.{k}") for k in _HTTP_LIST_KEYS if k in http}
    if "service" in http:
        try:
            kwargs["service"] = validate_service(http["service"], "http.service")
        except EventError as err:
            raise MapError(f"{source}: {err}") from None
    kpis = raw.get("kpi", [])
    if not isinstance(kpis, list):
        raise MapError(f"{source}: kpi must be an array of tables ([[kpi]])")
    kwargs["kpis"] = tuple(_kpi(k, f"{source}: kpi[{i}]") for i, k in enumerate(kpis))
    return MetricMap(**kwargs)


def load_map(path: str | Path | None) -> MetricMap:
    """Read a mapping file (.toml, or .json); None → the defaults."""
    if path is None:
        return MetricMap()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise MapError(f"cannot read the mapping file {p}: {err.strerror or err}") from None
    try:
        raw = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as err:
        raise MapError(f"{p}: not valid {'JSON' if p.suffix.lower() == '.json' else 'TOML'}: {err}") from None
    return parse_map(raw, str(p))
