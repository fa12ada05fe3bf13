"""What the benchmarks' publishers share: a paho client on the broker, and a paced loop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from pulsewire import mqtt
from pulsewire.settings import MqttTarget


def client(target: MqttTarget, client_id: str, login: tuple[str, str] | None = None) -> Any:
    """A started MQTT 5 paho client on `target` (TLS as it says), as `login` or the target's own."""
    options = mqtt.ConnectOptions.from_target(target, client_id)
    if login is not None:
        options = options.login(*login)
    made = mqtt.paho_client(options)
    made.max_inflight_messages_set(1000)
    mqtt.paho_connect(made, options)
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
