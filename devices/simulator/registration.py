"""Registering simulated devices in the configured database, once, for `pulsewire simulate`.

Demo orgs and owners are created when missing and reused otherwise; device ids are
`sim-icd-000001` / `sim-veh-000001`. Their generated passwords are kept in
`<state_dir>/simulator/credentials.json` (mode 0600) so a re-run logs in as the same devices.
On the local stack each device also gets a certificate of the stack's CA (CN = its id) in
`<state_dir>/simulator/certs/`, kept while valid, so the simulated fleet logs in by mutual TLS.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devices.simulator.runner import DeviceLogin
from pulsewire import demo, devicecerts, registry
from pulsewire.db import connect
from pulsewire.errors import ConfigError
from pulsewire.pki import load_certificate
from pulsewire.settings import Settings

ORGS = {
    demo.CLINIC: "provider",
    demo.GARAGE: "provider",
    demo.IMPLANT_VENDOR: "vendor",
    demo.DONGLE_VENDOR: "vendor",
}
PROVIDER = {
    "implant": (demo.CLINIC, demo.IMPLANT_VENDOR, demo.PATIENT, "ICD sim DR"),
    "vehicle": (demo.GARAGE, demo.DONGLE_VENDOR, demo.DRIVER, "OBD sim dongle"),
}
SHORT = {"implant": "icd", "vehicle": "veh"}


def credentials_path(state_dir: Path) -> Path:
    """Where the simulator keeps its devices' passwords."""
    return state_dir / "simulator" / "credentials.json"


def ensure_devices(settings: Settings, kinds: list[str]) -> list[DeviceLogin]:
    """Logins for devices of `kinds` (one entry per device), registering those that are missing."""
    path = credentials_path(settings.state_dir)
    saved = _read(path)
    logins: list[DeviceLogin] = []
    counts = dict.fromkeys(SHORT, 0)
    changed = False
    with connect(settings.require_database_url(), autocommit=True) as conn:
        orgs = _ensure_orgs(conn)
        existing = {
            r["device_id"] for r in conn.execute("SELECT device_id FROM devices WHERE device_id LIKE 'sim-%'")
        }
        for kind in kinds:
            counts[kind] += 1
            device_id = f"sim-{SHORT[kind]}-{counts[kind]:06d}"
            password = saved.get(device_id)
            if device_id not in existing:
                provider, vendor, owner, model = PROVIDER[kind]
                owner_id = demo.owner_id(conn, orgs[provider], owner)
                password = registry.add_device(
                    conn,
                    device_id,
                    kind=kind,
                    model=model,
                    provider_org_id=orgs[provider],
                    vendor_org_id=orgs[vendor],
                    owner_id=owner_id,
                ).mqtt_password
                changed = True
            elif password is None:
                # Registered by an earlier run whose credentials file is gone: give it a new password.
                password = registry.reset_device_password(conn, device_id).mqtt_password
                changed = True
            saved[device_id] = password
            logins.append(DeviceLogin(device_id, kind, password))
        if changed:
            _write(path, saved)
            registry.sync_broker_auth(conn, settings.state_dir)
    certificates = ensure_certificates(settings, [login.device_id for login in logins])
    return [dataclasses.replace(login, certificate=certificates.get(login.device_id)) for login in logins]


def ensure_certificates(settings: Settings, device_ids: Iterable[str]) -> dict[str, tuple[Path, Path]]:
    """`{device_id: (cert file, key file)}`, issued by the local stack's CA where none is valid.

    A certificate is kept while the CA lists it as neither revoked nor expired; a revoked one (or one
    of an earlier CA) is replaced. Without a local CA (a broker of the operator's) the answer is
    empty and the devices log in with their passwords.
    """
    try:
        ca = devicecerts.certificate_authority(settings)
    except ConfigError:
        return {}
    now = datetime.now(UTC)
    valid = {entry.serial for entry in ca.issued() if entry.revoked_at is None and entry.not_after > now}
    out = settings.state_dir / "simulator" / "certs"
    found: dict[str, tuple[Path, Path]] = {}
    for device_id in device_ids:
        cert, key = out / f"{device_id}.crt", out / f"{device_id}.key"
        if not (key.exists() and _serial(cert) in valid):
            cert_pem, key_pem = ca.issue_device_certificate(device_id)
            devicecerts.write_bundle(ca, device_id, out, cert_pem, key_pem)
        found[device_id] = (cert, key)
    return found


def _serial(cert: Path) -> int | None:
    try:
        return load_certificate(cert.read_bytes()).serial_number
    except (OSError, ValueError):
        return None


def _ensure_orgs(conn: registry.Conn) -> dict[str, int]:
    return {name: demo.org_id(conn, name, kind) for name, kind in ORGS.items()}


def _read(path: Path) -> dict[str, str]:
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _write(path: Path, saved: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(saved, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
