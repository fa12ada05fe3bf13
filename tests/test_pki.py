"""The device CA on its own: names, CSRs, the CRL, rotation and expiry (no broker).

Where a verdict matters to the broker, OpenSSL's own `openssl verify` (the library Mosquitto uses)
gives it, with the CA and, for revocations, the CRL.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from pulsewire.errors import ConfigError
from pulsewire.pki import CertificateAuthority, device_id_of, load_certificate
from tests.test_broker_security import make_csr


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.open(tmp_path / "pki")


def openssl_verify(ca: CertificateAuthority, cert_pem: bytes, tmp_path: Path, *, crl: bool = False) -> str:
    """`openssl verify`'s verdict on `cert_pem`: 'OK', or the reason it gives."""
    cert = tmp_path / f"cert-{load_certificate(cert_pem).serial_number:x}.pem"
    cert.write_bytes(cert_pem)
    command = ["openssl", "verify", "-purpose", "sslclient", "-CAfile", str(ca.ca_file)]
    if crl:
        command += ["-crl_check", "-CRLfile", str(ca.crl_file)]
    done = subprocess.run([*command, str(cert)], capture_output=True, text=True, timeout=30, check=False)
    return "OK" if done.returncode == 0 else done.stdout + done.stderr


def crl_serials(ca: CertificateAuthority) -> set[int]:
    crl = x509.load_pem_x509_crl(ca.crl_file.read_bytes())
    assert crl.is_signature_valid(load_certificate(ca.ca_pem).public_key())  # type: ignore[arg-type]
    return {entry.serial_number for entry in crl}


def csr_for(common_name: str) -> bytes:
    return make_csr(common_name)[0]


def test_a_device_certificate_names_the_device_and_is_for_clients(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    cert_pem, key_pem = ca.issue_device_certificate("icd-000042")
    cert = load_certificate(cert_pem)
    assert device_id_of(cert_pem) == "icd-000042"
    assert cert.issuer == load_certificate(ca.ca_pem).subject
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert b"PRIVATE KEY" in key_pem
    assert openssl_verify(ca, cert_pem, tmp_path, crl=True) == "OK"
    assert [(e.serial, e.device_id, e.revoked_at) for e in ca.issued()] == [
        (cert.serial_number, "icd-000042", None)
    ]
    # The CA key is the operator's secret: owner-only on disk.
    assert (ca.root / "ca.key").stat().st_mode & 0o077 == 0


def test_a_csr_is_signed_only_for_the_device_it_names(ca: CertificateAuthority, tmp_path: Path) -> None:
    csr = csr_for("icd-000042")
    with pytest.raises(ValueError, match="common name must be the device id 'icd-000043'"):
        ca.sign_csr("icd-000043", csr)
    with pytest.raises(ValueError, match="not a PEM certificate signing request"):
        ca.sign_csr("icd-000042", b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n")
    assert ca.issued() == []  # nothing signed for a refused request
    signed = ca.sign_csr("icd-000042", csr)
    assert device_id_of(signed) == "icd-000042"
    assert openssl_verify(ca, signed, tmp_path) == "OK"


def test_revoke_rewrites_the_crl_with_that_device_only(ca: CertificateAuthority, tmp_path: Path) -> None:
    mine, _ = ca.issue_device_certificate("veh-1")
    other, _ = ca.issue_device_certificate("veh-2")
    assert crl_serials(ca) == set()
    revoked = ca.revoke("veh-1")
    assert revoked == [load_certificate(mine).serial_number]
    assert crl_serials(ca) == set(revoked)
    assert "certificate revoked" in openssl_verify(ca, mine, tmp_path, crl=True)
    assert openssl_verify(ca, other, tmp_path, crl=True) == "OK"
    assert ca.revoke("veh-1") == []  # nothing left to revoke; the CRL stays as it was
    assert crl_serials(ca) == set(revoked)


def test_rotation_keeps_the_new_certificate_and_revokes_the_old(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    old, _ = ca.issue_device_certificate("icd-7")
    new = ca.sign_csr("icd-7", csr_for("icd-7"))
    new_serial = load_certificate(new).serial_number
    # Both valid during the handover.
    assert openssl_verify(ca, old, tmp_path, crl=True) == openssl_verify(ca, new, tmp_path, crl=True) == "OK"
    assert ca.revoke("icd-7", keep_serial=new_serial) == [load_certificate(old).serial_number]
    assert "certificate revoked" in openssl_verify(ca, old, tmp_path, crl=True)
    assert openssl_verify(ca, new, tmp_path, crl=True) == "OK"
    states = {e.serial: e.revoked_at is not None for e in ca.issued("icd-7")}
    assert states == {load_certificate(old).serial_number: True, new_serial: False}
    # Reopening the CA (another process: the CLI, the API) sees the same record.
    assert CertificateAuthority.open(ca.root, create=False).issued("icd-7") == ca.issued("icd-7")


def test_an_expired_certificate_is_detected_and_leaves_the_crl(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=30)
    expired, _ = ca.issue_device_certificate("icd-old", days=1, valid_from=long_ago)
    assert load_certificate(expired).not_valid_after_utc < datetime.now(UTC)
    assert "certificate has expired" in openssl_verify(ca, expired, tmp_path)
    [entry] = ca.issued("icd-old")
    assert entry.not_after < datetime.now(UTC)
    # Revoking it records the revocation, but the CRL lists only certificates still within their
    # validity: an expired one is refused for its dates, and the CRL stays short.
    assert ca.revoke("icd-old") == [entry.serial]
    assert crl_serials(ca) == set()


def test_opening_a_missing_ca_without_create_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pulsewire stack up"):
        CertificateAuthority.open(tmp_path / "none", create=False)
