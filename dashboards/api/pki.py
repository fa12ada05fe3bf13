"""Device certificates through the API (admins): issue one, sign a device's CSR, revoke.

The same operations as `pulsewire devices add --cert`, `devices cert --csr` and `devices
revoke-cert`, through `pulsewire.devicecerts`, on the local stack's CA. Without one the answer is
503 (a `ConfigError`); a CSR that is not one, or names another device, is 422.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from dashboards.api import API_PREFIX
from dashboards.deps import Conn, CurrentPrincipal
from dashboards.queries import audit, require_role, visible_device
from dashboards.types import AConn, Principal
from pulsewire import devicecerts
from pulsewire.errors import InvalidInput
from pulsewire.pki import load_certificate
from pulsewire.settings import Settings

router = APIRouter(prefix=API_PREFIX, tags=["certificates"])
_CSR_MAX = 16_384  # a PEM CSR of an RSA-4096 key is about 1.7 kB


class CertificateIssued(BaseModel):
    """A device certificate (CN = the device id), the CA to check the broker with, and the key when
    the server made it (shown once, never stored)."""

    device_id: str
    serial: str = Field(description="hex, as `openssl x509 -serial` prints it")
    not_after: str
    certificate_pem: str
    ca_pem: str
    key_pem: str | None = None


class CsrBody(BaseModel):
    """A PEM certificate signing request whose CN is the device id: the key stays on the device."""

    csr_pem: str = Field(max_length=_CSR_MAX)


class RevokeBody(BaseModel):
    """`keep_serial`: the rotated certificate (hex) to leave valid; every other one is revoked."""

    keep_serial: str | None = Field(default=None, pattern=r"^[0-9A-Fa-f]{1,40}$")


class RevocationPublic(BaseModel):
    """The serials revoked now (hex), and whether the local broker re-read the CRL already."""

    device_id: str
    serials: list[str]
    broker_reloaded: bool


async def _admin_device(conn: AConn, p: Principal, device_id: str, action: str) -> None:
    require_role(p, ("admin",), action)
    await visible_device(conn, p, device_id)  # NotFound for a device that is not registered


def _issued(settings: Settings, device_id: str, cert_pem: bytes, key_pem: bytes | None) -> CertificateIssued:
    cert = load_certificate(cert_pem)
    ca = devicecerts.certificate_authority(settings)
    return CertificateIssued(
        device_id=device_id, serial=f"{cert.serial_number:X}", not_after=cert.not_valid_after_utc.isoformat(),
        certificate_pem=cert_pem.decode(), ca_pem=ca.ca_pem.decode(),
        key_pem=key_pem.decode() if key_pem is not None else None,
    )  # fmt: skip


def _issue(settings: Settings, device_id: str) -> CertificateIssued:
    cert_pem, key_pem = devicecerts.certificate_authority(settings).issue_device_certificate(device_id)
    return _issued(settings, device_id, cert_pem, key_pem)


def _sign(settings: Settings, device_id: str, csr_pem: str) -> CertificateIssued:
    try:
        cert_pem = devicecerts.certificate_authority(settings).sign_csr(device_id, csr_pem.encode())
    except ValueError as exc:
        raise InvalidInput(str(exc), field="csr_pem", code="bad_csr") from exc
    return _issued(settings, device_id, cert_pem, None)


async def _audited(conn: AConn, p: Principal, action: str, device_id: str, details: dict[str, Any]) -> None:
    await audit(conn, p, action, "device", device_id, details=details)


@router.post("/devices/{device_id}/certificates", status_code=status.HTTP_201_CREATED)
async def issue_certificate(
    *, request: Request, principal: CurrentPrincipal, conn: Conn, device_id: str
) -> CertificateIssued:
    """Issue a new certificate and key for a registered device (admins). A rotation: the old ones
    stay valid until revoked with `keep_serial` set to this one's serial."""
    await _admin_device(conn, principal, device_id, "issue device certificates")
    issued = await run_in_threadpool(_issue, request.app.state.settings, device_id)
    await _audited(conn, principal, "device.certificate.issue", device_id, {"serial": issued.serial})
    return issued


@router.post("/devices/{device_id}/certificates/csr", status_code=status.HTTP_201_CREATED)
async def sign_certificate_request(
    *, request: Request, principal: CurrentPrincipal, conn: Conn, device_id: str, body: CsrBody
) -> CertificateIssued:
    """Sign a device's CSR (admins); its CN must be the device id. No key in the answer."""
    await _admin_device(conn, principal, device_id, "sign device certificates")
    issued = await run_in_threadpool(_sign, request.app.state.settings, device_id, body.csr_pem)
    await _audited(conn, principal, "device.certificate.sign_csr", device_id, {"serial": issued.serial})
    return issued


@router.post("/devices/{device_id}/certificates/revoke")
async def revoke_certificates(
    *, request: Request, principal: CurrentPrincipal, conn: Conn, device_id: str, body: RevokeBody
) -> RevocationPublic:
    """Revoke the device's certificates, all or all but `keep_serial` (admins): the CRL is
    rewritten and the local broker re-reads it, so they are refused at their next connect."""
    await _admin_device(conn, principal, device_id, "revoke device certificates")
    keep = int(body.keep_serial, 16) if body.keep_serial else None
    settings = request.app.state.settings
    done = await run_in_threadpool(devicecerts.revoke, settings, device_id, keep_serial=keep)
    await _audited(conn, principal, "device.certificate.revoke", device_id, {"serials": done.serials})
    return RevocationPublic(device_id=device_id, serials=done.serials, broker_reloaded=done.broker_reloaded)
