"""A private Mosquitto broker under the state directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pulsewire import brokerauth
from pulsewire.brokerconf import BrokerFiles, BrokerLayout, render_config
from pulsewire.errors import StackError
from pulsewire.pki import CertificateAuthority
from pulsewire.stack import _procs
from pulsewire.stack._ports import LOOPBACK, port_accepts, wait_for_port

_START_TIMEOUT_S = 15.0
_RELOAD_TIMEOUT_S = 10.0
# Logged by Mosquitto's main loop right before it re-reads config, passwords and ACL;
# the loop is single-threaded, so a CONNECT sent after we see it meets the new files.
_RELOAD_MARK = b"Reloading config"


@dataclass(frozen=True)
class BrokerPorts:
    """The local broker's three loopback ports."""

    password: int
    service: int
    mtls: int


def binary() -> Path | None:
    """Mosquitto's executable (Debian puts it in /usr/sbin, often off a user's PATH)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    return Path(found) if found else None


class Mosquitto:
    """One broker in `root`: the device mTLS, device password and service listeners on loopback.

    `port` is the device password listener (TLS with the stack's CA, as in production), kept on
    the port the stack always had; `service_port` the services'; `mtls_port` the certificates'.
    """

    def __init__(self, root: Path, ports: BrokerPorts, service_logins: dict[str, str], pki_dir: Path) -> None:
        self.root = root
        self.port = ports.password
        self.ports = ports
        # {login: password}: the operator's login first, then one per component
        self.service_logins = service_logins
        self.pki_dir = pki_dir
        self.conf = root / "mosquitto.conf"
        self.password_file = root / "passwd"
        self.acl_file = root / "acl"
        self.org_logins_file = root / "org_logins.json"
        self.log = root / "mosquitto.log"
        self.pid_file = root / "mosquitto.pid"

    @property
    def files(self) -> BrokerFiles:
        """Where the broker's TLS material, passwords and ACLs are."""
        return BrokerFiles(
            ca_file=self.pki_dir / "ca.crt", cert_file=self.root / "server.crt",
            key_file=self.root / "server.key", crl_file=self.pki_dir / "crl.pem",
            device_passwords=self.password_file, device_acl=self.acl_file,
            service_passwords=self.root / "service.passwd", service_acl=self.root / "service.acl",
        )  # fmt: skip

    def layout(self) -> BrokerLayout:
        """The local stack's listeners, all on loopback; the device listeners speak TLS as in production."""
        return BrokerLayout(
            files=self.files, mtls_port=self.ports.mtls, password_port=self.ports.password,
            service_port=self.ports.service, service_host=LOOPBACK, bind=LOOPBACK,
            persistence_dir=self.root / "data", pid_file=self.pid_file, run_as_root=_procs.is_root(),
        )  # fmt: skip

    def pid(self) -> int | None:
        """The broker's pid when it runs with our config file, else None."""
        pid = _procs.read_pid(self.pid_file)
        if pid is not None and _procs.pid_owned(pid, str(self.conf)):
            return pid
        return None

    def running(self) -> bool:
        """Whether our broker runs."""
        return self.pid() is not None

    def start(self) -> None:
        """Write config (and auth files on first start), then start the broker unless it runs."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.root / "data").mkdir(mode=0o700, exist_ok=True)
        ca = CertificateAuthority.open(self.pki_dir)
        if not self.files.cert_file.exists():
            ca.issue_server_certificate([LOOPBACK, "localhost"], self.root, stem="server")
        self.conf.write_text(render_config(self.layout()))
        if not self.files.service_passwords.exists() or not self.password_file.exists():
            self.write_auth([])
        if self.running():
            return
        for port in (self.ports.password, self.ports.service, self.ports.mtls):
            if port_accepts(port):
                raise StackError(f"cannot start Mosquitto: port {port} is taken by another process")
        self._launch()

    def stop(self) -> None:
        """Stop the broker; SIGTERM makes it save its persistence file first."""
        pid = self.pid()
        if pid is not None:
            _procs.stop_pid(pid, signal.SIGTERM, timeout_s=60)

    def write_auth(self, devices: Iterable[tuple[str, str]]) -> None:
        """Atomically rewrite both listeners' password and ACL files (devices and org logins)."""
        hashed = brokerauth.hash_password
        operator, *_ = self.service_logins
        components = {name.removeprefix(f"{operator}-"): name for name in list(self.service_logins)[1:]}
        orgs = self.org_logins()
        org_entries = [(brokerauth.org_login(org), digest) for org, digest in orgs.items()]
        try:
            services = brokerauth.render_password_file(
                (login, hashed(password)) for login, password in self.service_logins.items()
            )
            service_acl = brokerauth.render_service_acl(operator, components)
            passwords = brokerauth.render_password_file([*devices, *org_entries])
            acl = brokerauth.render_device_acl(sorted(orgs))
        except ValueError as exc:
            raise StackError(f"cannot write broker credentials: {exc}") from exc
        _atomic_write(self.files.service_passwords, services)
        _atomic_write(self.files.service_acl, service_acl)
        _atomic_write(self.password_file, passwords)
        _atomic_write(self.acl_file, acl)

    def device_entries(self) -> list[tuple[str, str]]:
        """The devices' `(login, password hash)` pairs in the password file now (org logins left out)."""
        try:
            lines = self.password_file.read_text().splitlines()
        except FileNotFoundError:
            return []
        org = brokerauth.org_login(0).removesuffix("0")
        pairs = (line.split(":", 1) for line in lines if line and not line.startswith(org))
        return [(login, digest) for login, digest in pairs]

    def org_logins(self) -> dict[int, str]:
        """`{org_id: password hash}` of the org subscriber logins issued so far."""
        try:
            stored: dict[str, str] = json.loads(self.org_logins_file.read_text())
        except FileNotFoundError:
            return {}
        return {int(org): digest for org, digest in stored.items()}

    def set_org_login(self, org_id: int, password_hash: str) -> None:
        """Store (or replace) one org's subscriber login; `write_auth` and `reload` apply it."""
        stored = {str(org): digest for org, digest in self.org_logins().items()}
        stored[str(org_id)] = password_hash
        _atomic_write(self.org_logins_file, json.dumps(stored, indent=1))

    def reload(self) -> None:
        """SIGHUP the broker and wait until it has re-read its files (no-op when stopped)."""
        pid = self.pid()
        if pid is None:
            return
        offset = self.log.stat().st_size if self.log.exists() else 0
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + _RELOAD_TIMEOUT_S
        while time.monotonic() < deadline:
            with self.log.open("rb") as handle:
                handle.seek(offset)
                if _RELOAD_MARK in handle.read():
                    return
            time.sleep(0.02)
        raise StackError(
            f"Mosquitto did not reload within {_RELOAD_TIMEOUT_S:.0f}s:\n{_procs.log_tail(self.log)}"
        )

    def _launch(self) -> None:
        exe = binary()
        if exe is None:
            raise StackError("Mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")
        self.pid_file.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            # `setsid -f` detaches the broker into its own session, so it is nobody's
            # child here and outlives us. Mosquitto's `-d` would do that too, but it
            # closes stderr, and stderr is its only unbuffered log (its log file is
            # flushed lazily), which reload() needs to see.
            launcher = subprocess.run(
                ["setsid", "-f", str(exe), "-c", str(self.conf)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                timeout=_START_TIMEOUT_S, check=False,
            )  # fmt: skip
        if launcher.returncode != 0:
            raise StackError(f"Mosquitto refused to start:\n{_procs.log_tail(self.log)}")

        def still_starting() -> bool:
            pid = _procs.read_pid(self.pid_file)
            return pid is None or _procs.pid_alive(pid)

        if not wait_for_port(self.port, _START_TIMEOUT_S, still_starting) or not self.running():
            raise StackError(
                f"Mosquitto did not listen on {LOOPBACK}:{self.port}:\n{_procs.log_tail(self.log)}"
            )


def _atomic_write(path: Path, text: str) -> None:
    """Replace `path` in one rename, so the broker never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
