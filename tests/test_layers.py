"""Imports point one way: schemas imports nothing of ours; services import schemas and the shared
runtime, never each other; only dashboards speaks HTTP (raises HTTPException)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"pulsewire", "schemas", "ingest", "relay", "devices", "dashboards"}
ALLOWED = {
    "schemas": {"schemas"},
    "pulsewire": {"schemas", "pulsewire"},
    "ingest": {"schemas", "pulsewire", "ingest"},
    "relay": {"schemas", "pulsewire", "relay"},
    "devices": {"schemas", "pulsewire", "devices"},
    "dashboards": {"schemas", "pulsewire", "relay", "dashboards"},
}
# The CLI and `pulsewire up` start the services by name; that is the one sanctioned upward edge.
ENTRY_POINTS = {"pulsewire/cli.py", "pulsewire/up.py"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ENTRY_POINTS:
            continue
        for target in _imports(path) - ALLOWED[package]:
            bad.append(f"{rel} imports {target}")
    assert bad == []


def test_only_dashboards_raises_http_errors() -> None:
    offenders = [
        path.relative_to(ROOT).as_posix()
        for package in ALLOWED.keys() - {"dashboards"}
        for path in (ROOT / package).rglob("*.py")
        if "HTTPException" in path.read_text()
    ]
    assert offenders == []
