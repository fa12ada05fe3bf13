"""Commands round-trip through a real broker and a tiny device responder; messages and appointments."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pulsewire.registry import DeviceCredentials
from pulsewire.stack import StackInfo
from schemas import topics
from tests.fix_api import Users, assert_error
from tests.fix_db import World


class Responder:
    """A device that answers commands: an interim `acknowledged`, then ok (or error for clear_dtc)."""

    def __init__(self, info: StackInfo, creds: DeviceCredentials) -> None:
        self.device_id = creds.device_id
        self.received: list[dict[str, Any]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"dev-{creds.device_id}", protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(creds.mqtt_username, creds.mqtt_password)
        self.client.on_connect = lambda c, *_: c.subscribe(topics.command(self.device_id), qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.tls_set(ca_certs=str(info.ca_file))
        self.client.connect(info.mqtt_host, info.mqtt_port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        request = json.loads(msg.payload)
        self.received.append(
            {
                "request": request,
                "correlation": msg.properties.CorrelationData,
                "response_topic": msg.properties.ResponseTopic,
            }
        )
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = msg.properties.CorrelationData
        base = {"schema": "pulsewire.command_reply/1", "command_id": request["command_id"]}
        client.publish(
            msg.properties.ResponseTopic,
            json.dumps({**base, "status": "ok", "data": {"state": "acknowledged"}}),
            qos=1,
            properties=props,
        )
        final = (
            {"status": "error", "detail": "no DTC stored"}
            if request["name"] == "clear_dtc"
            else {"status": "ok", "data": {"uptime_s": 42}}
        )
        client.publish(msg.properties.ResponseTopic, json.dumps({**base, **final}), qos=1, properties=props)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture(scope="module")
def responders(world: World, users: Users, stack_info: StackInfo) -> Iterator[dict[str, Responder]]:
    made = {"veh-r": Responder(stack_info, world.add_device("veh-r", "vehicle"))}
    assert made["veh-r"].subscribed.wait(10)
    yield made
    for r in made.values():
        r.close()


def _wait_status(
    c: httpx.Client, device_id: str, command_id: str, until: set[str], timeout_s: float = 8
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        command = c.get(f"/api/v1/devices/{device_id}/commands/{command_id}").json()
        if command["status"] in until or time.monotonic() > deadline:
            return dict(command)
        time.sleep(0.05)


def test_command_round_trip_with_a_device(
    clients: dict[str, httpx.Client], responders: dict[str, Responder]
) -> None:
    sent = clients["provider2"].post("/api/v1/devices/veh-r/commands", json={"name": "ping", "args": {}})
    assert sent.status_code == 202, sent.text
    command = sent.json()
    assert command["status"] in ("sent", "acknowledged", "done")
    done = _wait_status(clients["provider2"], "veh-r", command["command_id"], {"done", "failed", "timed_out"})
    assert done["status"] == "done" and done["result"] == {"uptime_s": 42}
    assert done["acked_at"] is not None and done["finished_at"] is not None
    request = responders["veh-r"].received[-1]
    assert request["request"]["command_id"] == command["command_id"]
    assert request["correlation"] == command["command_id"].encode()
    assert request["response_topic"] == "pw/v1/dev/veh-r/cmd/reply"
    listed = clients["provider2"].get("/api/v1/devices/veh-r/commands").json()["items"]
    assert listed[0]["command_id"] == command["command_id"]


def test_command_error_reply_is_failed(
    clients: dict[str, httpx.Client], responders: dict[str, Responder]
) -> None:
    command = clients["admin"].post("/api/v1/devices/veh-r/commands", json={"name": "clear_dtc"}).json()
    failed = _wait_status(clients["admin"], "veh-r", command["command_id"], {"done", "failed", "timed_out"})
    assert failed["status"] == "failed" and failed["detail"] == "no DTC stored"


def test_command_without_reply_times_out(clients: dict[str, httpx.Client], world: World) -> None:
    world.add_device("icd-silent", "implant")
    command = clients["provider"].post("/api/v1/devices/icd-silent/commands", json={"name": "ping"}).json()
    assert command["status"] == "sent"
    timed_out = _wait_status(clients["provider"], "icd-silent", command["command_id"], {"timed_out"}, 10)
    assert timed_out["status"] == "timed_out" and "no reply" in timed_out["detail"]


def test_command_rules(clients: dict[str, httpx.Client]) -> None:
    for who in ("vendor", "owner"):
        assert_error(clients[who].post("/api/v1/devices/icd-a/commands", json={"name": "ping"}), 403)
    assert_error(
        clients["provider"].post("/api/v1/devices/icd-a/commands", json={"name": "clear_dtc"}),
        422,
        "invalid_command",
    )
    assert_error(
        clients["provider"].post("/api/v1/devices/icd-a/commands", json={"name": "self_destruct"}), 422
    )


# --- messages -----------------------------------------------------------------------------------------


def test_provider_messages_owner(clients: dict[str, httpx.Client], users: Users) -> None:
    sent = clients["provider"].post(
        "/api/v1/devices/icd-a/messages", json={"subject": "Your transmission", "body": "All looks fine."}
    )
    assert sent.status_code == 201, sent.text
    assert sent.json()["sender_name"] == "Provider" and sent.json()["owner_id"] is not None
    mine = clients["owner"].get("/api/v1/devices/icd-a/messages").json()["items"]
    assert [m["body"] for m in mine][:1] == ["All looks fine."]
    assert_error(clients["owner2"].get("/api/v1/devices/icd-a/messages"), 404)
    assert_error(clients["vendor"].get("/api/v1/devices/icd-a/messages"), 403)
    assert_error(clients["owner"].post("/api/v1/devices/icd-a/messages", json={"body": "hi"}), 403)
    assert_error(clients["vendor"].post("/api/v1/devices/icd-a/messages", json={"body": "hi"}), 403)
    assert_error(clients["provider"].post("/api/v1/devices/icd-a/messages", json={"body": ""}), 422)


# --- appointments -------------------------------------------------------------------------------------


def _future(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


def test_appointment_request_propose_accept(clients: dict[str, httpx.Client]) -> None:
    owner, provider = clients["owner"], clients["provider"]
    created = owner.post(
        "/api/v1/devices/icd-a/appointments", json={"requested_for": _future(3), "reason": "dizzy"}
    )
    assert created.status_code == 201, created.text
    appt = created.json()
    assert appt["status"] == "requested"
    url = f"/api/v1/devices/icd-a/appointments/{appt['appointment_id']}"
    assert appt["appointment_id"] in [
        a["appointment_id"] for a in provider.get("/api/v1/devices/icd-a/appointments").json()["items"]
    ]
    assert_error(provider.patch(url, json={"status": "proposed"}), 422, "missing_time")
    proposed = provider.patch(
        url, json={"status": "proposed", "proposed_for": _future(4), "note": "Thursday?"}
    )
    assert proposed.status_code == 200 and proposed.json()["status"] == "proposed"
    assert owner.get("/api/v1/devices/icd-a/appointments").json()["items"][0]["note"] == "Thursday?"
    assert_error(owner.patch(url, json={"status": "declined"}), 403)
    accepted = owner.patch(url, json={"status": "confirmed"})
    assert accepted.status_code == 200 and accepted.json()["status"] == "confirmed"
    assert_error(owner.patch(url, json={"status": "confirmed"}), 409, "invalid_transition")
    assert owner.patch(url, json={"status": "cancelled"}).json()["status"] == "cancelled"
    assert_error(provider.patch(url, json={"status": "confirmed"}), 409)


def test_appointment_roles_and_tenancy(clients: dict[str, httpx.Client]) -> None:
    body = {"requested_for": _future(2)}
    for who in ("provider", "vendor", "admin"):
        assert_error(clients[who].post("/api/v1/devices/icd-a/appointments", json=body), 403)
    assert_error(clients["owner2"].post("/api/v1/devices/icd-a/appointments", json=body), 404)
    assert_error(
        clients["owner"].post(
            "/api/v1/devices/icd-a/appointments", json={"requested_for": "2020-01-01T00:00:00Z"}
        ),
        422,
        "invalid_time",
    )
    appt = clients["owner"].post("/api/v1/devices/icd-a/appointments", json=body).json()
    url = f"/api/v1/devices/icd-a/appointments/{appt['appointment_id']}"
    assert_error(clients["vendor"].patch(url, json={"status": "confirmed"}), 403)
    assert_error(clients["provider2"].patch(url, json={"status": "confirmed"}), 404)
    assert_error(
        clients["provider"].patch("/api/v1/devices/icd-a/appointments/999999", json={"status": "confirmed"}),
        404,
    )
    assert clients["provider"].patch(url, json={"status": "confirmed"}).json()["status"] == "confirmed"
