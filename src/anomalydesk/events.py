"""Event validation and endpoint normalisation (pure; the per-event hot path of every producer).

Formats (DESIGN.md): a metric is `{"service", "endpoint": "METHOD:/path", "status_code",
"response_time" (ms), "timestamp"?, "metrics"?: {name: number}}` where `response_time` and
`status_code` may sit inside `metrics`; a business metric is `{"metric_name", "value",
"expected_range"?: [min, max], "service"?, "timestamp"?}`. A field that is absent or JSON null is
missing ("is required" when it is required); a wrong value is named with what it was, in JSON's terms
("got a string '200'", "got 200.5", "got null").

Parsing returns plain tuples (no per-event objects) and builds error text only on failure.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple

from anomalydesk.config import (
    BUSINESS_PSEUDO_SERVICE,
    ENDPOINT_MAX,
    MAX_ABS_VALUE,
    MAX_LATENCY_MS,
    METRIC_NAME_MAX,
    SERVICE_NAME_MAX,
    TIMESTAMP_MAX,
    TIMESTAMP_MIN,
)

_SERVICE_RE = re.compile(rf"[A-Za-z0-9._-]{{1,{SERVICE_NAME_MAX}}}\Z")
_METRIC_NAME_RE = re.compile(rf"[A-Za-z0-9._:/-]{{1,{METRIC_NAME_MAX}}}\Z")
_METHOD_RE = re.compile(r"[A-Z]{1,16}\Z")
_ID_SEGMENT_RE = re.compile(
    r"(\d+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{12,})\Z"
)
_PATH_CHAR_RE = re.compile(r"[\x21-\x7e]*\Z")  # printable ASCII, no spaces or controls

_TS_MIN, _TS_MAX = TIMESTAMP_MIN, TIMESTAMP_MAX  # short names for the hot paths below

# the keys an event may carry; an object with none of them is not an event at all (a mistyped wrapper
# such as {"data": [...]}), which "service: is required" would misdescribe
EVENT_FIELDS = frozenset({"service", "endpoint", "method", "status_code", "response_time", "timestamp", "metrics",
                          "metric_name", "value", "expected_range"})
# coarser units than seconds that epoch timestamps are commonly sent in, for the hint on a value out of range
_FINER_UNITS = (("milliseconds", 1_000), ("microseconds", 1_000_000), ("nanoseconds", 1_000_000_000))


class EventError(ValueError):
    """One event is invalid: `field` names what was wrong and `reason` says how."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Metric(NamedTuple):
    service: str
    endpoint: str
    status: int
    latency_ms: float
    timestamp: float | None


class BusinessMetric(NamedTuple):
    service: str
    name: str
    value: float
    low: float | None
    high: float | None
    timestamp: float | None


def described(value: Any) -> str:
    """A JSON value as the sender wrote it, for error text: `null`, `true`, `200.5`, `a string '200'`, `an array`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)[:40]
    if isinstance(value, int):
        text = str(value)
        return text if len(text) <= 40 else f"{text[:20]}… ({len(text)} digits)"
    if isinstance(value, str):
        return f"a string {value[:40]!r}"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def not_an_event(obj: dict[str, Any]) -> str | None:
    """Why an object is not an event at all (it has none of `EVENT_FIELDS`), or None if it may be one."""
    if obj.keys() & EVENT_FIELDS:
        return None
    if not obj:
        return ("is an empty object: a metric needs service, endpoint, status_code and response_time; "
                "a business metric metric_name and value")
    names = ", ".join(repr(str(k)[:40]) for k in list(obj)[:5]) + (", …" if len(obj) > 5 else "")
    return ("has none of the fields of a metric (service, endpoint, status_code, response_time) or of a "
            f"business metric (metric_name, value); its keys: {names}")


def validate_service(name: Any, field: str = "service") -> str:
    if name is None:
        raise EventError(field, "is required")
    if not isinstance(name, str):
        raise EventError(field, f"must be a string, got {described(name)}")
    if _SERVICE_RE.match(name) is None:
        raise EventError(field, f"must match [A-Za-z0-9._-]{{1,{SERVICE_NAME_MAX}}}, got {name[:80]!r}")
    return name


@lru_cache(maxsize=65_536)
def normalize_endpoint(endpoint: str) -> str:
    """`GET:/users/123/?x=1` → `GET:/users/{id}`; raises EventError if it is not `METHOD:/path`.

    Query and fragment are dropped, trailing slashes too (`/users/42/` is `/users/42`; the root `/`
    stays), then numeric, UUID and long hex segments become `{id}`."""
    method, sep, path = endpoint.partition(":")
    if not sep or not path.startswith("/"):
        raise EventError("endpoint", f"must look like METHOD:/path, got {endpoint[:80]!r}")
    method = method.upper()
    if _METHOD_RE.match(method) is None:
        raise EventError("endpoint", f"method must be letters, got {method[:20]!r}")
    path = path.split("?", 1)[0].split("#", 1)[0]
    if _PATH_CHAR_RE.match(path) is None:
        raise EventError("endpoint", "path must be printable ASCII without spaces (percent-encode the rest)")
    if len(path) > 1 and path.endswith("/"):  # most servers route /a/ and /a alike: one endpoint
        path = path.rstrip("/") or "/"
    parts = path.split("/")
    for i, segment in enumerate(parts):
        if segment and _ID_SEGMENT_RE.match(segment):
            parts[i] = "{id}"
    normalized = f"{method}:{'/'.join(parts)}"
    if len(normalized) > ENDPOINT_MAX:
        raise EventError("endpoint", f"longer than {ENDPOINT_MAX} characters after normalisation")
    return normalized


def _number(value: Any, field: str, limit: float = MAX_ABS_VALUE) -> float:
    # bool is an int subclass; True as a latency is a client bug, not 1 ms
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EventError(field, f"must be a number, got {described(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise EventError(field, "must be finite (NaN and Infinity are not numbers here)")
    if abs(number) > limit:  # sums of a batch must stay exact and within what the server accepts
        raise EventError(field, f"must be within ±{limit:g}, got {number:g}")
    return number


def parse_timestamp(value: Any, field: str = "timestamp") -> float:
    """Epoch seconds (int/float) or an RFC 3339 string → epoch seconds."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise EventError(field, f"must be epoch seconds or RFC 3339, got {value[:40]!r}") from None
        if parsed.tzinfo is None:
            raise EventError(field, "an RFC 3339 timestamp needs a time zone (Z or ±hh:mm)")
        ts = parsed.timestamp()
    else:
        ts = _number(value, field, math.inf)  # the range check below names the unit it looks like
    if not _TS_MIN <= ts <= _TS_MAX:
        raise EventError(field, _timestamp_out_of_range(value, ts))
    return ts


def _timestamp_out_of_range(value: Any, ts: float) -> str:
    """The range, and a hint only for a value that is that range in a finer unit (ms, µs, ns)."""
    got = value[:40] if isinstance(value, str) else described(value)
    reason = f"must be epoch seconds between 2000-01-01 and 2100-01-01 ({_TS_MIN:.0f}–{_TS_MAX:.0f}), got {got}"
    for unit, per_second in _FINER_UNITS:
        if _TS_MIN <= ts / per_second <= _TS_MAX:
            return f"{reason} ({unit}? divide by {per_second})"
    return reason


_KNOWN_SERVICES: set[str] = set()  # names already validated (bounded): the hot path skips the regex
_KNOWN_SERVICES_MAX = 10_000


def validate_service_cached(name: str) -> str:
    """`validate_service` that remembers valid names (bounded), so the next check is a set lookup."""
    if name not in _KNOWN_SERVICES:
        validate_service(name)
        if len(_KNOWN_SERVICES) < _KNOWN_SERVICES_MAX:
            _KNOWN_SERVICES.add(name)
    return name


def parse_metric(obj: Any) -> Metric:
    """Validate one metric event in DESIGN.md's format; raises EventError naming the field."""
    # fast path for the common, well-formed event; anything unusual takes the full checks below,
    # which also build the error messages
    if type(obj) is dict and "metrics" not in obj and "method" not in obj:
        service, endpoint = obj.get("service"), obj.get("endpoint")
        status, latency, ts = obj.get("status_code"), obj.get("response_time"), obj.get("timestamp")
        if (
            type(service) is str and service in _KNOWN_SERVICES
            and type(endpoint) is str
            and type(status) is int and 100 <= status <= 599
            and (type(latency) is float or type(latency) is int) and 0 <= latency <= MAX_LATENCY_MS
            and (ts is None or ((type(ts) is float or type(ts) is int) and _TS_MIN <= ts <= _TS_MAX))
        ):
            return Metric(service, normalize_endpoint(endpoint), status, float(latency),
                          None if ts is None else float(ts))
    metric = _parse_metric_checked(obj)
    if len(_KNOWN_SERVICES) < _KNOWN_SERVICES_MAX:
        _KNOWN_SERVICES.add(metric.service)
    return metric


def _parse_metric_checked(obj: Any) -> Metric:
    if not isinstance(obj, dict):
        raise EventError("event", f"must be a JSON object, got {described(obj)}")
    why = not_an_event(obj)
    if why is not None:
        raise EventError("event", why)
    service = validate_service(obj.get("service"))
    endpoint = obj.get("endpoint")
    if endpoint is None:
        raise EventError("endpoint", "is required (a string like GET:/users/{id})")
    if not isinstance(endpoint, str):
        raise EventError("endpoint", f"must be a string like GET:/users/{{id}}, got {described(endpoint)}")
    if ":" not in endpoint and isinstance(obj.get("method"), str):
        endpoint = f"{obj['method']}:{endpoint}"
    endpoint = normalize_endpoint(endpoint)
    extra = obj.get("metrics")
    if extra is not None and not isinstance(extra, dict):
        raise EventError("metrics", "must be an object of name → number")
    status = obj.get("status_code")
    if status is None and extra:
        status = extra.get("status_code")
    if status is None:
        raise EventError("status_code", "is required (an integer between 100 and 599)")
    if isinstance(status, bool) or not isinstance(status, int):
        if isinstance(status, float) and status.is_integer():
            status = int(status)
        else:
            raise EventError("status_code", f"must be an integer, got {described(status)}")
    if not 100 <= status <= 599:
        raise EventError("status_code", f"must be between 100 and 599, got {status}")
    latency = obj.get("response_time")
    if latency is None and extra:
        latency = extra.get("response_time")
    if latency is None:
        raise EventError("response_time", "is required (milliseconds)")
    latency = _number(latency, "response_time", MAX_LATENCY_MS)
    if latency < 0:
        raise EventError("response_time", f"must not be negative, got {latency:g}")
    ts = obj.get("timestamp")
    return Metric(service, endpoint, status, latency, None if ts is None else parse_timestamp(ts))


def parse_business_metric(obj: Any) -> BusinessMetric:
    """Validate one business metric; no service → the pseudo-service `business`."""
    if not isinstance(obj, dict):
        raise EventError("event", f"must be a JSON object, got {described(obj)}")
    name = obj.get("metric_name")
    pattern = f"[A-Za-z0-9._:/-]{{1,{METRIC_NAME_MAX}}}"
    if name is None:
        raise EventError("metric_name", f"is required (a name matching {pattern})")
    if not isinstance(name, str) or _METRIC_NAME_RE.match(name) is None:
        raise EventError("metric_name", f"must match {pattern}, got {described(name)}")
    if obj.get("value") is None:
        raise EventError("value", "is required (a number)")
    value = _number(obj["value"], "value")
    service = obj.get("service")
    service = BUSINESS_PSEUDO_SERVICE if service is None else validate_service(service)
    low = high = None
    expected = obj.get("expected_range")
    if expected is not None:
        if not isinstance(expected, list | tuple) or len(expected) != 2:
            raise EventError("expected_range", "must be [min, max]")
        low = _number(expected[0], "expected_range")
        high = _number(expected[1], "expected_range")
        if low > high:
            raise EventError("expected_range", f"min {low:g} is above max {high:g}")
    ts = obj.get("timestamp")
    return BusinessMetric(service, name, value, low, high, None if ts is None else parse_timestamp(ts))


def is_business_metric(obj: Any) -> bool:
    return isinstance(obj, dict) and "metric_name" in obj


def parse_batch(items: list[Any]) -> tuple[list[Metric | BusinessMetric], list[dict[str, Any]]]:
    """Validate a mixed batch: (valid events, rejected [{"index", "field", "reason"}])."""
    valid: list[Metric | BusinessMetric] = []
    rejected: list[dict[str, Any]] = []
    append, known, normalize, make = valid.append, _KNOWN_SERVICES, normalize_endpoint, tuple.__new__
    for index, item in enumerate(items):
        # parse_metric's fast path, inlined: this loop runs for every event the collector takes
        if type(item) is dict and "metric_name" not in item and "metrics" not in item and "method" not in item:
            service, endpoint = item.get("service"), item.get("endpoint")
            status, latency, ts = item.get("status_code"), item.get("response_time"), item.get("timestamp")
            if (
                type(service) is str and service in known
                and type(endpoint) is str
                and type(status) is int and 100 <= status <= 599
                and (type(latency) is float or type(latency) is int) and 0 <= latency <= MAX_LATENCY_MS
                and (ts is None or ((type(ts) is float or type(ts) is int) and _TS_MIN <= ts <= _TS_MAX))
            ):
                try:
                    append(make(Metric, (service, normalize(endpoint), status, float(latency),
                                         None if ts is None else float(ts))))
                    continue
                except EventError:
                    pass  # the checked path below names the problem
        try:
            append(parse_business_metric(item) if is_business_metric(item) else parse_metric(item))
        except EventError as err:
            rejected.append({"index": index, "field": err.field, "reason": err.reason})
    return valid, rejected
