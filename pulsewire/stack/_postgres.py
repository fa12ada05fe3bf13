"""A private PostgreSQL cluster under the state directory.

Tuned for ingest throughput without giving up durability: synchronous_commit and
fsync stay on; a big shared_buffers and max_wal_size spread checkpoints out instead.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import psycopg

from pulsewire.errors import StackError
from pulsewire.stack import _procs
from pulsewire.stack._ports import LOOPBACK, port_accepts

PG_USER = "postgres"
ROLE = "pulsewire"
DATABASE = "pulsewire"
# A Unix socket path must fit in sockaddr_un (107 bytes) with ".s.PGSQL.<port>" appended.
_MAX_SOCKET_DIR = 90


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian layout), if any."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return candidates[-1].parent if candidates else None


def timescaledb_available(bindir: Path) -> bool:
    """Whether the TimescaleDB extension is installed for this PostgreSQL."""
    version = bindir.parent.name
    return any(Path(f"/usr/lib/postgresql/{version}/lib").glob("timescaledb*.so"))


class Postgres:
    """One cluster in `root` (data, log, socket), listening on 127.0.0.1:`port`."""

    def __init__(self, root: Path, port: int, password: str) -> None:
        found = bin_dir()
        if found is None:
            raise StackError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = found
        self.root = root
        self.data = root / "data"
        self.log = root / "log" / "postgres.log"
        self.socket_dir = root / "run"
        self.port = port
        self.password = password

    @property
    def url(self) -> str:
        """The libpq URL of the `pulsewire` database as the `pulsewire` superuser."""
        return f"postgresql://{ROLE}:{self.password}@{LOOPBACK}:{self.port}/{DATABASE}"

    @property
    def timescaledb(self) -> bool:
        """Whether the cluster preloads TimescaleDB."""
        return timescaledb_available(self.bindir)

    def pid(self) -> int | None:
        """The postmaster's pid when it runs from our data directory, else None."""
        pid = _procs.read_pid(self.data / "postmaster.pid")
        if pid is not None and _procs.pid_owned(pid, str(self.data)):
            return pid
        return None

    def running(self) -> bool:
        """Whether our postmaster runs."""
        return self.pid() is not None

    def start(self) -> None:
        """Create the cluster if needed, start it (no-op when running), create the database."""
        self._prepare_dirs()
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        self._write_conf()
        if not self.running():
            self._pg_ctl_start()
        self._ensure_database()

    def stop(self) -> None:
        """Fast shutdown of our postmaster (rolls back open transactions, keeps data)."""
        pid = self.pid()
        if pid is not None:
            _procs.stop_pid(pid, signal.SIGINT, timeout_s=60)

    def _prepare_dirs(self) -> None:
        for path in (self.root, self.log.parent, self.socket_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            _procs.chown_to(path, PG_USER)
        if _procs.is_root():
            # A 0700 parent (pytest's tmp_path, /root) stops the postgres user dead;
            # say so now instead of letting initdb fail obscurely.
            probe = _procs.as_user(PG_USER, ["test", "-w", str(self.root), "-a", "-x", str(self.root)])
            try:
                _procs.run(probe, what="access check", cwd=Path("/"))
            except StackError as exc:
                raise StackError(
                    f"the '{PG_USER}' system user cannot reach {self.root}: make every parent "
                    "directory traversable (chmod o+x) or choose another PULSEWIRE_STATE_DIR"
                ) from exc

    def _initdb(self) -> None:
        pwfile = self.root / "initdb.pw"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        _procs.chown_to(pwfile, PG_USER)
        try:
            cmd = [
                str(self.bindir / "initdb"), "-D", str(self.data), "-U", ROLE, f"--pwfile={pwfile}",
                "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions",
            ]  # fmt: skip
            _procs.run(_procs.as_user(PG_USER, cmd), what="initdb", cwd=self.root)
        finally:
            pwfile.unlink(missing_ok=True)
        conf = self.data / "postgresql.conf"
        with conf.open("a") as handle:
            handle.write("\ninclude 'pulsewire.conf'\n")

    def _write_conf(self) -> None:
        socket_dir = str(self.socket_dir) if len(str(self.socket_dir)) <= _MAX_SOCKET_DIR else ""
        settings = {
            "listen_addresses": f"'{LOOPBACK}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{socket_dir}'",
            "max_connections": "200",
            "shared_buffers": "'512MB'",
            "max_wal_size": "'4GB'",
            "wal_compression": "on",
            "checkpoint_timeout": "'15min'",
            "synchronous_commit": "on",
            "fsync": "on",
        }
        if self.timescaledb:
            settings["shared_preload_libraries"] = "'timescaledb'"
            settings["timescaledb.telemetry_level"] = "off"
        lines = ["# Generated by pulsewire on every start; edit pulsewire/stack instead."]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        target = self.data / "pulsewire.conf"
        target.write_text("\n".join(lines) + "\n")
        _procs.chown_to(target, PG_USER)

    def _pg_ctl_start(self) -> None:
        if port_accepts(self.port):
            raise StackError(f"cannot start PostgreSQL: port {self.port} is taken by another process")
        # A postmaster.pid left by a crash may name a pid reused by someone else,
        # which would make PostgreSQL refuse to start; ours is known not to run.
        with contextlib.suppress(FileNotFoundError):
            (self.data / "postmaster.pid").unlink()
        pg_ctl = str(self.bindir / "pg_ctl")
        cmd = [pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"]
        try:
            _procs.run(_procs.as_user(PG_USER, cmd), what="pg_ctl start", cwd=self.root, timeout_s=90)
        except StackError as exc:
            raise StackError(f"{exc}\n--- {self.log} ---\n{_procs.log_tail(self.log)}") from exc

    def _ensure_database(self) -> None:
        admin = f"postgresql://{ROLE}:{self.password}@{LOOPBACK}:{self.port}/postgres"
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
                if exists is None:
                    conn.execute(f'CREATE DATABASE "{DATABASE}"')
        except psycopg.Error as exc:
            raise StackError(f"cannot create database {DATABASE!r}: {exc}") from exc
