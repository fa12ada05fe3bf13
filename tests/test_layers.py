"""Imports point one way: schemas imports nothing of ours; services import schemas and the shared
runtime, never each other; only the dashboard's HTTP layer speaks HTTP; and no module of ours is
part of an import cycle."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
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
# The dashboard's HTTP layer: the app, its routes and their dependencies (`access` binds the request's
# actor for them), the status table, the security headers' middleware.
HTTP_LAYER = (
    "dashboards/access.py",
    "dashboards/app.py",
    "dashboards/deps.py",
    "dashboards/errors.py",
    "dashboards/security_headers.py",
    "dashboards/api/",
    "dashboards/web/",
)
# What code below the routes may take from the web frameworks: running a blocking call off the loop.
BELOW_ROUTES_MAY_IMPORT = {"starlette.concurrency"}


def _sources() -> Iterator[Path]:
    for package in sorted(OURS):
        yield from sorted((ROOT / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import the module runs, at module level or in functions; not those under TYPE_CHECKING."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imported_modules(path: Path, known: set[str]) -> set[str]:
    """Our modules this file imports: `from pkg import sub` counts as `pkg.sub` when that is a module."""
    module = _module_name(path)
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
            continue
        target = _absolute(node, module, path.name == "__init__.py")
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            found.add(sub if sub in known else target)
    return {name for name in found if name in known}


@functools.cache
def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in _sources()}
    known = set(paths)
    return {name: _imported_modules(path, known) - {name} for name, path in paths.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if start in state:
            continue
        path = [start]
        todo = [iter(sorted(graph[start]))]
        state[start] = 1
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                todo.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                todo.append(iter(sorted(graph[nxt])))
    return None


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ENTRY_POINTS:
            continue
        for target in {name.split(".")[0] for name in _graph()[_module_name(path)]} - ALLOWED[package]:
            bad.append(f"{rel} imports {target}")
    assert bad == []


def test_no_import_cycles() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_web_submodules_never_import_their_package() -> None:
    graph = _graph()
    offenders = [
        name
        for name, targets in graph.items()
        if name.startswith("dashboards.web.") and "dashboards.web" in targets
    ]
    assert offenders == []


def _http_imports(path: Path) -> list[str]:
    """The web-framework modules and HTTP error types a file imports."""
    found = []
    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        for name in names:
            if name.split(".")[0] in ("fastapi", "starlette") and name not in BELOW_ROUTES_MAY_IMPORT:
                found.append(name)
            if name == "dashboards.errors":
                found.append(name)
    return found


def test_only_the_http_layer_speaks_http() -> None:
    offenders = {
        rel: imports
        for path in _sources()
        if not (rel := path.relative_to(ROOT).as_posix()).startswith(HTTP_LAYER)
        and (imports := _http_imports(path))
    }
    assert offenders == {}


def test_nothing_outside_the_http_layer_names_http_exceptions() -> None:
    offenders = [
        rel
        for path in _sources()
        if not (rel := path.relative_to(ROOT).as_posix()).startswith(HTTP_LAYER)
        and any(word in path.read_text() for word in ("HTTPException", "ApiError"))
    ]
    assert offenders == []
