"""Processes of the local stack: running commands, finding and stopping our own servers.

The servers daemonise, so they are not our children: we find them through their pid
files and make sure a pid still belongs to *our* server (its command line names our
state directory) before we signal it, since a stale pid may have been reused.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from pulsewire.errors import StackError


def is_root() -> bool:
    """Whether we run as root (and so must hand PostgreSQL to its own user)."""
    return os.geteuid() == 0


def as_user(user: str, cmd: Sequence[str]) -> list[str]:
    """Prefix `cmd` so it runs as `user` when we are root; unchanged otherwise."""
    if is_root():
        return ["runuser", "-u", user, "--", *cmd]
    return list(cmd)


def chown_to(path: Path, user: str) -> None:
    """Give `path` to `user` when we are root (PostgreSQL refuses root-owned data)."""
    if is_root():
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def run(
    cmd: Sequence[str], *, what: str, cwd: Path, env: Mapping[str, str] | None = None, timeout_s: float = 120
) -> str:
    """Run `cmd` to completion; raise StackError naming `what` with its output on failure."""
    try:
        done = subprocess.run(
            list(cmd),
            cwd=cwd,
            env=None if env is None else {**os.environ, **env},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StackError(f"{what} failed: {exc}") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()
        raise StackError(f"{what} failed (exit {done.returncode}):\n{output}")
    return done.stdout


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie counts as gone (our init may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in {"Z", "X"}


def pid_owned(pid: int, marker: str) -> bool:
    """Whether `pid` is alive and its command line contains `marker` (our path)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return pid_alive(pid) and marker.encode() in cmdline


def read_pid(pid_file: Path) -> int | None:
    """The pid on the first line of `pid_file`, or None when absent or garbled."""
    try:
        first = pid_file.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def stop_pid(pid: int, sig: signal.Signals, timeout_s: float) -> None:
    """Send `sig` to `pid`, wait for it to exit, SIGKILL it if it will not."""
    for current in (sig, signal.SIGKILL):
        try:
            os.kill(pid, current)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)
    raise StackError(f"process {pid} did not exit after SIGKILL")


def log_tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])
