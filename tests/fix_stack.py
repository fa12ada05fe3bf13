"""Pytest plugin: one real local stack (PostgreSQL + Mosquitto) per test session.

Load it with `pytest_plugins = ["tests.fix_stack"]`. Nothing is skipped: missing
packages are installed by `ensure_packages()` when root, otherwise the session fails.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulsewire.stack import Stack, StackInfo


def new_state_dir() -> Path:
    """A fresh state dir the `postgres` user can reach (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="pulsewire-test-"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """A `Stack` that is up for the whole session and torn down at its end."""
    state_dir = new_state_dir()
    session_stack = Stack(state_dir)
    try:
        session_stack.up()
        yield session_stack
    finally:
        session_stack.down()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def stack_info(stack: Stack) -> StackInfo:
    """The session stack's URLs and ports."""
    info = stack.status()
    assert info is not None and info.running, "the session stack is not running"
    return info
