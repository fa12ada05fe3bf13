"""Device certificates through the admin API, against the session stack's CA and real Mosquitto."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pulsewire.pki import device_id_of
from pulsewire.settings import Settings
from pulsewire.stack import StackInfo
from tests.fix_api import ApiServer, Users, assert_error, client
from tests.fix_stack import new_state_dir
from tests.test_broker_security import make_csr, refused_tls

Clients = dict[str, httpx.Client]


def _route(device_id: str, action: str = "") -> str:
    return f"/api/v1/devices/{device_id}/certificates{action}"


def _bundle(answer: dict[str, str], out: Path, key_pem: bytes | None = None) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    cert, key = out / "device.crt", out / "device.key"
    cert.write_text(answer["certificate_pem"])
    key.write_bytes(key_pem or answer["key_pem"].encode())
    return cert, key


def test_only_admins_handle_certificates(clients: Clients, users: Users) -> None:
    device = users.own_device
    csr = make_csr(device)[0].decode()
    for name in ("provider", "vendor", "owner"):
        assert_error(clients[name].post(_route(device)), 403, "forbidden")
        assert_error(clients[name].post(_route(device, "/csr"), json={"csr_pem": csr}), 403, "forbidden")
        assert_error(clients[name].post(_route(device, "/revoke"), json={}), 403, "forbidden")
    assert_error(clients["anon"].post(_route(device)), 401)
    assert_error(clients["admin"].post(_route("no-such-device")), 404, "not_found")


def test_issue_then_rotate_and_revoke_the_old_one(
    clients: Clients, users: Users, stack_info: StackInfo, tmp_path: Path
) -> None:
    admin, device = clients["admin"], users.own_device
    old = admin.post(_route(device))
    assert old.status_code == 201, old.text
    assert device_id_of(old.json()["certificate_pem"].encode()) == device
    assert stack_info.ca_file is not None and old.json()["ca_pem"] == stack_info.ca_file.read_text()
    old_files = _bundle(old.json(), tmp_path / "old")
    assert not refused_tls(stack_info, *old_files)

    new = admin.post(_route(device)).json()
    revoked = admin.post(_route(device, "/revoke"), json={"keep_serial": new["serial"]})
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["broker_reloaded"] and old.json()["serial"] in revoked.json()["serials"]
    assert new["serial"] not in revoked.json()["serials"]
    assert refused_tls(stack_info, *old_files)
    assert not refused_tls(stack_info, *_bundle(new, tmp_path / "new"))


def test_a_csr_is_signed_for_its_own_device_only(
    clients: Clients, users: Users, stack_info: StackInfo, tmp_path: Path
) -> None:
    admin, device = clients["admin"], users.own_device
    csr_pem, key_pem = make_csr(device)
    csr = csr_pem.decode()
    signed = admin.post(_route(device, "/csr"), json={"csr_pem": csr})
    assert signed.status_code == 201, signed.text
    assert signed.json()["key_pem"] is None
    assert not refused_tls(stack_info, *_bundle(signed.json(), tmp_path, key_pem))
    error = assert_error(
        admin.post(_route(users.other_device, "/csr"), json={"csr_pem": csr}), 422, "bad_csr"
    )
    assert "common name" in error["message"] and error["details"] == {"field": "csr_pem"}
    assert_error(admin.post(_route(device, "/csr"), json={"csr_pem": "not a CSR"}), 422, "bad_csr")


@pytest.fixture
def no_ca_server(settings: Settings) -> Iterator[ApiServer]:
    state_dir = new_state_dir()  # no `stack up` there: no CA
    try:
        with ApiServer(settings.model_copy(update={"state_dir": state_dir})) as server:
            yield server
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def test_without_a_ca_the_answer_says_unavailable(no_ca_server: ApiServer, users: Users) -> None:
    with client(no_ca_server, users.tokens["admin"]) as admin:
        assert_error(admin.post(_route(users.own_device)), 503, "unavailable")
