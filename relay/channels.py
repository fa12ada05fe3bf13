"""Delivery channels: webhook (signed HTTP POST), MQTT (the org topic) and e-mail (SMTP).

Each `send` returns an `Outcome`; library errors (httpx, paho, smtplib) become outcomes here and
go no further. A `Channels` object holds the long-lived clients of one relay worker.
"""

from __future__ import annotations

import json
import smtplib
import ssl
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from pulsewire.settings import MqttTarget
from relay.signing import HEADER, IDEMPOTENCY_HEADER, sign

MQTT_TOPIC = "pw/v1/org/{org_id}/alerts"


@dataclass(frozen=True)
class Outcome:
    """The result of one delivery attempt."""

    ok: bool
    status_code: int | None = None
    error: str | None = None
    # A permanent failure (a 4xx other than 408/429) is not retried.
    permanent: bool = False


@dataclass(frozen=True)
class Delivery:
    """One outbox row to send."""

    delivery_id: int
    channel: str
    org_id: int
    body: str
    event: str
    url: str | None = None
    secret: str | None = None
    recipients: tuple[str, ...] = ()


class Channels:
    """The clients of one worker: an HTTP client, an MQTT connection (lazily), an SMTP target."""

    def __init__(
        self,
        mqtt_target: MqttTarget | None,
        smtp_url: str | None,
        smtp_from: str,
        timeout_s: float = 10.0,
        client_id: str = "pulsewire-relay",
    ) -> None:
        self._http = httpx.Client(timeout=timeout_s, follow_redirects=False)
        self._mqtt_target = mqtt_target
        self._smtp_url = smtp_url
        self._smtp_from = smtp_from
        self._timeout_s = timeout_s
        self._client_id = client_id
        self._mqtt: mqtt.Client | None = None
        self._mqtt_lock = threading.Lock()

    def send(self, d: Delivery) -> Outcome:
        """Deliver one row on its channel."""
        if d.channel == "webhook":
            return self._webhook(d)
        if d.channel == "mqtt":
            return self._publish(d)
        return self._email(d)

    def close(self) -> None:
        """Close every client."""
        self._http.close()
        with self._mqtt_lock:
            if self._mqtt is not None:
                self._mqtt.disconnect()
                self._mqtt.loop_stop()
                self._mqtt = None

    def _webhook(self, d: Delivery) -> Outcome:
        assert d.url is not None and d.secret is not None
        body = d.body.encode()
        headers = {
            "Content-Type": "application/json",
            HEADER: sign(d.secret, body),
            IDEMPOTENCY_HEADER: str(d.delivery_id),
            "User-Agent": "pulsewire-relay/1",
        }
        try:
            response = self._http.post(d.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return Outcome(False, None, f"{type(exc).__name__}: {exc}")
        if 200 <= response.status_code < 300:
            return Outcome(True, response.status_code)
        code = response.status_code
        permanent = 400 <= code < 500 and code not in (408, 409, 425, 429)
        return Outcome(False, code, f"HTTP {code}: {response.text[:200]}", permanent)

    def _connect_mqtt(self) -> mqtt.Client:
        target = self._mqtt_target
        assert target is not None
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{self._client_id}-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5,
        )
        if target.username:
            client.username_pw_set(target.username, target.password)
        if target.tls:
            client.tls_set_context(ssl.create_default_context())
        client.connect(target.host, target.port, keepalive=30)
        client.loop_start()
        return client

    def _publish(self, d: Delivery) -> Outcome:
        if self._mqtt_target is None:
            return Outcome(False, None, "no MQTT broker configured", permanent=True)
        try:
            with self._mqtt_lock:
                if self._mqtt is None:
                    self._mqtt = self._connect_mqtt()
                client = self._mqtt
            info = client.publish(MQTT_TOPIC.format(org_id=d.org_id), d.body.encode(), qos=1)
            info.wait_for_publish(self._timeout_s)
            if info.is_published():
                return Outcome(True)
            error = f"not acknowledged by the broker (rc={info.rc})"
        except (OSError, ValueError, RuntimeError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        self._drop_mqtt()
        return Outcome(False, None, error)

    def _drop_mqtt(self) -> None:
        # A failed publish reconnects on the next attempt: paho's own retry would hide the error.
        with self._mqtt_lock:
            if self._mqtt is not None:
                self._mqtt.loop_stop()
                self._mqtt.disconnect()
                self._mqtt = None

    def _email(self, d: Delivery) -> Outcome:
        if not self._smtp_url or not d.recipients:
            return Outcome(False, None, "no SMTP server or no recipients", permanent=True)
        parts = urlsplit(self._smtp_url)
        message = _email_message(d, self._smtp_from)
        try:
            with smtplib.SMTP(
                parts.hostname or "localhost", parts.port or 25, timeout=self._timeout_s
            ) as smtp:
                if parts.username:
                    smtp.login(parts.username, parts.password or "")
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            return Outcome(False, None, f"{type(exc).__name__}: {exc}")
        return Outcome(True)


def _email_message(d: Delivery, sender: str) -> EmailMessage:
    data: dict[str, Any] = json.loads(d.body)
    alert = data["alert"]
    device = alert.get("device", {})
    late = " (late)" if alert.get("late") else ""
    msg = EmailMessage()
    msg["Subject"] = (
        f"[Pulsewire {alert['severity'].upper()}] {alert['rule_name']}{late} "
        f"- {device.get('serial', '')} ({d.event})"
    )
    msg["From"] = sender
    msg["To"] = ", ".join(d.recipients)
    msg["Message-ID"] = f"<delivery-{d.delivery_id}@pulsewire>"
    msg.set_content(json.dumps(data, indent=2, sort_keys=True))
    return msg
