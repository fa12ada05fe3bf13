"""What the benchmarks' publishers share: a paho client on the broker, and a paced loop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from pulsewire.settings import MqttTarget


def client(
    target: MqttTarget, client_id: str, username: str | None = None, password: str | None = None
) -> Any:
    """A started MQTT 5 paho client, logged in as `username` (the target's login by default)."""
    made = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    made.username_pw_set(username or target.username, password or target.password)
    made.max_inflight_messages_set(1000)
    made.connect(target.host, target.port)
    made.loop_start()
    return made


def paced(rate_per_s: float, stop: Any) -> Iterator[int]:
    """0, 1, 2, ... at `rate_per_s` a second until `stop` (an Event) is set."""
    seq, start = 0, time.perf_counter()
    while rate_per_s > 0 and not stop.is_set():
        yield seq
        seq += 1
        delay = start + seq / rate_per_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
