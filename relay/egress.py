"""Where webhooks may send: https URLs whose host resolves only to global addresses.

`check_url` is the syntax check of a webhook URL; `check_destination` adds the address check, run
when a webhook is created or changed; `pin` runs both again before every attempt and returns the
address to connect to. The request then goes to that address itself (with the original Host
header, TLS SNI and certificate check), so a DNS answer that changes between check and connect
(rebinding) cannot turn a delivery towards loopback, a private network or a metadata service.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from pulsewire.errors import InvalidInput
from pulsewire.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# getaddrinfo cannot be cancelled: lookups run here, so a slow resolver costs a waiting caller
# its deadline but never one of the delivery threads.
_RESOLVER = ThreadPoolExecutor(max_workers=16, thread_name_prefix="pulsewire-dns")


class EgressRefused(InvalidInput):
    """A webhook URL or destination the policy refuses; the message says why."""


@dataclass(frozen=True)
class EgressPolicy:
    """What webhook destinations are allowed. `allow_private` is for local development only."""

    allow_private: bool = False
    url_max_chars: int = 2000
    resolve_timeout_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> EgressPolicy:
        """The policy of `settings` (`PULSEWIRE_WEBHOOK_ALLOW_PRIVATE`)."""
        return cls(allow_private=settings.webhook_allow_private)

    @classmethod
    def from_env(cls) -> EgressPolicy:
        """The policy of the process environment, for callers that were given none."""
        return cls.from_settings(Settings())


@dataclass(frozen=True)
class Target:
    """Where one attempt connects: `url` names the checked address; the rest keeps the host name."""

    url: httpx.URL
    host_header: str
    extensions: dict[str, Any]


def check_url(url: str, policy: EgressPolicy) -> httpx.URL:
    """The parsed URL, or `EgressRefused` saying what is wrong with it."""
    if len(url) > policy.url_max_chars:
        raise EgressRefused(f"is longer than {policy.url_max_chars} characters")
    try:
        parsed = httpx.URL(url)
        host = parsed.host  # decodes IDNA: `xn--zz` fails here
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        raise EgressRefused(f"is not a valid URL ({exc})") from exc
    schemes = ("https", "http") if policy.allow_private else ("https",)
    if parsed.scheme not in schemes:
        raise EgressRefused(f"must be an {' or '.join(schemes)} URL, got {parsed.scheme or 'none'!r}")
    if parsed.userinfo:
        raise EgressRefused("must not carry a user name or password")
    if parsed.fragment:
        raise EgressRefused("must not have a #fragment")
    if not host:
        raise EgressRefused("has no host")
    if _literal(host) is None and not _valid_name(parsed.raw_host):
        raise EgressRefused(f"has an invalid host name {host!r}")
    return parsed


def _valid_name(raw_host: bytes) -> bool:
    try:
        name = raw_host.decode("ascii").lower().removesuffix(".")
    except UnicodeDecodeError:
        return False
    labels = name.split(".")
    # A name of digits only would be read by the resolver as an IPv4 number (`2130706433`).
    return 0 < len(name) <= 253 and all(map(_LABEL.match, labels)) and not labels[-1].isdigit()


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def refusal(address: IPAddress) -> str | None:
    """Why `address` is not a public destination, or None when it is one."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return refusal(embedded)
    for flag in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(address, f"is_{flag}"):
            return f"{address} is a {flag.replace('_', '-')} address"
    if not address.is_global:
        return f"{address} is not a global address"
    return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    # IPv6 forms that carry an IPv4 address a gateway would connect to.
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def _lookup(host: str, port: int) -> list[IPAddress]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # The scope of a link-local IPv6 answer (`fe80::1%eth0`) is no part of the address.
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


def _allowed(host: str, addresses: list[IPAddress], policy: EgressPolicy) -> list[IPAddress]:
    if not addresses:
        raise EgressRefused(f"host {host!r} has no address")
    if not policy.allow_private:
        for address in addresses:
            reason = refusal(address)
            if reason is not None:
                raise EgressRefused(f"host {host!r} resolves to {reason}")
    return addresses


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def check_destination(url: str, policy: EgressPolicy) -> httpx.URL:
    """`check_url`, then the addresses of a literal host or of a name that resolves now.

    A name that does not resolve yet is accepted: every attempt checks it again (`pin`).
    """
    parsed = check_url(url, policy)
    literal = _literal(parsed.host)
    if literal is not None:
        _allowed(parsed.host, [literal], policy)
        return parsed
    future = _RESOLVER.submit(_lookup, parsed.host, _port(parsed))
    try:
        addresses = future.result(timeout=policy.resolve_timeout_s)
    except (OSError, UnicodeError, TimeoutError):
        return parsed
    _allowed(parsed.host, addresses, policy)
    return parsed


async def pin(url: str, policy: EgressPolicy) -> Target:
    """Check `url` and resolve its host once; the target connects to the first allowed address."""
    parsed = check_url(url, policy)
    address = _literal(parsed.host)
    extensions: dict[str, Any]
    if address is None:
        lookup = _RESOLVER.submit(_lookup, parsed.host, _port(parsed))
        try:
            addresses = await asyncio.wrap_future(lookup)
        except (OSError, UnicodeError) as exc:
            raise EgressRefused(f"host {parsed.host!r} does not resolve ({exc})") from exc
        address = _allowed(parsed.host, addresses, policy)[0]
        name = parsed.raw_host.decode("ascii")
        extensions = {"sni_hostname": name} if parsed.scheme == "https" else {}
    else:
        _allowed(parsed.host, [address], policy)
        extensions = {}
    return Target(parsed.copy_with(host=str(address)), parsed.netloc.decode("ascii"), extensions)
