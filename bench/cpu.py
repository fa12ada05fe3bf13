"""CPU time of the machine's processes by role, from /proc: where a benchmark phase's CPU went.

Latency on a shared 2-core machine moves with whatever else runs; CPU seconds per second of a role
(ingest, relay, PostgreSQL, ...) move far less, so a phase's figures say what its load cost. A
PostgreSQL backend's time reaches its postmaster's children total when it exits, so short-lived
connections are counted too. Every process on the machine is counted: run on a quiet machine.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
ROLES = ("ingest", "relay", "dashboard", "postgres", "mosquitto", "load", "other")


def _role(pid: str) -> str:
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    if comm in ("postgres", "mosquitto"):
        return comm
    words = [a.decode(errors="replace") for a in args]
    if any("pulsewire.cli" in w or w.endswith("/pulsewire") for w in words):
        for role in ("ingest", "relay", "dashboard"):
            if role in words:
                return role
    if any("multiprocessing" in w or w.startswith("bench.") for w in words):
        return "load"  # the benchmark itself: publishers, receivers, the hostile tenant's clients
    return "other"


def snapshot() -> Counter[str]:
    """CPU seconds used so far by each role's live processes (with their reaped children)."""
    used: Counter[str] = Counter()
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        role = _role(pid)
        if role != "gone":
            # utime, stime, cutime, cstime: fields 14-17 of stat, 12-15 after the command name
            used[role] += sum(int(f) for f in fields[11:15]) / _TICK
    return used


def idle() -> float:
    """CPU seconds the machine's CPUs have spent idle so far (idle and iowait, from /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / _TICK


def percent(before: Counter[str], after: Counter[str], seconds: float) -> dict[str, float]:
    """Each role's share of one CPU over the interval, in percent (200 = two CPUs busy)."""
    used = {role: max(0.0, after[role] - before[role]) for role in ROLES}
    return {f"cpu_{role}_pct": round(100 * used[role] / seconds, 1) for role in ROLES}
