"""Device certificates as the CLI and the admin API hand them out: issue, sign a CSR, revoke.

The certificate authority is the local stack's (`<state_dir>/pki`). A revocation rewrites the CRL
and makes the local broker re-read it (SIGHUP), so the certificate is refused at its next connect;
an operator's own broker is pointed at the same `crl.pem` and reloaded by their tooling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pulsewire.pki import CertificateAuthority
from pulsewire.settings import Settings

__all__ = ["Revocation", "certificate_authority", "revoke", "write_bundle"]


@dataclass(frozen=True)
class Revocation:
    """What `revoke` did: the serials revoked (hex) and whether a local broker re-read the CRL."""

    device_id: str
    serials: list[str]
    broker_reloaded: bool


def certificate_authority(settings: Settings) -> CertificateAuthority:
    """The device CA of the settings' state dir (ConfigError when `pulsewire stack up` never ran)."""
    return CertificateAuthority.open(settings.state_dir / "pki", create=False)


def write_bundle(ca: CertificateAuthority, device_id: str, out_dir: Path, cert_pem: bytes,
                 key_pem: bytes | None = None) -> list[Path]:  # fmt: skip
    """Write `ID.crt`, `ID.key` (0600, when there is one) and `ca.crt` into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / f"{device_id}.crt", out_dir / "ca.crt"]
    written[0].write_bytes(cert_pem)
    written[1].write_bytes(ca.ca_pem)
    if key_pem is not None:
        key_file = out_dir / f"{device_id}.key"
        key_file.touch(mode=0o600)
        key_file.chmod(0o600)
        key_file.write_bytes(key_pem)
        written.insert(1, key_file)
    return written


def revoke(settings: Settings, device_id: str, *, keep_serial: int | None = None) -> Revocation:
    """Revoke the device's certificates (all, or all but `keep_serial`) and reload the local broker."""
    from pulsewire.stack import Stack

    serials = certificate_authority(settings).revoke(device_id, keep_serial=keep_serial)
    stack = Stack(settings.state_dir)
    info = stack.status()
    reloaded = info is not None and info.broker_running
    if reloaded:
        stack.reload_broker()
    return Revocation(device_id, [f"{serial:X}" for serial in serials], reloaded)
