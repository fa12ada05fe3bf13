"""One settings object, built once in each entry point and passed down."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pulsewire.errors import ConfigError


def _half_the_cores() -> int:
    return max(1, (os.cpu_count() or 2) // 2)


class Settings(BaseSettings):
    """Runtime settings, read from `PULSEWIRE_*` environment variables.

    `database_url` and `mqtt_url` default to the local stack's (see `pulsewire stack up`),
    read from `<state_dir>/stack.json` when they are not set.
    """

    model_config = SettingsConfigDict(env_prefix="PULSEWIRE_", extra="ignore")

    database_url: str | None = None
    mqtt_url: str | None = None
    # where devices connect (the local stack's device listeners when unset), and the CA that signs
    # the broker's certificate (the local stack's CA when unset) plus an optional client certificate
    mqtt_device_url: str | None = None
    mqtt_mtls_url: str | None = None
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    state_dir: Path = Path(".pulsewire")
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    # ingest
    batch_max_rows: int = Field(default=20_000, ge=1)
    # PostgreSQL connections a worker writes with: batches are copied in parallel, claimed and
    # committed in order (ingest/order.py). 1 by default: a second one adds throughput at several
    # readings a message but a batch then also waits for the one before it to commit, which
    # lengthened red-alert latency (docs/benchmarks.md).
    ingest_writers: int = Field(default=1, ge=1, le=8)
    flush_interval_ms: int = Field(default=50, ge=1)
    queue_max_messages: int = Field(default=50_000, ge=100)
    max_future_skew_s: int = Field(default=300, ge=0)
    # ingest: each device's message budget (at most `device_burst_msgs` in any burst/rate seconds,
    # per ingest worker; the excess is quarantined as rate_limited; the burst holds a vehicle's
    # day-long store-and-forward backlog, 2,880 batches) and what quarantine keeps: a payload
    # prefix (with the full size and SHA-256), for `quarantine_retention_days`
    device_rate_msgs_per_s: float = Field(default=50.0, gt=0, le=1_000_000)
    device_burst_msgs: int = Field(default=5_000, ge=1, le=10_000_000)
    quarantine_payload_max_bytes: int = Field(default=4_096, ge=0, le=1_048_576)
    # a device's rate_limited messages whose payload quarantine keeps, a minute; the rest are counted
    # (a flood cannot fill the database, and nothing goes uncounted)
    quarantine_rate_limited_kept_per_min: int = Field(default=600, ge=0, le=1_000_000)
    quarantine_retention_days: int = Field(default=30, ge=1, le=3_650)
    # retention (days) of raw readings and events
    retention_days: int = Field(default=400, ge=1)
    # storage of readings and events, chosen at the first migration: TimescaleDB hypertables, native
    # day partitions, or `auto` (TimescaleDB when its extension can be created, else native)
    storage: Literal["auto", "timescale", "native"] = "auto"
    # relay
    # e-mail: `smtps://` (TLS from the start) or `smtp://` with STARTTLS required; plain SMTP only to
    # a loopback relay and only with `smtp_allow_plain_loopback`; `smtp_ca_file` trusts a private CA
    smtp_url: str | None = None
    smtp_from: str = "pulsewire@localhost"
    smtp_allow_plain_loopback: bool = False
    smtp_ca_file: Path | None = None
    escalate_after_s: int = Field(default=900, ge=1)
    # webhooks (delivery): https to global addresses only unless `webhook_allow_private` (local
    # development: http, loopback and private targets); one total deadline per attempt; a cap per org
    webhook_allow_private: bool = False
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=300)
    webhooks_per_org_max: int = Field(default=20, ge=1, le=10_000)
    # web: the dashboard serves HTTPS with `api_cert_file` and `api_key_file` (both or neither).
    # Cookies are Secure unless it is plain HTTP on loopback; `secure_cookies` overrides that.
    api_cert_file: Path | None = None
    api_key_file: Path | None = None
    session_secret: str | None = None
    secure_cookies: bool | None = None
    # dashboard limits (per dashboard process): live alert streams, readings queries, sign-in
    sse_streams_max: int = Field(default=500, ge=1, le=100_000)
    sse_streams_per_user_max: int = Field(default=5, ge=1, le=1_000)
    sse_recheck_interval_s: float = Field(default=2.0, ge=0.05, le=60)
    readings_buckets_max: int = Field(default=1_000, ge=1, le=1_000_000)
    readings_queries_per_user_max: int = Field(default=4, ge=1, le=1_000)
    api_statement_timeout_ms: int = Field(default=5_000, ge=100, le=3_600_000)
    login_failures_per_account_max: int = Field(default=10, ge=1, le=100_000)
    login_failures_per_address_max: int = Field(default=50, ge=1, le=100_000)
    login_window_s: int = Field(default=300, ge=1, le=86_400)
    # argon2 (64 MiB, 4 lanes) saturates a core per hash: by default at most half the cores hash
    # passwords at once, so a burst of sign-ins cannot starve ingest, rules and deliveries
    login_argon2_concurrency_max: int = Field(default_factory=_half_the_cores, ge=1, le=256)
    # commands and accounts: commands per device in a moving window, counted across every
    # dashboard process, so a stolen clinic login cannot drain an implant's battery
    command_limit_per_device: int = Field(default=6, ge=1, le=10_000)
    command_limit_window_s: int = Field(default=3_600, ge=1, le=7 * 86_400)

    def require_database_url(self) -> str:
        """The database URL, from the environment or the local stack."""
        url = self.database_url or self._stack_value("database_url")
        if not url:
            raise ConfigError("no database: set PULSEWIRE_DATABASE_URL or run `pulsewire stack up` first")
        return url

    def api_tls(self) -> tuple[Path, Path] | None:
        """The dashboard's certificate and key files, or None for plain HTTP."""
        cert, key = self.api_cert_file, self.api_key_file
        if cert is None and key is None:
            return None
        if cert is None or key is None:
            raise ConfigError("set both PULSEWIRE_API_CERT_FILE and PULSEWIRE_API_KEY_FILE, or neither")
        return cert, key

    def cookies_secure(self) -> bool:
        """Whether cookies carry `Secure`: always, unless the dashboard is plain HTTP on loopback."""
        if self.secure_cookies is not None:
            return self.secure_cookies
        return self.api_tls() is not None or not is_loopback(self.api_host)

    def require_mqtt_url(self) -> str:
        """The MQTT URL, from the environment or the local stack."""
        url = self.mqtt_url or self._stack_value("mqtt_url")
        if not url:
            raise ConfigError("no broker: set PULSEWIRE_MQTT_URL or run `pulsewire stack up` first")
        return url

    def mqtt(self) -> MqttTarget:
        """The broker address and service credentials, parsed, with where devices connect and the CA."""
        ca_file = self.mqtt_ca_file or _path(self._stack_value("ca_file"))
        device_url = self.mqtt_device_url or self._stack_value("mqtt_device_url")
        mtls_url = self.mqtt_mtls_url or self._stack_value("mqtts_url")
        return replace(
            MqttTarget.parse(self.require_mqtt_url()),
            ca_file=ca_file, cert_file=self.mqtt_cert_file, key_file=self.mqtt_key_file,
            devices=replace(MqttTarget.parse(device_url), ca_file=ca_file) if device_url else None,
            mtls=replace(MqttTarget.parse(mtls_url), ca_file=ca_file) if mtls_url else None,
        )  # fmt: skip

    def _stack_value(self, key: str) -> str | None:
        from pulsewire.stack import Stack

        if not (self.state_dir / "stack.json").exists():
            return None
        info = Stack(self.state_dir).status()
        value = info.to_json().get(key) if info else None
        return value if isinstance(value, str) else None


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1); names are not resolved."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class MqttTarget:
    """Where the broker is and who we are on it, from `mqtt://user:pass@host:port`."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool
    # the CA to check the broker with (None: the system's), and a client certificate (mutual TLS)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # where devices log in with a password, and with a certificate, when the settings know
    devices: MqttTarget | None = None
    mtls: MqttTarget | None = None

    @classmethod
    def parse(cls, url: str) -> MqttTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ConfigError(f"MQTT URL must start with mqtt:// or mqtts://, got {url!r}")
        if not parts.hostname:
            raise ConfigError(f"MQTT URL has no host: {url!r}")
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname,
            port=parts.port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
        )


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
