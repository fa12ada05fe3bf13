"""The local stack: a private PostgreSQL and Mosquitto under the state directory.

`Stack(state_dir).up()` starts both on free loopback ports chosen once and kept in
`state_dir/stack.json` (mode 0600, with the generated passwords), so every later
`up`, restart or CLI call finds the same URLs. The servers daemonise and outlive the
process that started them; `down` stops exactly them, found by their pid files::

    stack = Stack(Path(".pulsewire"))
    info = stack.up()          # StackInfo(database_url=..., mqtt_url=..., ...)
    stack.reload_broker_auth([(device_id, brokerauth.hash_password(pw))])
    stack.down()
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pulsewire import brokerauth
from pulsewire.errors import StackError
from pulsewire.pki import CertificateAuthority
from pulsewire.stack import _ha, _mosquitto, _postgres, _procs
from pulsewire.stack._mosquitto import BrokerPorts, Mosquitto
from pulsewire.stack._ports import LOOPBACK, free_port
from pulsewire.stack._postgres import Postgres

__all__ = ["SERVICE_USER", "Stack", "StackError", "StackInfo", "ensure_packages"]

SERVICE_USER = "pulsewire"
_PACKAGES = ("mosquitto", "mosquitto-clients", "postgresql")
_CONFIG_VERSION = 1


@dataclass(frozen=True)
class StackInfo:
    """Where the local stack lives and how to reach it."""

    state_dir: Path
    database_url: str
    mqtt_url: str
    mqtt_host: str
    mqtt_port: int
    pg_port: int
    postgres_running: bool = False
    broker_running: bool = False
    postgres_pid: int | None = None
    broker_pid: int | None = None
    timescaledb: bool = False
    # The device listeners, both TLS with the server certificate of `ca_file`: mutual TLS at
    # `mqtts_port` (revocations in `crl_file`) and passwords at `mqtt_port`. `mqtt_url` is the
    # service listener (plain text, loopback only).
    mqtts_port: int = 0
    service_port: int = 0
    ca_file: Path | None = None
    crl_file: Path | None = None
    # {component: mqtt URL} of each component's least-privilege login on the service listener
    service_urls: dict[str, str] | None = None
    # With `up(ha=True)`: the monitor and each PostgreSQL node with its role (`_ha.HaNode.to_json`).
    ha: dict[str, Any] | None = None

    @property
    def running(self) -> bool:
        """Whether both servers run."""
        return self.postgres_running and self.broker_running

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, as printed by `pulsewire stack status --json`."""
        return {
            "state_dir": str(self.state_dir),
            "database_url": self.database_url,
            "mqtt_url": self.mqtt_url,
            "mqtt_host": self.mqtt_host,
            "mqtt_port": self.mqtt_port,
            "pg_port": self.pg_port,
            "postgres_running": self.postgres_running,
            "broker_running": self.broker_running,
            "running": self.running,
            "postgres_pid": self.postgres_pid,
            "broker_pid": self.broker_pid,
            "timescaledb": self.timescaledb,
            "mqtts_port": self.mqtts_port,
            "mqtts_url": f"mqtts://{self.mqtt_host}:{self.mqtts_port}",
            "mqtt_device_url": f"mqtts://{self.mqtt_host}:{self.mqtt_port}",
            "service_port": self.service_port,
            "ca_file": str(self.ca_file) if self.ca_file else None,
            "crl_file": str(self.crl_file) if self.crl_file else None,
            "service_urls": self.service_urls or {},
            "ha": self.ha,
        }


class Stack:
    """The PostgreSQL and Mosquitto of one state directory; every method is idempotent."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir).absolute()
        self._config_file = self.state_dir / "stack.json"

    def up(self, *, ha: bool = False) -> StackInfo:
        """Set up what is missing and start what is stopped; same ports and credentials every time.

        With `ha` (kept for every later `up`), PostgreSQL is a pg_auto_failover formation instead of
        one server: a monitor, a primary and a synchronous standby, reached by a multi-host URL.
        """
        ensure_packages()
        self.state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        with self._locked():
            config = self._upgrade(self._load() or self._create_config())
            if ha and "ha_monitor_port" not in config:
                for key in ("ha_monitor_port", *(f"ha_{name}_port" for name in _ha.NODE_NAMES)):
                    config[key] = self._free_port(config)
                self._save(config)
            postgres, broker = self._servers(config)
            cluster = self._cluster(config)
            if cluster is None:
                postgres.start()
            else:
                cluster.start()
            broker.start()
            return self._info(config)

    def down(self) -> None:
        """Stop both servers if they run; data and credentials stay for the next `up`."""
        config = self._load()
        if config is None:
            return
        with self._locked():
            postgres, broker = self._servers(config)
            broker.stop()
            cluster = self._cluster(config)
            if cluster is None:
                postgres.stop()
            else:
                cluster.stop()

    def status(self) -> StackInfo | None:
        """The stack's URLs and what runs now; None when `up` never ran here."""
        config = self._load()
        return None if config is None else self._info(config)

    def stop_postgres(self) -> None:
        """Stop PostgreSQL only (fault injection)."""
        with self._locked():
            self._servers(self._require())[0].stop()

    def start_postgres(self) -> None:
        """Start PostgreSQL again on the same port with the same data."""
        with self._locked():
            self._servers(self._require())[0].start()

    def stop_broker(self) -> None:
        """Stop Mosquitto only; persistent sessions are saved to disk."""
        with self._locked():
            self._servers(self._require())[1].stop()

    def start_broker(self) -> None:
        """Start Mosquitto again on the same port, restoring persistent sessions."""
        with self._locked():
            self._servers(self._require())[1].start()

    def restart_broker(self) -> None:
        """Stop and start Mosquitto (same port, sessions and queued QoS 1 messages kept)."""
        with self._locked():
            broker = self._servers(self._require())[1]
            broker.stop()
            broker.start()

    def reload_broker_auth(self, device_credentials: Iterable[tuple[str, str]]) -> None:
        """Replace the devices' logins with `(device_id, password_hash)` pairs, live.

        The broker re-reads its files on SIGHUP, so this returns once a new device
        can connect; connected devices stay connected.
        """
        devices = list(device_credentials)
        if any(device_id == SERVICE_USER for device_id, _ in devices):
            raise StackError(f"a device may not be called {SERVICE_USER!r}: that is the service login")
        with self._locked():
            broker = self._servers(self._require())[1]
            broker.write_auth(devices)
            broker.reload()

    def certificate_authority(self) -> CertificateAuthority:
        """The stack's device CA (`<state_dir>/pki`), created by `up`."""
        return CertificateAuthority.open(self.pki_dir, create=False)

    @property
    def pki_dir(self) -> Path:
        """Where the device CA, its CRL and its record of issued certificates live."""
        return self.state_dir / "pki"

    def reload_broker(self) -> None:
        """Make the running broker re-read its CRL, passwords and ACLs (SIGHUP); no-op when stopped."""
        with self._locked():
            self._servers(self._require())[1].reload()

    def set_org_login(self, org_id: int) -> tuple[str, str]:
        """Issue (or replace) org `org_id`'s alert subscriber login, live; returns (username, password)."""
        password = brokerauth.new_password()
        with self._locked():
            broker = self._servers(self._require())[1]
            broker.set_org_login(org_id, brokerauth.hash_password(password))
            broker.write_auth(broker.device_entries())
            broker.reload()
        return brokerauth.org_login(org_id), password

    def _servers(self, config: dict[str, Any]) -> tuple[Postgres, Mosquitto]:
        postgres = Postgres(self.state_dir / "pg", config["pg_port"], config["pg_password"])
        logins = {config["mqtt_user"]: config["mqtt_password"], **config["service_logins"]}
        ports = BrokerPorts(config["mqtt_port"], config["service_port"], config["mqtts_port"])
        broker = Mosquitto(self.state_dir / "mosquitto", ports, logins, self.pki_dir)
        return postgres, broker

    def cluster(self) -> _ha.HaCluster | None:
        """The HA formation when `up(ha=True)` set one up here (fault injection, status)."""
        return self._cluster(self._require())

    def _cluster(self, config: dict[str, Any]) -> _ha.HaCluster | None:
        if "ha_monitor_port" not in config:
            return None
        nodes = (config["ha_node_a_port"], config["ha_node_b_port"])
        return _ha.HaCluster(self.state_dir / "ha", config["ha_monitor_port"], nodes, config["pg_password"])

    def _info(self, config: dict[str, Any]) -> StackInfo:
        info = self._single_info(config)
        cluster = self._cluster(config)
        if cluster is None:
            return info
        nodes = cluster.nodes()
        primary = next((n for n in nodes if n.role == "primary"), None)
        return dataclasses.replace(
            info,
            database_url=cluster.url,
            pg_port=primary.port if primary else cluster.node_ports[0],
            postgres_running=primary is not None and primary.postgres_pid is not None,
            postgres_pid=primary.postgres_pid if primary else None,
            ha={
                "monitor_url": cluster.monitor_url,
                "monitor_pid": cluster.keeper_pid("monitor"),
                "nodes": [n.to_json() for n in nodes],
            },
        )

    def _single_info(self, config: dict[str, Any]) -> StackInfo:
        postgres, broker = self._servers(config)
        postgres_pid, broker_pid = postgres.pid(), broker.pid()
        service = broker.ports.service
        components = {
            login.removeprefix(f"{config['mqtt_user']}-"): _url(login, password, service)
            for login, password in config["service_logins"].items()
        }
        return StackInfo(
            state_dir=self.state_dir,
            database_url=postgres.url,
            mqtt_url=_url(config["mqtt_user"], config["mqtt_password"], service),
            mqtt_host=LOOPBACK,
            mqtt_port=broker.port,
            pg_port=postgres.port,
            postgres_running=postgres_pid is not None,
            broker_running=broker_pid is not None,
            postgres_pid=postgres_pid,
            broker_pid=broker_pid,
            timescaledb=postgres.timescaledb,
            mqtts_port=broker.ports.mtls,
            service_port=service,
            ca_file=broker.files.ca_file,
            crl_file=broker.files.crl_file,
            service_urls=components,
        )

    def _upgrade(self, config: dict[str, Any]) -> dict[str, Any]:
        """Add what a state dir from before the TLS listeners lacks: their ports and the component logins."""
        if all(key in config for key in ("service_port", "mqtts_port", "service_logins")):
            return config
        config.setdefault("service_port", self._free_port(config))
        config.setdefault("mqtts_port", self._free_port(config))
        logins = {f"{SERVICE_USER}-{part}": brokerauth.new_password() for part in brokerauth.SERVICE_GRANTS}
        config.setdefault("service_logins", logins)
        self._save(config)
        return config

    @staticmethod
    def _free_port(config: dict[str, Any]) -> int:
        taken = {value for key, value in config.items() if key.endswith("_port")}
        port = free_port()
        while port in taken:
            port = free_port()
        return port

    def _load(self) -> dict[str, Any] | None:
        try:
            config: dict[str, Any] = json.loads(self._config_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StackError(f"cannot read {self._config_file}: {exc}") from exc
        if config.get("version") != _CONFIG_VERSION:
            raise StackError(f"{self._config_file} is from another Pulsewire version; remove the state dir")
        return config

    def _require(self) -> dict[str, Any]:
        config = self._load()
        if config is None:
            raise StackError(f"no stack in {self.state_dir}: run `pulsewire stack up` first")
        return config

    def _create_config(self) -> dict[str, Any]:
        config = {
            "version": _CONFIG_VERSION,
            "pg_port": free_port(),
            "pg_password": brokerauth.new_password(),
            "mqtt_port": free_port(),
            "mqtt_user": SERVICE_USER,
            "mqtt_password": brokerauth.new_password(),
        }
        while config["mqtt_port"] == config["pg_port"]:
            config["mqtt_port"] = free_port()
        self._save(config)
        return config

    def _save(self, config: dict[str, Any]) -> None:
        tmp = self._config_file.with_name(".stack.json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(config, handle, indent=2)
        os.replace(tmp, self._config_file)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Two `up`s at once (a CLI and a test session) must not both initdb.
        with (self.state_dir / "stack.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_packages() -> None:
    """Install Debian's Mosquitto and PostgreSQL when missing (as root); else say what to install."""
    if _installed():
        return
    command = f"apt-get install -y {' '.join(_PACKAGES)}"
    if not _procs.is_root() or shutil.which("apt-get") is None:
        raise StackError(
            f"Mosquitto and PostgreSQL are needed for the local stack; install them: sudo {command}"
        )
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *_PACKAGES]
    try:
        _procs.run(install, what=command, cwd=Path("/"), env=env, timeout_s=900)
    except StackError:
        # A fresh container has no package lists yet.
        _procs.run(["apt-get", "update"], what="apt-get update", cwd=Path("/"), env=env, timeout_s=900)
        _procs.run(install, what=command, cwd=Path("/"), env=env, timeout_s=900)
    if not _installed():
        raise StackError(f"`{command}` ran but mosquitto or initdb is still missing")


def _url(user: str, password: str, port: int) -> str:
    return f"mqtt://{quote(user, safe='')}:{quote(password, safe='')}@{LOOPBACK}:{port}"


def _installed() -> bool:
    return _mosquitto.binary() is not None and _postgres.bin_dir() is not None
