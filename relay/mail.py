"""Sending one e-mail over SMTP with TLS: `smtps://` (TLS from the first byte) or `smtp://` with
STARTTLS required. Plain SMTP goes only to a loopback relay, and only when the policy allows it
(`PULSEWIRE_SMTP_ALLOW_PLAIN_LOOPBACK`): a local relay such as Postfix on the same machine, whose
traffic never leaves it. Anything else is refused with an `SmtpRefused` that says why.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pulsewire.settings import Settings, is_loopback

PLAIN_SETTING = "PULSEWIRE_SMTP_ALLOW_PLAIN_LOOPBACK=1"


class SmtpRefused(Exception):
    """The message was not sent because the connection would not be protected as required."""


@dataclass(frozen=True)
class SmtpPolicy:
    """How e-mail may travel: over verified TLS, or in plain text to a loopback relay if allowed."""

    allow_plain_loopback: bool = False
    # A private CA that signed the relay's certificate; the system's trust store otherwise.
    ca_file: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpPolicy:
        """The policy of `settings` (`PULSEWIRE_SMTP_ALLOW_PLAIN_LOOPBACK`, `PULSEWIRE_SMTP_CA_FILE`)."""
        return cls(allow_plain_loopback=settings.smtp_allow_plain_loopback, ca_file=settings.smtp_ca_file)

    @classmethod
    def from_env(cls) -> SmtpPolicy:
        """The policy of the process environment, for callers that were given none."""
        return cls.from_settings(Settings())

    def tls_context(self) -> ssl.SSLContext:
        """A client context that verifies the relay's certificate and host name."""
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)


@dataclass(frozen=True)
class SmtpTarget:
    """Where to send, from `smtp://user:pass@host:port` or `smtps://...`."""

    host: str
    port: int
    implicit_tls: bool
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> SmtpTarget:
        """The target of `url`; SmtpRefused for another scheme or no host."""
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps"):
            raise SmtpRefused(
                f"the SMTP URL must start with smtps:// or smtp:// (STARTTLS), not {parts.scheme}://"
            )
        if not parts.hostname:
            raise SmtpRefused("the SMTP URL names no host")
        implicit = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if implicit else 25),
            implicit_tls=implicit,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


def send(url: str, policy: SmtpPolicy, message: EmailMessage, *, timeout_s: float) -> None:
    """Send `message` through the relay at `url`, protected as `policy` demands.

    Raises SmtpRefused when it cannot be, and OSError or SMTPException when sending fails.
    """
    target = SmtpTarget.parse(url)
    if target.implicit_tls:
        with smtplib.SMTP_SSL(
            target.host, target.port, timeout=timeout_s, context=policy.tls_context()
        ) as smtp:
            _login_and_send(smtp, target, message)
        return
    plain_allowed = policy.allow_plain_loopback and is_loopback(target.host)
    with smtplib.SMTP(target.host, target.port, timeout=timeout_s) as smtp:
        if not plain_allowed:
            smtp.ehlo()
            if not smtp.has_extn("starttls"):
                raise SmtpRefused(_no_starttls(target))
            smtp.starttls(context=policy.tls_context())
        _login_and_send(smtp, target, message)


def _login_and_send(smtp: smtplib.SMTP, target: SmtpTarget, message: EmailMessage) -> None:
    if target.username:
        smtp.login(target.username, target.password or "")
    smtp.send_message(message)


def _no_starttls(target: SmtpTarget) -> str:
    refused = f"the SMTP server {target.host}:{target.port} does not offer STARTTLS"
    if not is_loopback(target.host):
        return f"{refused}; plain SMTP is allowed only to a loopback relay"
    return f"{refused}; plain SMTP to a loopback relay needs {PLAIN_SETTING}"
