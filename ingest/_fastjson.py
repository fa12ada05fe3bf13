"""The fast path of validation: well-formed telemetry decoded by msgspec, in C, in one pass.

`schemas.payloads.TelemetryPayload` (pydantic) stays the contract. These structs accept a subset of
what it accepts (stricter wherever the two libraries could differ: RFC 3339 timestamps only), so a
payload decoded here is one pydantic accepts with the same values; anything refused here is
validated again by pydantic, which names the quarantine reason and its detail.
`tests/test_ingest_validate.py` checks both agree on a corpus of good and bad payloads.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from schemas.catalogue import CATALOGUE
from schemas.payloads import INT64_LIMIT
from schemas.topics import is_device_id

# Catalogued metric names all match the contract's MetricName pattern; any other name goes to the
# slow path, which tells a malformed name (invalid_payload) from an uncatalogued one (unknown_metric).
_METRICS = frozenset(name for metrics in CATALOGUE.values() for name in metrics)
# msgspec rounds a 7th fractional digit of a second, pydantic truncates it: leave those to pydantic
# (a `"key":12.1234567` float does not match: a digit must precede the colon).
_LONG_FRACTION = re.compile(rb"\.(?<=\d:\d\d\.)\d{7}")  # starts with a literal: fast scan
AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]
# JSON can only carry a NUL in a string as this escape (a raw one is malformed); the slow path names
# it (`nul_in_string`). An escaped backslash before `u0000` also matches: the slow path then decides.
_NUL_ESCAPE = b"\\u0000"


class FastReading(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """`schemas.payloads.Reading`."""

    ts: AwareTime
    metric: str
    value: float


class FastTelemetry(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """`schemas.payloads.TelemetryPayload`."""

    schema: Literal["pulsewire.telemetry/1"]
    device_id: str
    boot_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    seq: Annotated[int, msgspec.Meta(ge=0, le=INT64_LIMIT - 1)]  # msgspec bounds must fit int64
    sent_at: AwareTime
    readings: Annotated[list[FastReading], msgspec.Meta(min_length=1)]


_decoder = msgspec.json.Decoder(FastTelemetry)


def fast_telemetry(payload: bytes, topic_device_id: str | None = None) -> FastTelemetry | None:
    """The decoded telemetry, or None when the slow path (pydantic) must decide.

    `topic_device_id` is the id its topic names, already checked by `schemas.topics.parse_uplink`:
    a payload naming the same id needs no second check.
    """
    if _NUL_ESCAPE in payload or _LONG_FRACTION.search(payload):
        return None
    try:
        msg = _decoder.decode(payload)
    except msgspec.DecodeError:  # ValidationError is a subclass
        return None
    # Checked here rather than as a msgspec pattern (one Python regex call per string, the main cost).
    if msg.device_id != topic_device_id and not is_device_id(msg.device_id):
        return None
    metrics = _METRICS
    for r in msg.readings:
        if r.metric not in metrics:
            return None
    return msg
