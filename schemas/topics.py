"""The MQTT topics of wire contract v1, and the device-id pattern they carry.

Every `pw/v1/...` topic is built and parsed here, by producers and consumers alike:

| topic | builder | direction |
|---|---|---|
| `pw/v1/dev/{device_id}/telemetry`, `/event`, `/status` | `uplink(device_id, kind)` | device → ingest |
| `pw/v1/dev/{device_id}/cmd` | `command(device_id)` | dashboard → device |
| `pw/v1/dev/{device_id}/cmd/reply` | `command_reply(device_id)` | device → dashboard |
| `pw/v1/org/{org_id}/alerts` | `org_alerts(org_id)` | relay → org subscribers |
| `pw/v1/replay/{device_id}/{kind}` | `replay_of(device_topic)` | quarantine replay → ingest |

Builders format what they are given (the broker ACL passes Mosquitto's `%u` as the device id);
parsers are total and return None for anything that is not a well-formed topic of the contract.
A device id is checked with `is_device_id` (full match: no trailing newline slips through a `$`);
`DEVICE_ID_PATTERN` is the same rule as a string for JSON Schema and pydantic, whose `$` is the
end of the text. This module imports nothing of Pulsewire's.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal, NamedTuple, get_args

ROOT = "pw/v1"
DEVICE_PREFIX = f"{ROOT}/dev/"
REPLAY_PREFIX = f"{ROOT}/replay/"  # only the service login may publish here (the ACL)
ORG_PREFIX = f"{ROOT}/org/"
EVERYTHING = f"{ROOT}/#"  # the service login's ACL, and a watcher of all traffic

DEVICE_ID_BODY = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
DEVICE_ID_PATTERN = f"^{DEVICE_ID_BODY}$"  # JSON Schema, pydantic and SQL: `$` is the end of the text
_DEVICE_ID = re.compile(DEVICE_ID_BODY)

UplinkKind = Literal["telemetry", "event", "status"]
UPLINK_KINDS: tuple[UplinkKind, ...] = get_args(UplinkKind)


def is_device_id(value: str) -> bool:
    """Whether `value` is a device id: 1-64 of `A-Za-z0-9._-`, starting with a letter or digit."""
    return _DEVICE_ID.fullmatch(value) is not None


class DeviceTopic(NamedTuple):
    """A parsed uplink topic: which device sent what."""

    device_id: str
    kind: UplinkKind


# -- builders ------------------------------------------------------------------------------------


def uplink(device_id: str, kind: UplinkKind) -> str:
    """`pw/v1/dev/{device_id}/{kind}`: what a device publishes."""
    return f"{DEVICE_PREFIX}{device_id}/{kind}"


def telemetry(device_id: str) -> str:
    """`pw/v1/dev/{device_id}/telemetry`."""
    return uplink(device_id, "telemetry")


def event(device_id: str) -> str:
    """`pw/v1/dev/{device_id}/event`."""
    return uplink(device_id, "event")


def status(device_id: str) -> str:
    """`pw/v1/dev/{device_id}/status` (retained; the Will)."""
    return uplink(device_id, "status")


def command(device_id: str) -> str:
    """`pw/v1/dev/{device_id}/cmd`: commands to the device."""
    return f"{DEVICE_PREFIX}{device_id}/cmd"


def command_reply(device_id: str) -> str:
    """`pw/v1/dev/{device_id}/cmd/reply`: the device's answers, with the request's correlation data."""
    return f"{DEVICE_PREFIX}{device_id}/cmd/reply"


def org_alerts(org_id: int) -> str:
    """`pw/v1/org/{org_id}/alerts`: the org's view of each of its alerts."""
    return f"{ORG_PREFIX}{org_id}/alerts"


def replay(device_id: str, kind: UplinkKind) -> str:
    """`pw/v1/replay/{device_id}/{kind}`: a quarantined message handed back to ingest."""
    return f"{REPLAY_PREFIX}{device_id}/{kind}"


def scratch(name: str) -> str:
    """`pw/v1/test/{name}`: no part of the contract; the service login may use it (broker tests)."""
    return f"{ROOT}/test/{name}"


# -- subscription filters ------------------------------------------------------------------------


def shared(topic_filter: str, group: str) -> str:
    """`$share/{group}/{filter}` (subscribers of one group split the messages), or the plain filter."""
    return f"$share/{group}/{topic_filter}" if group else topic_filter


def uplink_filters(group: str = "") -> tuple[str, ...]:
    """Ingest's subscriptions: every device's uplink and every replayed message, in `group`."""
    return tuple(shared(build("+", kind), group) for build in (uplink, replay) for kind in UPLINK_KINDS)


def command_reply_filter(group: str = "") -> str:
    """Every device's command replies, in `group`."""
    return shared(command_reply("+"), group)


def org_alerts_filter(group: str = "") -> str:
    """Every org's alert topic, in `group`."""
    return shared(f"{ORG_PREFIX}+/alerts", group)


def device_filter(device_id: str) -> str:
    """`pw/v1/dev/{device_id}/#`: everything to and from one device."""
    return f"{DEVICE_PREFIX}{device_id}/#"


# -- parsers -------------------------------------------------------------------------------------


@lru_cache(maxsize=65_536)  # a device sends on its few topics again and again (ingest's hot path)
def parse_uplink(topic: str) -> DeviceTopic | None:
    """The device and kind of `pw/v1/dev/{device_id}/{kind}`, or None."""
    if not topic.startswith(DEVICE_PREFIX):
        return None
    parts = topic[len(DEVICE_PREFIX) :].split("/")
    if len(parts) != 2 or parts[1] not in UPLINK_KINDS or _DEVICE_ID.fullmatch(parts[0]) is None:
        return None
    return DeviceTopic(parts[0], parts[1])


def parse_command_reply(topic: str) -> str | None:
    """The device id of `pw/v1/dev/{device_id}/cmd/reply`, or None."""
    if not (topic.startswith(DEVICE_PREFIX) and topic.endswith("/cmd/reply")):
        return None
    device_id = topic[len(DEVICE_PREFIX) : -len("/cmd/reply")]
    return device_id if is_device_id(device_id) else None


def parse_org_alerts(topic: str) -> int | None:
    """The org id of `pw/v1/org/{org_id}/alerts`, or None."""
    if not (topic.startswith(ORG_PREFIX) and topic.endswith("/alerts")):
        return None
    org = topic[len(ORG_PREFIX) : -len("/alerts")]
    return int(org) if org.isascii() and org.isdigit() else None


def replay_of(device_topic: str) -> str | None:
    """The replay topic of a topic under `pw/v1/dev/` (as quarantine stores it), or None.

    Only the prefix is swapped: ingest judges the rest again, as it did the first time.
    """
    if not device_topic.startswith(DEVICE_PREFIX):
        return None
    return REPLAY_PREFIX + device_topic[len(DEVICE_PREFIX) :]


def unreplayed(topic: str) -> str:
    """The device topic a replayed message was first sent on (`replay_of` undone); others unchanged."""
    if topic.startswith(REPLAY_PREFIX):
        return DEVICE_PREFIX + topic[len(REPLAY_PREFIX) :]
    return topic
