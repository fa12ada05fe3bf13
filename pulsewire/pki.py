"""The device PKI: a private certificate authority, device and server certificates, revocation.

`pulsewire stack up` creates a CA under `<state_dir>/pki`; in production the operator points the
broker at their own CA, server certificate and CRL instead (`pulsewire broker config`) and may
still use this module to sign device CSRs with a CA key they keep here::

    ca = CertificateAuthority.open(state_dir / "pki")      # created on first use
    cert_pem, key_pem = ca.issue_device_certificate("pm-0001")   # CN = the device id
    ca.sign_csr("pm-0001", csr_pem)                         # the key never leaves the device
    ca.issue_server_certificate(["localhost", "127.0.0.1"], out_dir)
    ca.revoke("pm-0001")                                    # crl.pem rewritten

Rotation is `issue_device_certificate` (or `sign_csr`) again while the old certificate is still
valid, then `revoke(device_id, keep_serial=new_serial)`. Every certificate issued is kept in
`issued.json` (serial, device, expiry, revocation), which is what the CRL is rendered from.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pulsewire.errors import ConfigError

__all__ = ["CertificateAuthority", "IssuedCertificate", "device_id_of", "load_certificate"]

CA_DAYS = 3650
DEVICE_DAYS = 825
SERVER_DAYS = 825
CRL_DAYS = 30
_BACKDATE = dt.timedelta(minutes=5)  # tolerate a device clock a little behind ours
_PEM = serialization.Encoding.PEM
_Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class IssuedCertificate:
    """One certificate this CA signed, as recorded in `issued.json`."""

    serial: int
    device_id: str
    not_after: dt.datetime
    revoked_at: dt.datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the serial in hex, as `openssl x509 -serial` prints it)."""
        revoked = self.revoked_at.isoformat() if self.revoked_at else None
        return {
            "serial": f"{self.serial:X}",
            "device_id": self.device_id,
            "not_after": self.not_after.isoformat(),
            "revoked_at": revoked,
        }

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> IssuedCertificate:
        revoked = row.get("revoked_at")
        return cls(
            serial=int(row["serial"], 16),
            device_id=row["device_id"],
            not_after=dt.datetime.fromisoformat(row["not_after"]),
            revoked_at=dt.datetime.fromisoformat(revoked) if revoked else None,
        )


class CertificateAuthority:
    """A CA kept in one directory: `ca.crt`, `ca.key` (0600), `crl.pem` and `issued.json`."""

    def __init__(self, root: Path, cert: x509.Certificate, key: _Key) -> None:
        self.root = root
        self._cert = cert
        self._key = key

    @property
    def ca_file(self) -> Path:
        """The CA certificate a client or the broker trusts."""
        return self.root / "ca.crt"

    @property
    def crl_file(self) -> Path:
        """The certificate revocation list, rewritten on every revocation."""
        return self.root / "crl.pem"

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate as PEM."""
        return self._cert.public_bytes(_PEM)

    @classmethod
    def open(cls, root: Path, *, create: bool = True) -> CertificateAuthority:
        """The CA in `root`, created (key, self-signed certificate, empty CRL) when missing."""
        root = Path(root)
        with _locked(root, create=create):
            if not (root / "ca.key").exists():
                if not create:
                    raise ConfigError(f"no certificate authority in {root}: run `pulsewire stack up`")
                ca = cls._create(root)
                ca._write_crl()
                return ca
            try:
                key = serialization.load_pem_private_key((root / "ca.key").read_bytes(), None)
                cert = x509.load_pem_x509_certificate((root / "ca.crt").read_bytes())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read the certificate authority in {root}: {exc}") from exc
            if not isinstance(key, _Key):
                raise ConfigError(f"{root / 'ca.key'} is not an EC key")
            return cls(root, cert, key)

    @classmethod
    def _create(cls, root: Path) -> CertificateAuthority:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, f"Pulsewire device CA {secrets.token_hex(4)}")]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(root / "ca.key", _key_pem(key))
        (root / "ca.crt").write_bytes(cert.public_bytes(_PEM))
        return cls(root, cert, key)

    def issue_device_certificate(
        self, device_id: str, *, days: int = DEVICE_DAYS, valid_from: dt.datetime | None = None
    ) -> tuple[bytes, bytes]:
        """A new key and a client certificate whose CN is `device_id`, both as PEM.

        `valid_from` back-dates the certificate (an expired one, to prove the broker refuses it).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign_device(device_id, key.public_key(), days=days, valid_from=valid_from)
        return cert, _key_pem(key)

    def sign_csr(self, device_id: str, csr_pem: bytes, *, days: int = DEVICE_DAYS) -> bytes:
        """Sign a device's CSR. ValueError unless it is well signed and its CN is `device_id`."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise ValueError(f"not a PEM certificate signing request: {exc}") from exc
        if not csr.is_signature_valid:
            raise ValueError("the CSR's signature does not match its key")
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if [name.value for name in names] != [device_id]:
            raise ValueError(f"the CSR's common name must be the device id {device_id!r}")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise ValueError("the CSR's key must be EC or RSA")
        return self._sign_device(device_id, public_key, days=days)

    def issue_server_certificate(
        self, names: Iterable[str], out_dir: Path, *, stem: str = "server", days: int = SERVER_DAYS
    ) -> tuple[Path, Path]:
        """Write `<stem>.crt` and `<stem>.key` (0600) for host names and IP addresses `names`."""
        names = list(names)
        if not names:
            raise ValueError("a server certificate needs at least one host name or address")
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._builder(names[0], key.public_key(), days=days)
        cert = (
            builder.add_extension(
                x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        cert_file, key_file = out_dir / f"{stem}.crt", out_dir / f"{stem}.key"
        _write_private(key_file, _key_pem(key))
        cert_file.write_bytes(cert.public_bytes(_PEM))
        return cert_file, key_file

    def issued(self, device_id: str | None = None) -> list[IssuedCertificate]:
        """The certificates issued (to `device_id`, or to anyone), oldest first."""
        rows = [IssuedCertificate.from_json(row) for row in self._read_index()]
        return [row for row in rows if device_id is None or row.device_id == device_id]

    def revoke(self, device_id: str, *, keep_serial: int | None = None) -> list[int]:
        """Revoke every valid certificate of `device_id` but `keep_serial`; rewrite the CRL.

        Returns the serials revoked now (empty when there was nothing to revoke).
        """
        now = _now()
        with _locked(self.root):
            rows = self._read_index()
            revoked: list[int] = []
            for row in rows:
                entry = IssuedCertificate.from_json(row)
                if entry.device_id != device_id or entry.revoked_at or entry.serial == keep_serial:
                    continue
                row["revoked_at"] = now.isoformat()
                revoked.append(entry.serial)
            self._write_index(rows)
            self._write_crl()
        return revoked

    def _sign_device(
        self, device_id: str, public_key: Any, *, days: int, valid_from: dt.datetime | None = None
    ) -> bytes:
        if not device_id or "\n" in device_id:
            raise ValueError(f"not a device id: {device_id!r}")
        cert = (
            self._builder(device_id, public_key, days=days, valid_from=valid_from)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        with _locked(self.root):
            rows = self._read_index()
            rows.append(IssuedCertificate(cert.serial_number, device_id, cert.not_valid_after_utc).to_json())
            self._write_index(rows)
        return cert.public_bytes(_PEM)

    def _builder(
        self, common_name: str, public_key: Any, *, days: int, valid_from: dt.datetime | None = None
    ) -> x509.CertificateBuilder:
        now = valid_from or _now()
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )

    def _write_crl(self) -> None:
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._cert.subject)
            .last_update(now - _BACKDATE)
            .next_update(now + dt.timedelta(days=CRL_DAYS))
        )
        for entry in self.issued():
            if entry.revoked_at is not None and entry.not_after > now:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(entry.serial)
                    .revocation_date(entry.revoked_at)
                    .build()
                )
        crl = builder.sign(self._key, hashes.SHA256())
        _atomic_write(self.crl_file, crl.public_bytes(_PEM), mode=0o644)

    def _read_index(self) -> list[dict[str, Any]]:
        try:
            rows: list[dict[str, Any]] = json.loads((self.root / "issued.json").read_text())
        except FileNotFoundError:
            return []
        return rows

    def _write_index(self, rows: list[dict[str, Any]]) -> None:
        _atomic_write(self.root / "issued.json", json.dumps(rows, indent=1).encode(), mode=0o600)


def load_certificate(pem: bytes) -> x509.Certificate:
    """Parse one PEM certificate (ValueError when it is not one)."""
    return x509.load_pem_x509_certificate(pem)


def device_id_of(cert_pem: bytes) -> str:
    """The device id a certificate names (its CN)."""
    names = load_certificate(cert_pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_pem(key: _Key) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _write_private(path: Path, data: bytes) -> None:
    _atomic_write(path, data, mode=0o600)


def _atomic_write(path: Path, data: bytes, *, mode: int) -> None:
    """Replace `path` in one rename, so the broker never reads half a CRL."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(root: Path, *, create: bool = True) -> Iterator[None]:
    # A CLI `revoke-cert` and the admin API may write issued.json at the same moment.
    if create:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    elif not root.is_dir():
        raise ConfigError(f"no certificate authority in {root}: run `pulsewire stack up`")
    with (root / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
