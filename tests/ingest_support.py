"""Helpers of the ingest tests: payload builders, a retrying QoS 1 publisher, polling."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from pulsewire.settings import MqttTarget
from schemas import topics
from tests.helpers import wait_for  # noqa: F401 (re-exported: the ingest tests import it from here)

ROOT = Path(__file__).resolve().parents[1]
Message = tuple[str, bytes]


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def telemetry(device_id: str, seq: int, readings: Sequence[tuple[str, float]], *, boot_id: str = "b1",
              ts: datetime | None = None) -> Message:  # fmt: skip
    """A telemetry message whose readings all carry `ts` (default: now)."""
    stamp = iso(ts or datetime.now(UTC))
    body = {
        "schema": "pulsewire.telemetry/1", "device_id": device_id, "boot_id": boot_id, "seq": seq,
        "sent_at": stamp, "readings": [{"ts": stamp, "metric": m, "value": v} for m, v in readings],
    }  # fmt: skip
    return topics.telemetry(device_id), json.dumps(body).encode()


def event(device_id: str, seq: int, type_: str, data: dict[str, Any] | None = None, *, boot_id: str = "b1",
          ts: datetime | None = None) -> Message:  # fmt: skip
    body = {
        "schema": "pulsewire.event/1", "device_id": device_id, "boot_id": boot_id, "seq": seq,
        "ts": iso(ts or datetime.now(UTC)), "type": type_, "data": data or {},
    }  # fmt: skip
    return topics.event(device_id), json.dumps(body).encode()


def status(device_id: str, state: str, ts: datetime) -> Message:
    body = {"schema": "pulsewire.status/1", "device_id": device_id, "state": state, "ts": iso(ts)}
    return topics.status(device_id), json.dumps(body).encode()


class Publisher:
    """A QoS 1 publisher that republishes whatever the broker has not acknowledged (broker restarts)."""

    def __init__(self, target: MqttTarget, username: str | None = None, password: str | None = None) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{secrets.token_hex(4)}",
                                  protocol=mqtt.MQTTv5)  # fmt: skip
        self.client.username_pw_set(username or target.username, password or target.password)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 2)
        self.client.connect(target.host, target.port, keepalive=10)
        self.client.loop_start()

    def publish_all(self, messages: Iterable[Message], timeout_s: float = 60.0) -> None:
        """Publish every message at QoS 1 and return once the broker acknowledged each."""
        pending = list(messages)
        deadline = time.monotonic() + timeout_s
        while pending:
            infos = [(m, self.client.publish(m[0], m[1], qos=1)) for m in pending]
            wait_until = min(deadline, time.monotonic() + 5.0)
            for _, info in infos:
                while not _acked(info) and time.monotonic() < wait_until and info.rc == 0:
                    time.sleep(0.002)
            pending = [m for m, info in infos if not _acked(info)]
            if pending:
                assert time.monotonic() < deadline, f"{len(pending)} message(s) never acknowledged"
                time.sleep(0.3)  # disconnected: wait for paho to reconnect, then republish

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _acked(info: mqtt.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except RuntimeError:  # paho says "not connected": not acknowledged, publish it again
        return False


def start_ingest_process(database_url: str, mqtt_url: str, state_dir: Path, *, client_id: str,
                         share_group: str, log_path: Path,
                         metrics_port: int = 0) -> subprocess.Popen[bytes]:  # fmt: skip
    """`.venv/bin/pulsewire ingest` as a child process, configured by environment like in production."""
    env = dict(os.environ, PULSEWIRE_DATABASE_URL=database_url, PULSEWIRE_MQTT_URL=mqtt_url,
               PULSEWIRE_STATE_DIR=str(state_dir), PULSEWIRE_FLUSH_INTERVAL_MS="20")  # fmt: skip
    exe = Path(sys.executable).parent / "pulsewire"
    return subprocess.Popen(
        [str(exe), "ingest", "--client-id", client_id, "--share-group", share_group,
         "--log-level", "WARNING", "--metrics-port", str(metrics_port)],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log_path.open("ab"),
    )  # fmt: skip
