"""The topics of the wire contract: builders and parsers agree, and one device-id rule holds everywhere."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from ingest._fastjson import fast_telemetry
from ingest.validate import Quarantined, validate
from pulsewire import brokerauth
from schemas import topics
from schemas.payloads import QuarantineReason, TelemetryPayload

GOOD_IDS = ["icd-1", "A", "veh.7_x-9", "a" * 64, "0abc"]
BAD_IDS = ["icd-1\n", "", "-icd", ".icd", "a" * 65, "icd/1", "icd+", "icd#", "icd 1", "ïcd", "icd-1\x00"]


@pytest.mark.parametrize("device_id", GOOD_IDS)
def test_builders_and_parsers_round_trip(device_id: str) -> None:
    for kind in topics.UPLINK_KINDS:
        topic = topics.uplink(device_id, kind)
        assert topic == f"pw/v1/dev/{device_id}/{kind}"
        assert topics.parse_uplink(topic) == (device_id, kind)
        assert topics.unreplayed(topics.replay(device_id, kind)) == topic
        assert topics.replay_of(topic) == f"pw/v1/replay/{device_id}/{kind}"
    assert (topics.telemetry(device_id), topics.event(device_id), topics.status(device_id)) == tuple(
        topics.uplink(device_id, k) for k in ("telemetry", "event", "status")
    )
    assert topics.command(device_id) == f"pw/v1/dev/{device_id}/cmd"
    assert topics.parse_command_reply(topics.command_reply(device_id)) == device_id
    assert topics.parse_uplink(topics.command(device_id)) is None


@pytest.mark.parametrize("device_id", BAD_IDS)
def test_a_bad_device_id_is_no_topic_of_ours(device_id: str) -> None:
    assert not topics.is_device_id(device_id)
    assert topics.parse_uplink(topics.telemetry(device_id)) is None
    assert topics.parse_command_reply(topics.command_reply(device_id)) is None


@pytest.mark.parametrize(
    "topic",
    ["pw/v1/dev/icd-1", "pw/v1/dev/icd-1/telemetry/x", "pw/v1/dev/icd-1/cmd", "pw/v2/dev/icd-1/telemetry",
     "pw/v1/replay/icd-1/telemetry", "pw/v1/dev//telemetry", "/pw/v1/dev/icd-1/telemetry", ""],
)  # fmt: skip
def test_parse_uplink_refuses_what_is_not_an_uplink(topic: str) -> None:
    assert topics.parse_uplink(topic) is None


def test_org_alert_topics() -> None:
    assert topics.org_alerts(42) == "pw/v1/org/42/alerts"
    assert topics.parse_org_alerts(topics.org_alerts(42)) == 42
    for bad in ("pw/v1/org/x/alerts", "pw/v1/org//alerts", "pw/v1/org/4/2/alerts", "pw/v1/org/²/alerts"):
        assert topics.parse_org_alerts(bad) is None


def test_subscription_filters_with_and_without_a_share_group() -> None:
    plain = topics.uplink_filters()
    kinds = ("telemetry", "event", "status")
    assert plain == tuple(f"pw/v1/{s}/+/{k}" for s in ("dev", "replay") for k in kinds)
    assert topics.uplink_filters("ingest") == tuple(f"$share/ingest/{f}" for f in plain)
    assert topics.command_reply_filter() == "pw/v1/dev/+/cmd/reply"
    assert topics.command_reply_filter("dash") == "$share/dash/pw/v1/dev/+/cmd/reply"
    assert topics.org_alerts_filter() == "pw/v1/org/+/alerts"
    assert topics.device_filter("icd-1") == "pw/v1/dev/icd-1/#"


def test_only_device_topics_are_replayed() -> None:
    assert topics.replay_of(topics.org_alerts(1)) is None
    assert topics.unreplayed(topics.org_alerts(1)) == topics.org_alerts(1)


def test_the_string_pattern_is_the_compiled_rule() -> None:
    """JSON Schema and pydantic get `^...$`, whose `$` is the end of the text, as `fullmatch` is."""
    assert f"^{topics.DEVICE_ID_BODY}$" == topics.DEVICE_ID_PATTERN
    for device_id in GOOD_IDS + BAD_IDS:
        # Python's `$` would also match before a final newline; `\\Z` does what JSON Schema's `$` does.
        python_view = re.fullmatch(topics.DEVICE_ID_PATTERN.replace("$", r"\Z"), device_id) is not None
        assert topics.is_device_id(device_id) is python_view, device_id


def test_the_acl_grants_a_device_exactly_the_contract_topics() -> None:
    acl = brokerauth.render_acl("svc")
    assert f"topic readwrite {topics.EVERYTHING}\n" in acl
    own = (topics.telemetry("%u"), topics.event("%u"), topics.status("%u"), topics.command_reply("%u"))
    for topic in own:
        assert f"pattern write {topic}\n" in acl
    assert f"pattern read {topics.command('%u')}\n" in acl
    assert "replay" not in acl and "org" not in acl.split("pattern", 1)[1]


def _telemetry(device_id: str) -> bytes:
    stamp = "2026-11-23T08:00:00Z"
    reading = {"ts": stamp, "metric": "rpm", "value": 800.0}
    body = {"schema": "pulsewire.telemetry/1", "device_id": device_id, "boot_id": "b1", "seq": 1,
            "sent_at": stamp, "readings": [reading]}  # fmt: skip
    return json.dumps(body).encode()


def test_a_trailing_newline_in_a_device_id_is_refused_by_every_path() -> None:
    """`$` in a Python regex matches before a final newline; the contract's ids never end in one."""
    sneaky = "icd-1\n"
    assert topics.parse_uplink(topics.telemetry(sneaky)) is None  # the topic path (ingest/validate.py)
    assert fast_telemetry(_telemetry(sneaky)) is None  # the fast path (ingest/_fastjson.py)
    assert fast_telemetry(_telemetry("icd-1")) is not None
    with pytest.raises(ValidationError):  # the contract itself
        TelemetryPayload.model_validate_json(_telemetry(sneaky))
    now = datetime(2026, 11, 23, 9, tzinfo=UTC)
    got = validate(topics.telemetry(sneaky), _telemetry(sneaky), {sneaky: "vehicle"},
                   now=now, max_future_skew_s=300, retention_days=30)  # fmt: skip
    assert isinstance(got, Quarantined) and got.reason is QuarantineReason.UNKNOWN_TOPIC
