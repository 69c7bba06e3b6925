"""The OpenAPI 3.1 document the collector serves at `GET /openapi.json` (a test checks real answers
against it, so it says what the collector does, not what it might)."""

from __future__ import annotations

from functools import cache
from typing import Any

from anomalydesk import __version__, config

_REF = "#/components/schemas/"


def _json(schema: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description,
                           "content": {"application/json": {"schema": {"$ref": _REF + schema}}}}
    if headers:
        out["headers"] = headers
    return out


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                                "schema": {"type": "integer", "minimum": 0}}}

_SCHEMAS: dict[str, Any] = {
    "Metric": {
        "type": "object",
        "required": ["service", "endpoint"],
        "description": "One request served by a service. status_code and response_time may instead sit "
                       "inside `metrics`.",
        "properties": {
            "service": {"type": "string", "pattern": r"^[A-Za-z0-9._-]{1,64}$"},
            "endpoint": {"type": "string", "maxLength": config.ENDPOINT_MAX, "examples": ["GET:/users/123"]},
            "status_code": {"type": "integer", "minimum": 100, "maximum": 599},
            "response_time": {"type": "number", "minimum": 0, "description": "milliseconds"},
            "timestamp": {"type": ["number", "string"], "description": "epoch seconds or RFC 3339; kept, "
                                                                        "the window is the server's clock"},
            "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
        },
    },
    "BusinessMetric": {
        "type": "object",
        "required": ["metric_name", "value"],
        "properties": {
            "metric_name": {"type": "string", "pattern": r"^[A-Za-z0-9._:/-]{1,128}$"},
            "value": {"type": "number"},
            "expected_range": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
            "service": {"type": "string", "description": "default: the pseudo-service `business`"},
            "timestamp": {"type": ["number", "string"]},
        },
    },
    "Batch": {
        "description": "One event, an array of events, or an object with `metrics` (and optionally "
                       "`business_metrics` / `events`) arrays; rejected indices count over their "
                       "concatenation in that order.",
        "oneOf": [
            {"$ref": _REF + "Metric"}, {"$ref": _REF + "BusinessMetric"},
            {"type": "array", "maxItems": config.COLLECTOR_MAX_BATCH_EVENTS, "items": {"type": "object"}},
            {"type": "object", "required": ["metrics"], "properties": {"metrics": {"type": "array"}}},
        ],
    },
    "Rejection": {
        "type": "object",
        "required": ["index", "field", "reason"],
        "properties": {
            "index": {"type": ["integer", "null"], "description": "position in the batch; null: the whole body"},
            "field": {"type": "string"},
            "reason": {"type": "string"},
        },
    },
    "IngestAnswer": {
        "type": "object",
        "required": ["accepted", "rejected"],
        "properties": {
            "accepted": {"type": "integer", "minimum": 0, "description": "events stored in Redis"},
            "rejected": {"type": "array", "items": {"$ref": _REF + "Rejection"}},
            "late": {"type": "integer", "minimum": 1,
                     "description": "valid events refused because their window was already sealed (not in "
                                    "`accepted`; present only when there are some; the answer is then 200)"},
            "error": {"type": "string"},
        },
    },
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Health": {
        "type": "object",
        "required": ["status", "uptime_s", "backlog", "redis"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "uptime_s": {"type": "number"},
            "backlog": {
                "type": "object", "required": ["pending_events", "inflight_ingests"],
                "properties": {"pending_events": {"type": "integer"}, "inflight_ingests": {"type": "integer"}},
            },
            "redis": {
                "type": "object", "required": ["reachable"],
                "properties": {"reachable": {"type": "boolean"}, "latency_ms": {"type": "number"},
                               "error": {"type": "string"}},
            },
            "gears_version": {"type": ["string", "null"]},
            "worker": {  # collect --workers N: the process that answered (the backlog is its own)
                "type": "object", "required": ["index", "of"],
                "properties": {"index": {"type": "integer"}, "of": {"type": "integer"}},
            },
        },
    },
}

_INGEST_RESPONSES: dict[str, Any] = {
    "202": _json("IngestAnswer", "every event was stored"),
    "200": _json("IngestAnswer", "some events were stored; `rejected` lists the others"),
    "400": _json("IngestAnswer", "the body is not JSON (or not UTF-8), or a header is malformed"),
    "401": _json("Error", "missing or unknown API key"),
    "413": _json("IngestAnswer", "the body or the batch is larger than the collector's limits"),
    "422": _json("IngestAnswer", "no event in the body is valid"),
    "429": _json("Error", "rate limit of this key exceeded", _RETRY_AFTER),
    "503": _json("Error", "Redis is unreachable: nothing was stored", _RETRY_AFTER),
}


def _ingest(summary: str, body_schema: str) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                        "description": "a retry with the same key within 10 minutes is stored once",
                        "schema": {"type": "string", "maxLength": config.COLLECTOR_IDEMPOTENCY_KEY_MAX}}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": _REF + body_schema}}}},
        "responses": _INGEST_RESPONSES,
    }}


@cache
def openapi_document() -> dict[str, Any]:
    """The collector's API description (OpenAPI 3.1)."""
    paths: dict[str, Any] = {
        "/metrics": _ingest("Send request metrics (and business metrics mixed in)", "Batch"),
        "/business-metrics": _ingest("Send business metrics", "Batch"),
        "/api/metrics": _ingest("Same as /metrics (the demo SDK's path)", "Batch"),
        "/api/business-metrics": _ingest("Same as /business-metrics (the demo SDK's path)", "Batch"),
        "/api/batch": _ingest("Same as /metrics (the demo SDK's batch path)", "Batch"),
        "/health": {"get": {"summary": "Is Redis reachable, which gears library, how much is waiting",
                            "security": [],
                            "responses": {"200": _json("Health", "healthy"),
                                          "503": _json("Health", "Redis unreachable", _RETRY_AFTER)}}},
        "/prometheus": {"get": {"summary": "The collector's own metrics (Prometheus text format)",
                                "responses": {"200": {"description": "metrics",
                                                      "content": {"text/plain": {"schema": {"type": "string"}}}},
                                              "401": _json("Error", "missing or unknown API key")}}},
        "/openapi.json": {"get": {"summary": "This document", "security": [],
                                  "responses": {"200": {"description": "OpenAPI 3.1",
                                                        "content": {"application/json": {}}}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "AnomalyDesk collector", "version": __version__,
                 "description": "Send request and business metrics to AnomalyDesk. API keys are required "
                                "when the collector listens beyond loopback."},
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
        "security": [{"bearer": []}, {"apiKeyHeader": []}],
    }
