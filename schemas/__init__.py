"""Pulsewire's contracts: payload models, the metric catalogue, JSON Schema export, SQL migrations.

This package imports nothing else of Pulsewire's, so every other package may import it.
"""

from schemas.catalogue import CATALOGUE, DeviceKind, Metric, metric_for
from schemas.payloads import (
    EVENT_SCHEMA,
    STATUS_SCHEMA,
    TELEMETRY_SCHEMA,
    EventPayload,
    Reading,
    StatusPayload,
    TelemetryPayload,
)

__all__ = [
    "CATALOGUE",
    "EVENT_SCHEMA",
    "STATUS_SCHEMA",
    "TELEMETRY_SCHEMA",
    "DeviceKind",
    "EventPayload",
    "Metric",
    "Reading",
    "StatusPayload",
    "TelemetryPayload",
    "metric_for",
]
