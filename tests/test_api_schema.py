"""Property-based run of schemathesis against the OpenAPI schema: no 500s, responses match their schemas.

The schema comes from the app itself (`create_app(...).openapi()`, nothing connects), so each operation
is its own test; the cases are sent to a real uvicorn server with an admin token.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from dashboards import create_app
from pulsewire import registry
from pulsewire.db import connect
from pulsewire.settings import Settings
from tests.fix_api import ApiServer, Users
from tests.fix_db import World

STREAM = "GET /api/v1/alerts/stream"  # never ends: covered by test_api_relay
_OFFLINE = Settings(database_url="postgresql://unused@127.0.0.1:1/x", mqtt_url="mqtt://u:p@127.0.0.1:1")
SCHEMA = schemathesis.openapi.from_dict(create_app(_OFFLINE).openapi())
OPERATIONS = {op.label: op for op in (r.ok() for r in SCHEMA.get_all_operations()) if op.label != STREAM}
ROLES = ("admin", "vendor")  # every route; and the vendor's separate views (unions in the schema)
CHECKS = [schemathesis.checks.not_a_server_error, schemathesis.checks.response_schema_conformance]


@pytest.fixture(scope="module")
def schema_tokens(world: World, users: Users) -> dict[str, tuple[str, int]]:
    """Per role, a token for schemathesis and its id (which the run must not revoke)."""
    made = {}
    with connect(world.db_url, autocommit=True) as c:
        for role in ROLES:
            token = registry.issue_token(c, users.ids[role], "schemathesis")
            row = c.execute("SELECT max(token_id) AS id FROM api_tokens").fetchone()
            assert row is not None
            made[role] = (token, int(row["id"]))
    return made


@pytest.fixture(scope="module")
def http(api: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url) as c:
        yield c


# The server runs in this process: psycopg_pool jitters its reconnections with the global `random`
# from the pool's own thread, which Hypothesis mistakes for a strategy using `random`.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_operation_conforms(
    label: str, role: str, api: ApiServer, schema_tokens: dict[str, tuple[str, int]]
) -> None:
    token, token_id = schema_tokens[role]
    headers = {"Authorization": f"Bearer {token}"}

    @given(case=OPERATIONS[label].as_strategy())
    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: Any) -> None:
        if label.endswith("/tokens/{token_id}") and case.path_parameters.get("token_id") == token_id:
            return
        case.call_and_validate(base_url=api.url, headers=headers, checks=CHECKS)

    run()


def test_schema_run_left_no_server_errors(http: httpx.Client) -> None:
    """Runs after the operations (file order): every request they made is counted in /metrics."""
    text = http.get("/metrics").text
    assert "pulsewire_http_requests_total" in text and 'status="500"' not in text
