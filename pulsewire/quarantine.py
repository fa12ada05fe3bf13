"""The quarantine: list what ingest set aside, and replay it once the cause is gone.

A replay republishes each row's payload, through the broker, as the service login, on
`pw/v1/replay/{device_id}/{kind}` (the ACL lets no device publish there): ingest takes it through the
same validation and write as a live message, deduplicated by `ingest_log`, and does not charge it to
the device's budget. A row is marked `replayed_at` once the broker has acknowledged its message to at
least one ingest subscriber, so a second replay does nothing; if it fails validation again, ingest
quarantines it again as a new row. A message the broker delivers again while its row waits is one
row with `copies` counting the deliveries (`last_received_at` the latest). A row that kept only a
prefix of its payload (`payload_size` larger than what is stored) cannot be replayed, nor can one
whose topic is not a device's.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from pulsewire.errors import BrokerError
from pulsewire.mqtt import ConnectOptions, paho_client, paho_connect
from pulsewire.settings import MqttTarget
from schemas.topics import replay_of

Conn = psycopg.Connection[dict[str, Any]]
REPLAY_MAX_ROWS = 10_000  # rows one replay call takes; run it again for more
_NO_MATCHING_SUBSCRIBERS = 16  # MQTT 5 PUBACK: the broker had nobody to give it to
_ACK_TIMEOUT_S = 30.0
_LIST_COLUMNS = """quarantine_id, received_at, last_received_at, copies, topic, device_id, reason,
    detail, payload_size, encode(payload_sha256, 'hex') AS payload_sha256,
    octet_length(payload) < payload_size AS truncated, replayed_at"""


@dataclass
class ReplayReport:
    """What one replay did."""

    replayed: list[int] = field(default_factory=list)  # quarantine ids handed to ingest
    truncated: list[int] = field(default_factory=list)  # only a prefix kept: not replayable
    not_device_topic: list[int] = field(default_factory=list)
    no_subscriber: list[int] = field(default_factory=list)  # no ingest worker subscribed: left pending

    def to_json(self) -> dict[str, Any]:
        """Counts and ids, for `--json` and the API."""
        return {name: {"count": len(ids), "ids": ids} for name, ids in vars(self).items()}


def list_quarantine(
    conn: Conn,
    *,
    reason: str | None = None,
    device_id: str | None = None,
    pending_only: bool = False,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Quarantined messages, newest first, without their payloads."""
    return conn.execute(
        f"""SELECT {_LIST_COLUMNS} FROM quarantine
            WHERE (%(reason)s::text IS NULL OR reason = %(reason)s)
              AND (%(device)s::text IS NULL OR device_id = %(device)s)
              AND (NOT %(pending)s OR replayed_at IS NULL)
            ORDER BY quarantine_id DESC LIMIT %(limit)s OFFSET %(offset)s""".encode(),
        {"reason": reason, "device": device_id, "pending": pending_only, "limit": limit, "offset": offset},
    ).fetchall()


def replay_quarantine(
    conn: Conn, target: MqttTarget, *, reason: str | None = None, device_id: str | None = None
) -> ReplayReport:
    """Republish the rows not replayed yet (filtered by reason and device) for ingest; see the module doc."""
    report = ReplayReport()
    with conn.transaction():
        # Locked while publishing: two replays at once never hand ingest the same row twice.
        rows = conn.execute(
            """SELECT quarantine_id, topic, payload, payload_size FROM quarantine
               WHERE replayed_at IS NULL AND (%(reason)s::text IS NULL OR reason = %(reason)s)
                 AND (%(device)s::text IS NULL OR device_id = %(device)s)
               ORDER BY quarantine_id LIMIT %(limit)s FOR UPDATE SKIP LOCKED""",
            {"reason": reason, "device": device_id, "limit": REPLAY_MAX_ROWS},
        ).fetchall()
        todo: list[tuple[int, str, bytes]] = []
        for row in rows:
            qid, topic, payload = int(row["quarantine_id"]), str(row["topic"]), bytes(row["payload"])
            replay_topic = replay_of(topic)
            if replay_topic is None:
                report.not_device_topic.append(qid)
            elif len(payload) < int(row["payload_size"]):
                report.truncated.append(qid)
            else:
                todo.append((qid, replay_topic, payload))
        codes = publish_acknowledged(target, [(topic, payload) for _, topic, payload in todo]) if todo else []
        for (qid, _, _), code in zip(todo, codes, strict=True):
            (report.no_subscriber if code == _NO_MATCHING_SUBSCRIBERS else report.replayed).append(qid)
        conn.execute(
            "UPDATE quarantine SET replayed_at = now() WHERE quarantine_id = ANY(%s)", (report.replayed,)
        )
    return report


def publish_acknowledged(target: MqttTarget, messages: Sequence[tuple[str, bytes]]) -> list[int]:
    """Publish at QoS 1 as the service login; the PUBACK reason code of each, in order.

    Raises BrokerError when the broker cannot be reached, or refuses or does not acknowledge one.
    """
    done = threading.Event()
    codes: dict[int, int] = {}

    def on_publish(
        client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Properties | None
    ) -> None:
        codes[mid] = reason.value
        if len(codes) == len(messages):
            done.set()

    options = ConnectOptions.from_target(target, f"pulsewire-replay-{secrets.token_hex(4)}", keepalive_s=30)
    client = paho_client(options)
    client.on_publish = on_publish
    client.max_inflight_messages_set(1_000)
    client.max_queued_messages_set(0)
    paho_connect(client, options)
    client.loop_start()
    try:
        mids = [client.publish(topic, payload, qos=1).mid for topic, payload in messages]
        deadline = time.monotonic() + _ACK_TIMEOUT_S
        while not done.wait(0.05):
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the broker acknowledged {len(codes)} of {len(messages)} replayed message(s)"
                )
    finally:
        client.disconnect()
        client.loop_stop()
    refused = {codes[m] for m in mids if codes[m] >= 0x80}
    if refused:
        raise BrokerError(f"the broker refused replayed messages (reason codes {sorted(refused)})")
    return [codes[m] for m in mids]
