"""Demo logins go only into the private local stack: `pulsewire up --demo` pointed at any other
database refuses, says why, and writes nothing; the check itself accepts the stack's own database."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import psycopg
import pytest

from pulsewire import demo
from pulsewire.errors import ConfigError
from tests.fix_stack import new_state_dir

Conn = psycopg.Connection[dict[str, Any]]


def test_up_demo_refuses_a_database_other_than_the_local_stacks(db_url: str, conn: Conn) -> None:
    state_dir = new_state_dir()  # no local stack there: the database named cannot be its own
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSEWIRE_")}
    env.update(PULSEWIRE_STATE_DIR=str(state_dir), PULSEWIRE_DATABASE_URL=db_url)
    done = subprocess.run(
        [sys.executable, "-m", "pulsewire", "up", "--demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done
    assert "refusing to seed the demo logins" in done.stderr, done.stderr
    assert "PULSEWIRE_DATABASE_URL names a database other than the private local stack's" in done.stderr
    assert "@" not in done.stderr.split(" into ")[1].split(":")[0]  # no credentials in the message
    rows = conn.execute("SELECT email FROM users WHERE email LIKE %s", ("%@demo.pulsewire",)).fetchall()
    assert rows == []
    assert not (state_dir / "stack.json").exists(), "nothing started before the refusal"


def test_the_check_accepts_the_local_stacks_database_only() -> None:
    stack_url = "postgresql://pulsewire@127.0.0.1:5544/pulsewire"
    demo.require_private_database(None, stack_url)  # no PULSEWIRE_DATABASE_URL: the stack's
    demo.require_private_database(stack_url, stack_url)
    with pytest.raises(ConfigError, match=r"127\.0\.0\.1:5545/pulsewire"):
        demo.require_private_database("postgresql://pulsewire@127.0.0.1:5545/pulsewire", stack_url)
    with pytest.raises(ConfigError) as refused:
        demo.require_private_database("postgresql://app:s3cret@db.example:5432/prod", None)
    assert "s3cret" not in str(refused.value) and "db.example:5432/prod" in str(refused.value)
