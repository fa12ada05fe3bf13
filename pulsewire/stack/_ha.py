"""PostgreSQL HA on loopback: a pg_auto_failover monitor, a primary and a synchronous standby.

Each node is a PostgreSQL cluster run by its own `pg_autoctl run` keeper, which reports to the
monitor and carries out the state the monitor assigns; the monitor promotes the standby when the
primary stops answering its health checks. Services reach whichever node is primary through one
multi-host URL with `target_session_attrs=read-write`: libpq tries the hosts in turn and keeps the
one that accepts writes, so a reconnect after a failover finds the new primary by itself.

The monitor and the replication connections of this loopback stack use `trust`, limited in
pg_hba.conf to pg_auto_failover's own roles on 127.0.0.1; the `pulsewire` role logs in with its
password (scram-sha-256). A production formation uses `--auth scram-sha-256` and TLS instead.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pulsewire.errors import StackError
from pulsewire.stack import _procs
from pulsewire.stack._ports import LOOPBACK, wait_for_port
from pulsewire.stack._postgres import DATABASE, PG_USER, ROLE, bin_dir

NODE_NAMES = ("node_a", "node_b")
MONITOR_DB = "pg_auto_failover"
PRIMARY_STATES = frozenset({"single", "primary", "wait_primary", "join_primary", "apply_settings"})
STANDBY_STATES = frozenset({"secondary", "catchingup", "wait_standby"})
# The monitor's health checks, tuned for loopback: a dead primary is noticed and the standby promoted
# in seconds instead of pg_auto_failover's defaults (5 s checks, 20 s before a node counts as unhealthy).
MONITOR_SETTINGS = {
    "pgautofailover.health_check_period": "1000",  # ms between checks
    "pgautofailover.health_check_timeout": "1000",  # ms to connect
    "pgautofailover.health_check_max_retries": "1",
    "pgautofailover.health_check_retry_delay": "500",  # ms
    "pgautofailover.node_considered_unhealthy_timeout": "2000",  # ms without a keeper report
    # How long the monitor waits for an unreachable primary to demote itself before it lets the
    # standby take writes (default 30 s). On loopback an unreachable primary is a dead one.
    "pgautofailover.primary_demote_timeout": "3000",  # ms
}
# The standby's keeper: how long it waits for the old primary's WAL receiver before promoting (s).
KEEPER_SETTINGS = {"timeout.prepare_promotion_walreceiver": "1"}
_NODE_CONF = {
    "listen_addresses": f"'{LOOPBACK}'",
    "max_connections": "200",
    "shared_buffers": "'256MB'",
    "max_wal_size": "'2GB'",
    "wal_compression": "on",
    "synchronous_commit": "on",
}
# First match wins: pg_auto_failover's roles by trust on loopback only, everyone else by password.
_HBA = f"""local all all trust
host {MONITOR_DB} autoctl_node {LOOPBACK}/32 trust
host all pgautofailover_monitor {LOOPBACK}/32 trust
host all pgautofailover_replicator {LOOPBACK}/32 trust
host replication pgautofailover_replicator {LOOPBACK}/32 trust
host all all {LOOPBACK}/32 scram-sha-256
"""


@dataclass(frozen=True)
class HaNode:
    """One PostgreSQL node as the monitor sees it."""

    name: str
    port: int
    state: str
    goal_state: str
    keeper_pid: int | None
    postgres_pid: int | None

    @property
    def role(self) -> str:
        """`primary` (takes writes), `standby` (replicates, may be promoted) or `out` (demoted, failed)."""
        if self.state in PRIMARY_STATES and self.goal_state in PRIMARY_STATES:
            return "primary"
        return "standby" if self.goal_state in STANDBY_STATES else "out"

    def to_json(self) -> dict[str, Any]:
        """As shown by `pulsewire stack status --json`."""
        return {
            "name": self.name, "port": self.port, "role": self.role, "state": self.state,
            "goal_state": self.goal_state, "keeper_pid": self.keeper_pid, "postgres_pid": self.postgres_pid,
        }  # fmt: skip


class HaCluster:
    """The monitor and the two nodes under `root`, on the given loopback ports."""

    def __init__(self, root: Path, monitor_port: int, node_ports: tuple[int, int], password: str) -> None:
        found = bin_dir()
        if found is None:
            raise StackError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = found
        self.root = root
        self.monitor_port = monitor_port
        self.node_ports = node_ports
        self.password = password
        self.socket_dir = root / "run"
        self._superuser = PG_USER if _procs.is_root() else getpass.getuser()

    @property
    def url(self) -> str:
        """The multi-host URL every service uses: libpq keeps the host that accepts writes."""
        hosts = ",".join(f"{LOOPBACK}:{port}" for port in self.node_ports)
        return f"postgresql://{ROLE}:{self.password}@{hosts}/{DATABASE}?target_session_attrs=read-write"

    @property
    def monitor_url(self) -> str:
        """The monitor's URL, as the keepers reach it."""
        return f"postgresql://autoctl_node@{LOOPBACK}:{self.monitor_port}/{MONITOR_DB}?sslmode=disable"

    def pgdata(self, name: str) -> Path:
        """The data directory of `name` (`monitor` or a node name)."""
        return self.root / name / "data"

    def start(self, timeout_s: float = 240) -> None:
        """Create what is missing, start every keeper, wait for a primary and a synchronous standby."""
        self._prepare_dirs()
        if not (self.pgdata("monitor") / "PG_VERSION").exists():
            self._initdb("monitor")
            create = ["create", "monitor", *self._common("monitor", self.monitor_port)]
            self._autoctl(create, "create monitor")
            # pg_autoctl starts the monitor with `-h *` unless told otherwise.
            self._config_set("monitor", "postgresql.listen_addresses", LOOPBACK)
        self._run_keeper("monitor")
        if not wait_for_port(self.monitor_port, 60, lambda: self.keeper_pid("monitor") is not None):
            raise StackError(f"the monitor did not start:\n{_procs.log_tail(self._log('monitor'))}")
        self._tune_monitor()
        deadline = time.monotonic() + timeout_s
        for index, name in enumerate(NODE_NAMES):
            self._start_node(name, self.node_ports[index], first=index == 0)
            self._wait_roles(NODE_NAMES[: index + 1], deadline)
        self._ensure_role()

    def stop(self) -> None:
        """Stop the keepers (each stops its PostgreSQL): standby, primary, then the monitor."""
        roles = {n.name: n.role for n in self.nodes()} if self.keeper_pid("monitor") else {}
        order = sorted(NODE_NAMES, key=lambda n: roles.get(n) == "primary")
        for name in (*order, "monitor"):
            pid = self.keeper_pid(name)
            if pid is not None:
                _procs.stop_pid(pid, signal.SIGTERM, timeout_s=60)
                _reap(pid)

    def keeper_pid(self, name: str) -> int | None:
        """The pid of the `pg_autoctl run` of `name` when it runs."""
        pid = _procs.read_pid(self.root / name / "keeper.pid")
        return pid if pid is not None and _procs.pid_owned(pid, str(self.pgdata(name))) else None

    def postgres_pid(self, name: str) -> int | None:
        """The postmaster's pid of `name` when it runs."""
        pid = _procs.read_pid(self.pgdata(name) / "postmaster.pid")
        return pid if pid is not None and _procs.pid_owned(pid, str(self.pgdata(name))) else None

    def nodes(self) -> list[HaNode]:
        """The nodes with their states, from the monitor (empty when it does not answer)."""
        query = "SELECT nodename, nodeport, reportedstate, goalstate FROM pgautofailover.node ORDER BY 1"
        try:
            with psycopg.connect(self.monitor_url, connect_timeout=3, row_factory=dict_row) as conn:
                rows = conn.execute(query).fetchall()
        except psycopg.Error:
            return []
        return [self._node(r) for r in rows]

    def _node(self, row: dict[str, Any]) -> HaNode:
        name = str(row["nodename"])
        state, goal = str(row["reportedstate"]), str(row["goalstate"])
        return HaNode(name, int(row["nodeport"]), state, goal, self.keeper_pid(name), self.postgres_pid(name))

    def crash(self, name: str) -> None:
        """SIGKILL the node's keeper and PostgreSQL at once, as if its machine died (fault injection).

        Returns once the postmaster is gone: from then on no commit can land on this node.
        """
        postmaster = self.postgres_pid(name)
        _kill_node(self.root, name)
        if postmaster is not None:
            _procs.stop_pid(postmaster, signal.SIGKILL, timeout_s=30)

    def primary(self) -> HaNode | None:
        """The node that takes writes now, if any."""
        return next((n for n in self.nodes() if n.role == "primary"), None)

    def _prepare_dirs(self) -> None:
        for path in (self.root, self.socket_dir, *(self.root / n for n in ("monitor", "xdg", *NODE_NAMES))):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            _procs.chown_to(path, PG_USER)

    def _env(self) -> dict[str, str]:
        # pg_autoctl keeps its configuration and state under XDG directories: ours, not ~postgres.
        xdg = self.root / "xdg"
        return {
            "XDG_CONFIG_HOME": str(xdg / "config"), "XDG_DATA_HOME": str(xdg / "data"),
            "XDG_RUNTIME_DIR": str(xdg / "run"), "PGHOST": str(self.socket_dir), "PGUSER": self._superuser,
        }  # fmt: skip

    def _autoctl(self, args: list[str], what: str) -> str:
        env = [f"{key}={value}" for key, value in self._env().items()]
        cmd = _procs.as_user(PG_USER, ["env", *env, "pg_autoctl", *args])
        return _procs.run(cmd, what=f"pg_autoctl {what}", cwd=self.root, timeout_s=300)

    def _common(self, name: str, port: int) -> list[str]:
        return [
            "--pgdata", str(self.pgdata(name)), "--pgport", str(port), "--hostname", LOOPBACK,
            "--no-ssl", "--skip-pg-hba", "--pgctl", str(self.bindir / "pg_ctl"),
        ]  # fmt: skip

    def _config_set(self, name: str, key: str, value: str) -> None:
        self._autoctl(["config", "set", "--pgdata", str(self.pgdata(name)), key, value], f"config set {key}")

    def _initdb(self, name: str) -> None:
        """initdb ourselves, so our pg_hba.conf and settings are there before PostgreSQL first listens."""
        data = self.pgdata(name)
        cmd = [str(self.bindir / "initdb"), "-D", str(data), "--encoding=UTF8", "--locale=C.UTF-8",
               "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"]  # fmt: skip
        _procs.run(_procs.as_user(PG_USER, cmd), what=f"initdb ({name})", cwd=self.root)
        settings = {**_NODE_CONF, "unix_socket_directories": f"'{self.socket_dir}'"}
        # postgresql.auto.conf is read last (pg_autoctl's own file says listen_addresses = '*') and a
        # base backup copies it, with pg_hba.conf, to the standby.
        for path, text in (
            (data / "postgresql.auto.conf", "".join(f"{k} = {v}\n" for k, v in settings.items())),
            (data / "pg_hba.conf", _HBA),
        ):
            path.write_text(text)
            _procs.chown_to(path, PG_USER)

    def _start_node(self, name: str, port: int, *, first: bool) -> None:
        if not (self.pgdata(name) / "PG_VERSION").exists():
            if first:
                self._initdb(name)
            args = ["create", "postgres", *self._common(name, port), "--name", name, "--listen", LOOPBACK,
                    "--monitor", self.monitor_url, "--dbname", DATABASE]  # fmt: skip
            self._autoctl(args, f"create postgres ({name})")
            for key, value in KEEPER_SETTINGS.items():
                self._config_set(name, key, value)
        self._run_keeper(name)

    def _run_keeper(self, name: str) -> None:
        if self.keeper_pid(name) is not None:
            return
        log = self._log(name)
        user = PG_USER if _procs.is_root() else None
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.root), **self._env()}
        with log.open("ab") as out:
            # A session of its own: the keeper outlives us, and `crash` can kill the whole node.
            keeper = subprocess.Popen(
                ["pg_autoctl", "run", "--pgdata", str(self.pgdata(name))],
                cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, user=user, group=user,
            )  # fmt: skip
        pid_file = self.root / name / "keeper.pid"
        pid_file.write_text(f"{keeper.pid}\n")

    def _log(self, name: str) -> Path:
        return self.root / name / "keeper.log"

    def _tune_monitor(self) -> None:
        with self._superuser_conn(self.monitor_port, MONITOR_DB) as conn:
            for key, value in MONITOR_SETTINGS.items():
                conn.execute(f"ALTER SYSTEM SET {key} = '{value}'")
            conn.execute("SELECT pg_reload_conf()")

    def _wait_roles(self, names: tuple[str, ...], deadline: float) -> None:
        """Wait until every named node has reached its goal and one of them is primary."""
        while True:
            nodes = [n for n in self.nodes() if n.name in names]
            settled = len(nodes) == len(names) and all(n.state == n.goal_state for n in nodes)
            standby = len(names) == 1 or any(n.state == "secondary" for n in nodes)
            if settled and standby and sum(n.role == "primary" for n in nodes) == 1:
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n} ---\n{_procs.log_tail(self._log(n))}" for n in names)
                raise StackError(f"the HA nodes did not settle: {nodes}\n{tails}")
            time.sleep(0.2)

    def _ensure_role(self) -> None:
        primary = self.primary()
        if primary is None:
            raise StackError("no primary after start")
        with self._superuser_conn(primary.port, DATABASE) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            password = self.password.replace("'", "''")
            conn.execute(f"{verb} ROLE {ROLE} SUPERUSER LOGIN PASSWORD '{password}'")

    def _superuser_conn(self, port: int, dbname: str) -> psycopg.Connection[Any]:
        # PostgreSQL accepts on TCP a moment before its Unix socket exists, then refuses until started.
        deadline = time.monotonic() + 60
        while True:
            try:
                return psycopg.connect(
                    host=str(self.socket_dir), port=port, user=self._superuser, dbname=dbname, autocommit=True
                )
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def kill_formation(root: Path) -> None:
    """SIGKILL every keeper of the formation under `root` with all it runs (no graceful stop).

    For a teardown that cannot stop the formation gracefully (a failed or interrupted run): the
    keepers live in sessions of their own, so nothing else ends them.
    """
    for name in ("monitor", *NODE_NAMES):
        _kill_node(root, name)


def _kill_node(root: Path, name: str) -> None:
    data = str(root / name / "data")
    keeper = _procs.read_pid(root / name / "keeper.pid")
    if keeper is not None and _procs.pid_owned(keeper, data):
        # The keeper leads a session of its own: its supervised services and PostgreSQL with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(keeper, signal.SIGKILL)
        _reap(keeper)
    postmaster = _procs.read_pid(root / name / "data" / "postmaster.pid")
    if postmaster is not None and _procs.pid_owned(postmaster, data):
        with contextlib.suppress(ProcessLookupError):
            os.kill(postmaster, signal.SIGKILL)


def _reap(pid: int) -> None:
    """Collect a keeper this process started, so none is left a zombie (our init may never reap it)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
