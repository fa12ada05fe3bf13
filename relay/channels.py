"""Delivery channels: webhook (signed HTTP POST), MQTT (the org topic) and e-mail (SMTP).

Each `send` returns an `Outcome` and never raises: library errors (httpx, paho, smtplib) and
anything else one delivery can throw become a failed outcome with a short error, so one bad row
costs one attempt and nothing else. A `Channels` object holds the long-lived clients of one relay
worker thread, including the event loop its webhook requests run on: asyncio is what bounds a whole
attempt (resolve, connect, send, read) by one deadline, however slowly the other side trickles.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import smtplib
import ssl
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, cast

import httpx
import paho.mqtt.client as mqtt

from pulsewire.errors import BrokerError
from pulsewire.mqtt import ConnectOptions, paho_client, paho_connect
from pulsewire.settings import MqttTarget
from relay import egress, mail
from relay.signing import HEADER, IDEMPOTENCY_HEADER, sign
from schemas import topics

log = logging.getLogger("pulsewire.relay")
# At most this much of an answer is read; the rest is never downloaded.
ANSWER_MAX_BYTES = 64 * 1024
ERROR_MAX_CHARS = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def clean_text(text: str, limit: int = ERROR_MAX_CHARS) -> str:
    """`text` on one line (runs of control characters become one space), cut to `limit` characters."""
    flat = _CONTROL.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "\u2026"


def describe(exc: BaseException) -> str:
    """A short, one-line error text for the delivery ledger."""
    detail = str(exc)
    return clean_text(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)


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
    """The clients of one worker thread: HTTP, an MQTT connection (lazily), an SMTP target."""

    def __init__(
        self,
        mqtt_target: MqttTarget | None,
        smtp_url: str | None,
        smtp_from: str,
        *,
        timeout_s: float = 10.0,
        client_id: str = "pulsewire-relay",
        egress_policy: egress.EgressPolicy | None = None,
        verify: ssl.SSLContext | bool = True,
        smtp_policy: mail.SmtpPolicy | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        # No keep-alive: every attempt connects to the address it has just checked, and a connection
        # made for one host name is never reused for another name on the same address.
        self._http = httpx.AsyncClient(
            timeout=timeout_s,
            follow_redirects=False,
            trust_env=False,
            verify=verify,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        self._egress = egress_policy or egress.EgressPolicy.from_env()
        self._mqtt_target = mqtt_target
        self._smtp_url = smtp_url
        self._smtp_from = smtp_from
        self._smtp_policy = smtp_policy or mail.SmtpPolicy.from_env()
        self._timeout_s = timeout_s
        self._client_id = client_id
        self._mqtt: mqtt.Client | None = None
        self._mqtt_lock = threading.Lock()

    def send(self, d: Delivery) -> Outcome:
        """Deliver one row on its channel; any failure is a failed outcome, never an exception."""
        try:
            if d.channel == "webhook":
                return self._webhook(d)
            if d.channel == "mqtt":
                return self._publish(d)
            return self._email(d)
        except Exception as exc:
            log.warning("delivery %s (%s) failed: %s", d.delivery_id, d.channel, describe(exc))
            return Outcome(False, None, describe(exc))

    def close(self) -> None:
        """Close every client."""
        self._loop.run_until_complete(self._http.aclose())
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()
        with self._mqtt_lock:
            if self._mqtt is not None:
                self._mqtt.disconnect()
                self._mqtt.loop_stop()
                self._mqtt = None

    def _webhook(self, d: Delivery) -> Outcome:
        if d.url is None or d.secret is None:
            return Outcome(False, None, "webhook deleted or disabled", permanent=True)
        try:
            return self._loop.run_until_complete(self._post_within_deadline(d.url, d.secret, d))
        except TimeoutError:
            return Outcome(False, None, f"no complete answer within {self._timeout_s:g} s")
        except egress.EgressRefused as exc:
            return Outcome(False, None, clean_text(f"destination refused: url {exc}"))
        except httpx.HTTPError as exc:
            return Outcome(False, None, describe(exc))

    async def _post_within_deadline(self, url: str, secret: str, d: Delivery) -> Outcome:
        async with asyncio.timeout(self._timeout_s):
            target = await egress.pin(url, self._egress)
            body = d.body.encode()
            headers = {
                "Host": target.host_header,
                "Content-Type": "application/json",
                HEADER: sign(secret, body),
                IDEMPOTENCY_HEADER: str(d.delivery_id),
                "User-Agent": "pulsewire-relay/1",
            }
            request = self._http.build_request(
                "POST", target.url, content=body, headers=headers, extensions=target.extensions
            )
            response = await self._http.send(request, stream=True)
            try:
                answer = await _read_prefix(response, ANSWER_MAX_BYTES)
            finally:
                await response.aclose()
        return _judge(response.status_code, answer)

    def _connect_mqtt(self) -> mqtt.Client:
        target = self._mqtt_target
        assert target is not None
        client_id = f"{self._client_id}-{time.monotonic_ns()}"
        options = ConnectOptions.from_target(target, client_id, keepalive_s=30)
        client = paho_client(options)
        paho_connect(client, options)
        client.loop_start()
        return client

    def _publish(self, d: Delivery) -> Outcome:
        if self._mqtt_target is None:
            return Outcome(False, None, "no MQTT broker configured", permanent=True)
        error: str
        try:
            with self._mqtt_lock:
                if self._mqtt is None:
                    self._mqtt = self._connect_mqtt()
                client = self._mqtt
            info = client.publish(topics.org_alerts(d.org_id), d.body.encode(), qos=1)
            info.wait_for_publish(self._timeout_s)
            if info.is_published():
                return Outcome(True)
            error = f"not acknowledged by the broker (rc={info.rc})"
        except BrokerError as exc:  # the ledger names the failure, not the broker's address
            error = describe(exc.__cause__ or exc)
        except (OSError, ValueError, RuntimeError) as exc:
            error = describe(exc)
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
        message = _email_message(d, self._smtp_from)
        try:
            mail.send(self._smtp_url, self._smtp_policy, message, timeout_s=self._timeout_s)
        except mail.SmtpRefused as exc:
            return Outcome(False, None, clean_text(f"refused: {exc}"))
        except (OSError, smtplib.SMTPException) as exc:
            return Outcome(False, None, describe(exc))
        return Outcome(True)


async def _read_prefix(response: httpx.Response, limit: int) -> bytes:
    # Stop reading at `limit`: an endless body costs a bounded read, then the connection closes.
    prefix = bytearray()
    raw = cast(AsyncGenerator[bytes, None], response.aiter_raw())
    async with contextlib.aclosing(raw) as chunks:
        async for chunk in chunks:
            prefix += chunk[: limit - len(prefix)]
            if len(prefix) >= limit:
                break
    return bytes(prefix)


def _judge(code: int, answer: bytes) -> Outcome:
    if 200 <= code < 300:
        return Outcome(True, code)
    text = clean_text(answer.decode("utf-8", "replace"), 200)
    if 300 <= code < 400:
        return Outcome(False, code, f"HTTP {code}: redirects are not followed")
    permanent = 400 <= code < 500 and code not in (408, 409, 425, 429)
    return Outcome(False, code, clean_text(f"HTTP {code}: {text}"), permanent)


def _email_message(d: Delivery, sender: str) -> EmailMessage:
    data: dict[str, Any] = json.loads(d.body)
    alert = data["alert"]
    device = alert.get("device", {})
    late = " (late)" if alert.get("late") else ""
    msg = EmailMessage()
    # Names come from rules and devices that tenants write: a CR or LF would start a new header.
    msg["Subject"] = clean_text(
        f"[Pulsewire {str(alert['severity']).upper()}] {alert['rule_name']}{late} "
        f"- {device.get('serial', '')} ({d.event})",
        250,
    )
    msg["From"] = sender
    msg["To"] = ", ".join(d.recipients)
    msg["Message-ID"] = f"<delivery-{d.delivery_id}@pulsewire>"
    msg.set_content(json.dumps(data, indent=2, sort_keys=True))
    return msg
