"""Relay fixtures: the shipped default rules in the module's database.

A module that evaluates with the default rules says so once::

    pytestmark = pytest.mark.usefixtures("default_rules")
"""

from __future__ import annotations

import pytest

from pulsewire.db import connect
from relay.rules import seed_defaults


@pytest.fixture(scope="module")
def default_rules(db_url: str) -> None:
    """The default rules, seeded once for the module's database."""
    with connect(db_url, autocommit=True) as c:
        seed_defaults(c)
