"""The `pulsewire` command line as a user runs it: subprocesses against the session's stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from pulsewire.stack import StackInfo


def _pulsewire(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pulsewire", *args], env=env, capture_output=True, text=True, timeout=60
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _env(stack_info: StackInfo, db_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSEWIRE_")}
    env["PULSEWIRE_STATE_DIR"] = str(stack_info.state_dir)
    if db_url:
        env["PULSEWIRE_DATABASE_URL"] = db_url
    return env


def _json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def test_stack_status_json_names_the_urls(stack_info: StackInfo) -> None:
    status = _json(_pulsewire(_env(stack_info), "stack", "status", "--json"))
    assert status["database_url"] == stack_info.database_url
    assert status["mqtt_url"] == stack_info.mqtt_url
    assert status["running"] is True


def test_registry_commands_print_json_and_the_device_can_connect(stack_info: StackInfo, db_url: str) -> None:
    env = _env(stack_info, db_url)
    assert "up to date" in _pulsewire(env, "migrate").stdout
    clinic = _json(_pulsewire(env, "orgs", "add", "CLI Clinic", "--kind", "provider", "--json"))["org_id"]
    vendor = _json(_pulsewire(env, "orgs", "add", "CLI Vendor", "--kind", "vendor", "--json"))["org_id"]
    device = _json(
        _pulsewire(
            env,
            "devices",
            "add",
            "cli-icd-1",
            "--kind",
            "implant",
            "--model",
            "X",
            "--provider",
            str(clinic),
            "--vendor",
            str(vendor),
            "--json",
        )
    )
    assert device["device_id"] == device["mqtt_username"] == "cli-icd-1"
    user = _json(
        _pulsewire(
            env, "users", "add", "doc@cli.test", "--role", "provider_staff", "--org", str(clinic), "--json"
        )
    )
    assert user["token"].startswith("pw_") and isinstance(user["user_id"], int)

    publish = [
        "mosquitto_pub",
        "-h",
        stack_info.mqtt_host,
        "-p",
        str(stack_info.mqtt_port),
        "--cafile",
        str(stack_info.ca_file),
        "-V",
        "mqttv5",
        "-q",
        "1",
        "-t",
        "pw/v1/dev/cli-icd-1/status",
        "-m",
        "online",
    ]
    ok = subprocess.run(
        [*publish, "-u", "cli-icd-1", "-P", device["mqtt_password"]], capture_output=True, timeout=30
    )
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run([*publish, "-u", "cli-icd-1", "-P", "wrong"], capture_output=True, timeout=30)
    assert refused.returncode != 0
    stranger = subprocess.run([*publish, "-u", "nobody", "-P", "x"], capture_output=True, timeout=30)
    assert stranger.returncode != 0


def test_bad_input_is_a_clear_error_not_a_traceback(stack_info: StackInfo, db_url: str) -> None:
    env = _env(stack_info, db_url)
    _pulsewire(env, "orgs", "add", "Dup Org", "--kind", "provider")
    again = _pulsewire(env, "orgs", "add", "Dup Org", "--kind", "provider", check=False)
    assert again.returncode == 1
    assert "already exists" in again.stderr and "Traceback" not in again.stderr
    missing = _pulsewire(
        env,
        "devices",
        "add",
        "x-1",
        "--kind",
        "vehicle",
        "--model",
        "M",
        "--provider",
        "999",
        "--vendor",
        "998",
        check=False,
    )
    assert missing.returncode == 1 and "no org with id 999" in missing.stderr


def test_schemas_export_is_json_schema(stack_info: StackInfo) -> None:
    schemas = _json(_pulsewire(_env(stack_info), "schemas"))
    telemetry = schemas["pulsewire.telemetry/1"]
    assert telemetry["type"] == "object" and "readings" in telemetry["properties"]
