"""The msgspec fast path of ingest validation agrees with the contract, `schemas.payloads` (pydantic)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from ingest._fastjson import fast_telemetry
from ingest.validate import Quarantined, Telemetry, validate
from schemas.catalogue import CATALOGUE
from schemas.payloads import TelemetryPayload

GOOD: dict[str, Any] = {
    "schema": "pulsewire.telemetry/1", "device_id": "veh-1", "boot_id": "b1", "seq": 3,
    "sent_at": "2026-11-23T08:00:00Z",
    "readings": [{"ts": "2026-11-23T08:00:00.123456+01:00", "metric": "rpm", "value": 812.5}],
}  # fmt: skip


def _with(**changes: Any) -> bytes:
    body = {**GOOD, **changes}
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def _reading(**changes: Any) -> bytes:
    return _with(readings=[{**GOOD["readings"][0], **changes}])


CORPUS: list[bytes] = [
    _with(), _with(seq=0), _with(device_id="A.b_c-9" * 9), _with(boot_id="x" * 64),
    _reading(value=3), _reading(value=-0.0), _reading(value=1e308), _reading(ts="2026-11-23T08:00:00Z"),
    _reading(ts="2026-11-23T08:00:00.1234567Z"), _reading(ts="2026-11-23t08:00:00z"),
    _reading(ts="2026-11-23 08:00:00Z"), _reading(ts="2026-11-23T08:00Z"), _reading(ts="2026-11-23T08:00:00"),
    _reading(ts="2026-11-23"), _reading(ts=1_790_000_000), _reading(ts="2026-02-30T08:00:00Z"),
    _reading(ts="2026-11-23T08:00:60Z"), _reading(ts="2026-11-23T08:00:00+24:00"), _reading(ts=""),
    _reading(metric="rpm\n"), _reading(metric="Rpm"), _reading(metric="no_such_metric"),
    _reading(metric="r" * 65), _reading(metric=7),
    _reading(value="812.5"), _reading(value=True), _reading(value=None), _reading(extra=1),
    _with(device_id="veh-1\n"), _with(device_id="-veh"), _with(device_id="v" * 65), _with(device_id=1),
    _with(boot_id=""), _with(boot_id="x" * 65), _with(boot_id="é" * 64), _with(seq=-1), _with(seq=1.0),
    _with(seq="3"), _with(seq=True), _with(seq=2**63), _with(schema="pulsewire.telemetry/2"),
    _with(schema=...), _with(sent_at=...), _with(readings=[]), _with(readings={}), _with(extra="x"),
    _with(sent_at="2026-11-23T08:00:00"), b"", b"{", b"[]", b"null", b'{"schema": "pulsewire.telemetry/1"}',
    b'{"schema":"pulsewire.telemetry/1","device_id":"veh-1","boot_id":"b1","seq":1,"seq":2,'
    b'"sent_at":"2026-11-23T08:00:00Z","readings":[{"ts":"2026-11-23T08:00:00Z","metric":"rpm","value":NaN}]}',
    _with().replace(b"812.5", b"1e400"), _with().replace(b'"seq": 3', b'"seq": 3, "seq": 4'),
    _with().replace(b"veh-1", b"veh-\\u0031"), "\ufeff".encode() + _with(), _with() + b" x",
]  # fmt: skip


@pytest.mark.parametrize("payload", CORPUS)
def test_fast_path_accepts_only_what_pydantic_accepts_with_the_same_values(payload: bytes) -> None:
    fast = fast_telemetry(payload)
    try:
        slow = TelemetryPayload.model_validate_json(payload)
    except ValidationError:
        assert fast is None
        return
    if fast is None:  # refused here, accepted by the slow path: allowed (the slow path decides)
        return
    assert (fast.device_id, fast.boot_id, fast.seq, fast.sent_at) == (
        slow.device_id, slow.boot_id, slow.seq, slow.sent_at)  # fmt: skip
    assert [(r.ts, r.ts.utcoffset(), r.metric, r.value) for r in fast.readings] == [
        (r.ts, r.ts.utcoffset(), r.metric, r.value) for r in slow.readings]  # fmt: skip


def test_the_corpus_exercises_both_paths() -> None:
    decided = [fast_telemetry(p) is not None for p in CORPUS]
    assert sum(decided) >= 8 and decided.count(False) >= 30


@pytest.mark.parametrize("payload", CORPUS)
def test_validate_gives_the_same_outcome_as_pydantic_alone(payload: bytes) -> None:
    now = datetime(2026, 11, 23, 9, tzinfo=UTC)
    got = validate("pw/v1/dev/veh-1/telemetry", payload, {"veh-1": "vehicle"}, now=now, max_future_skew_s=300,
                   retention_days=400)  # fmt: skip
    try:
        slow = TelemetryPayload.model_validate_json(payload)
    except ValidationError:
        assert isinstance(got, Quarantined) and got.reason.value in (
            "malformed_json", "wrong_schema", "invalid_payload")  # fmt: skip
        return
    if isinstance(got, Telemetry):
        assert (got.device_id, got.boot_id, got.seq) == (slow.device_id, slow.boot_id, slow.seq)
        assert [(r.ts, r.metric, r.value) for r in got.readings] == [
            (r.ts, r.metric, r.value) for r in slow.readings]  # fmt: skip
    else:  # accepted by the contract, refused by a registry or clock rule (e.g. a future ts)
        assert isinstance(got, Quarantined)
        assert got.reason.value not in ("malformed_json", "wrong_schema", "invalid_payload")


def test_catalogued_metric_names_match_the_contracts_pattern() -> None:
    for metrics in CATALOGUE.values():
        for name in metrics:
            assert re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name), name
