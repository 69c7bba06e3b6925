"""Metric events straight from JSON bytes, decoded and type-checked in compiled code (msgspec).

The collector's common body — an array of plain metric events, or `{"metrics": [...]}` — is decoded
by msgspec into typed structs whose constraints (types, status 100–599, latency 0–MAX_LATENCY_MS,
timestamp between 2000 and 2100 in epoch seconds) are checked in C while parsing; what is left per
event in Python is the endpoint normalisation (a cached lookup) and a set lookup for the service.

`decode_metrics` answers only for bodies in which every event is valid and plain. Anything else — one
invalid item, a field it does not know, `metrics`/`method` inside an event, a business metric, a
timestamp as RFC 3339 text, a float status code, NaN literals, integers past 64 bits — gives None, and
the caller takes the per-item path (`events.parse_batch`), so every rejection keeps exactly today's
index, field and reason. The property test `tests/test_wire.py` checks both paths agree.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from anomalydesk.config import MAX_LATENCY_MS, TIMESTAMP_MAX, TIMESTAMP_MIN
from anomalydesk.events import EventError, Metric, normalize_endpoint, validate_service_cached

__all__ = ["decode_metrics"]


class _WireMetric(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One metric event as `parse_metric`'s fast path takes it; unknown keys make the body go the per-item way."""

    service: str  # checked per distinct name below: a regex per event in msgspec costs more than the rest
    endpoint: str
    status_code: Annotated[int, Meta(ge=100, le=599)]
    response_time: Annotated[float, Meta(ge=0, le=MAX_LATENCY_MS)]
    timestamp: Annotated[float, Meta(ge=TIMESTAMP_MIN, le=TIMESTAMP_MAX)] | None = None


class _WireBatch(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """`{"metrics": [...]}` and nothing else (other batch keys take the per-item path, which merges them)."""

    metrics: list[_WireMetric]


_DECODER = msgspec.json.Decoder(list[_WireMetric] | _WireBatch)


def decode_metrics(body: bytes) -> list[Metric] | None:
    """The events of a body whose every item is a valid plain metric event; None for anything else."""
    try:
        decoded = _DECODER.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    wire = decoded.metrics if type(decoded) is _WireBatch else decoded
    seen: set[str] = set()  # services of this body already checked
    normalize, make = normalize_endpoint, tuple.__new__
    out: list[Metric] = []
    append = out.append
    try:
        for event in wire:
            service = event.service
            if service not in seen:
                seen.add(validate_service_cached(service))
            append(make(Metric, (service, normalize(event.endpoint), event.status_code, event.response_time,
                                 event.timestamp)))
    except EventError:
        return None  # the per-item path names the item and the reason
    return out
