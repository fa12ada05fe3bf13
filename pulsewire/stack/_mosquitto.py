"""A private Mosquitto broker under the state directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from pulsewire import brokerauth
from pulsewire.errors import StackError
from pulsewire.stack import _procs
from pulsewire.stack._ports import LOOPBACK, port_accepts, wait_for_port

_START_TIMEOUT_S = 15.0
_RELOAD_TIMEOUT_S = 10.0
# Logged by Mosquitto's main loop right before it re-reads config, passwords and ACL;
# the loop is single-threaded, so a CONNECT sent after we see it meets the new files.
_RELOAD_MARK = b"Reloading config"


def binary() -> Path | None:
    """Mosquitto's executable (Debian puts it in /usr/sbin, often off a user's PATH)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    return Path(found) if found else None


class Mosquitto:
    """One broker in `root` listening on 127.0.0.1:`port`, with passwords and ACL files."""

    def __init__(self, root: Path, port: int, service_user: str, service_password: str) -> None:
        self.root = root
        self.port = port
        self.service_user = service_user
        self.service_password = service_password
        self.conf = root / "mosquitto.conf"
        self.password_file = root / "passwd"
        self.acl_file = root / "acl"
        self.log = root / "mosquitto.log"
        self.pid_file = root / "mosquitto.pid"

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
        self.conf.write_text(self._render_conf())
        if not self.password_file.exists():
            self.write_auth([])
        if self.running():
            return
        if port_accepts(self.port):
            raise StackError(f"cannot start Mosquitto: port {self.port} is taken by another process")
        self._launch()

    def stop(self) -> None:
        """Stop the broker; SIGTERM makes it save its persistence file first."""
        pid = self.pid()
        if pid is not None:
            _procs.stop_pid(pid, signal.SIGTERM, timeout_s=60)

    def write_auth(self, devices: Iterable[tuple[str, str]]) -> None:
        """Atomically rewrite the password file (service user + devices) and the ACL."""
        service = (self.service_user, brokerauth.hash_password(self.service_password))
        try:
            passwords = brokerauth.render_password_file([service, *devices])
            acl = brokerauth.render_acl(self.service_user)
        except ValueError as exc:
            raise StackError(f"cannot write broker credentials: {exc}") from exc
        _atomic_write(self.password_file, passwords)
        _atomic_write(self.acl_file, acl)

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

    def _render_conf(self) -> str:
        lines = [
            "# Generated by pulsewire on every start; edit pulsewire/stack instead.",
            "per_listener_settings false",
            f"listener {self.port} {LOOPBACK}",
            "allow_anonymous false",
            f"password_file {self.password_file}",
            f"acl_file {self.acl_file}",
            "persistence true",
            f"persistence_location {self.root / 'data'}",
            # Save sessions every minute too, not only on a clean shutdown.
            "autosave_interval 60",
            "persistent_client_expiration 14d",
            "set_tcp_nodelay true",
            # A persistent ingest session must survive a slow or restarting consumer...
            "max_queued_messages 1000000",
            # ...but one stuck session must not take the whole machine's memory.
            "max_queued_bytes 536870912",
            "memory_limit 2147483648",
            "max_packet_size 2097152",
            # 0 = no broker cap: an MQTT 5 consumer's Receive Maximum decides (ingest acks after commit,
            # so a cap of 200 unacked messages would bound it to ~200 messages per batch commit).
            "max_inflight_messages 0",
            "log_dest stderr",
            # One type per line: Mosquitto ignores all but the first word of a log_type line.
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            f"pid_file {self.pid_file}",
        ]
        if _procs.is_root():
            # As root Mosquitto would otherwise drop to user 'mosquitto', which can
            # neither read our 0600 password file nor write the persistence file.
            lines.append("user root")
        return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    """Replace `path` in one rename, so the broker never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
