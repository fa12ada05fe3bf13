"""A hostile or broken rule stays with its rule: refused at the API with the field named, or, when it
is already stored, skipped and recorded on the rule while every other rule, device and org goes on.
Also: the class is derived from what a rule reads, and vendors get event data from a whitelist."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from pulsewire.db import connect
from relay.engine import EngineConfig, evaluate_one, evaluate_pending, pending_devices
from relay.rules import RuleError, derived_class, validate
from relay.tick import check_silences
from relay.views import technical_values
from tests.fix_api import ApiServer, Users, assert_error
from tests.fix_db import World
from tests.relay_support import alerts_of, assert_vendor_safe, commit_batch

Conn = psycopg.Connection[dict[str, Any]]
CFG = EngineConfig()
CATASTROPHIC = "^(a+)+$"
# Exponential for a backtracking engine: Python's `re` would not finish this in our lifetime.
EVIL_INPUT = "a" * 20_000 + "!"


pytestmark = pytest.mark.usefixtures("default_rules")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _insert_rule(conn: Conn, org_id: int | None, key: str, kind: str, params: Any, **kw: Any) -> int:
    """A rule written straight into the table, around validation (as rows from before it were)."""
    row = conn.execute(
        """INSERT INTO rules (key, name, device_kind, provider_org_id, kind, params, severity, class)
           VALUES (%s, %s, %s, %s, %s, %s, 'red', %s) RETURNING rule_id""",
        (
            key,
            key,
            kw.get("device_kind", "implant"),
            org_id,
            kind,
            Jsonb(params),
            kw.get("klass", "technical"),
        ),
    ).fetchone()
    assert row is not None
    return int(row["rule_id"])


def _rule_row(conn: Conn, rule_id: int) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM rules WHERE rule_id = %s", (rule_id,)).fetchone()
    assert row is not None
    return row


def _queue(conn: Conn) -> list[dict[str, Any]]:
    return list(conn.execute("SELECT * FROM eval_queue ORDER BY eval_id"))


def _one_round(db_url: str) -> int:
    with connect(db_url) as c:
        return evaluate_pending(c, CFG)


def _rule(device_kind: str, kind: str, **params: Any) -> dict[str, Any]:
    return {
        "device_kind": device_kind,
        "kind": kind,
        "params": params,
        "severity": "red",
        "klass": "technical",
    }


def _refusal(spec: dict[str, Any]) -> RuleError:
    with pytest.raises(RuleError) as info:
        validate(spec["device_kind"], spec["kind"], spec["params"], spec["severity"], spec["klass"])
    return info.value


# --- validation, without a database -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field", "says"),
    [
        (
            _rule("implant", "event", event_type="battery_status", match={"status": "^["}),
            "params.match.status",
            "RE2",
        ),
        (
            _rule("vehicle", "event", event_type="dtc_set", red_if={"code": "^(a)\\1$"}),
            "params.red_if.code",
            "RE2",
        ),
        (
            _rule("vehicle", "event", event_type="dtc_set", match={"code": "^" + "a" * 300}),
            "params.match.code",
            "256",
        ),
        (
            _rule("implant", "threshold", metric="coolant_temp_c", op=">", value=1),
            "params.metric",
            "unknown metric",
        ),
        (
            _rule("implant", "outside", metrics=["lead_impedance_rv_ohm", "rpm"], low=1, high=2),
            "params.metrics",
            "rpm",
        ),
        (
            _rule(
                "vehicle",
                "threshold",
                metric="rpm",
                op=">",
                value=1,
                when={"metric": "hr", "op": ">", "value": 0},
            ),
            "params.when.metric",
            "unknown metric",
        ),
        (_rule("implant", "event", event_type="dtc_set"), "params.event_type", "unknown event type"),
        (
            _rule("implant", "count", event_types=["vt_episode", "nope"], count=3, window_s=60),
            "params.event_types",
            "nope",
        ),
        (
            _rule("implant", "threshold", metric="charge_time_s", op=">", value=float("nan")),
            "params.value",
            "finite",
        ),
        (
            _rule("implant", "threshold", metric="charge_time_s", op=">", value=float("inf")),
            "params.value",
            "finite",
        ),
        (_rule("implant", "threshold", metric="charge_time_s", op=">", value=True), "params.value", "number"),
        (_rule("implant", "threshold", metric="charge_time_s", op=">", value="15"), "params.value", "number"),
        (
            _rule("implant", "count", event_types=["vt_episode"], count=3, window_s=0),
            "params.window_s",
            "above 0",
        ),
        (
            _rule("implant", "count", event_types=["vt_episode"], count=10**6, window_s=60),
            "params.count",
            "at most",
        ),
        (
            _rule("implant", "count", event_types=["vt_episode"], count=2.5, window_s=60),
            "params.count",
            "whole",
        ),
        (_rule("implant", "anomaly", metric="r_wave_mv", z=3, method="magic"), "params.method", "zscore"),
        (
            _rule("implant", "threshold", metric="charge_time_s", op=">", value=1, shell="rm"),
            "params.shell",
            "not a",
        ),
        (_rule("implant", "outside", metrics=["r_wave_mv"], low=5, high=1), "params.low", "above high"),
        (
            _rule("implant", "event", event_type="battery_status", match={"status": {"$ne": 1}}),
            "params.match.status",
            "",
        ),
    ],
)
def test_bad_params_are_refused_naming_the_field(spec: dict[str, Any], field: str, says: str) -> None:
    error = _refusal(spec)
    assert error.field == field and str(error).startswith(f"{field}: ") and says in str(error)


def test_the_defaults_pass_the_same_validation() -> None:
    from relay.rules import load_defaults

    assert sum(len(rows) for rows in load_defaults().values()) == 24


def test_catastrophic_pattern_is_accepted_and_matched_in_linear_time() -> None:
    """RE2 has no backtracking: the classic `^(a+)+$` on 20,000 a's and a '!' finishes at once.

    Run in a child process: were it Python's `re`, it would hold the GIL for ever; the bound below is
    a deadline for a hang, not a measurement.
    """
    validate(
        "implant",
        "event",
        {"event_type": "device_reset", "match": {"reason": CATASTROPHIC}},
        "red",
        "technical",
    )
    code = f"""
from datetime import UTC, datetime
from relay.evaluate import Event, step
from relay.rules import Rule
rule = Rule("t.evil", "evil", "event", "red", "technical", {{"event_type": "device_reset",
            "match": {{"reason": {CATASTROPHIC!r}}}}})
miss = step(rule, {{}}, Event(datetime.now(UTC), "device_reset", {{"reason": {EVIL_INPUT!r}}}))
hit = step(rule, {{}}, Event(datetime.now(UTC), "device_reset", {{"reason": "a" * 20_000}}))
print(len(miss), len(hit))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "1"]


def test_class_is_derived_from_what_the_rule_reads() -> None:
    assert derived_class("implant", "threshold", {"metric": "heart_rate_bpm"}, "technical") == "clinical"
    assert derived_class("implant", "event", {"event_type": "shock_delivered"}, "technical") == "clinical"
    assert (
        derived_class("implant", "count", {"event_types": ["device_reset", "vt_episode"]}, "technical")
        == "clinical"
    )
    gate = {"metric": "speed_kmh", "when": {"metric": "lat", "op": ">", "value": 0}}
    assert derived_class("vehicle", "threshold", gate, "technical") == "clinical"
    # Technical reads stay as asked: a provider may keep a car's own health from the dongle's vendor.
    assert derived_class("vehicle", "threshold", {"metric": "coolant_temp_c"}, "clinical") == "clinical"
    assert derived_class("implant", "threshold", {"metric": "charge_time_s"}, "technical") == "technical"


def test_vendor_alert_values_follow_the_event_whitelist() -> None:
    values = {"event_type": "battery_status", "status": "ERI", "note": "Ada fainted", "level_mv": 2400}
    assert technical_values(values) == {"event_type": "battery_status", "status": "ERI"}
    assert technical_values({"event_type": "device_reset", "count": 4}) == {
        "event_type": "device_reset",
        "count": 4,
    }
    assert technical_values({"event_type": "vt_episode", "count": 3}) == {}
    assert technical_values({"charge_time_s": 17.5, "heart_rate_bpm": 190}) == {"charge_time_s": 17.5}


# --- the API ------------------------------------------------------------------------------------------------

RULE = {
    "key": "implant.charge_slow",
    "name": "Charge time slow",
    "device_kind": "implant",
    "kind": "threshold",
    "severity": "yellow",
    "class": "technical",
    "params": {"metric": "charge_time_s", "op": ">", "value": 14, "for_s": 0},
}


def _post_raw(client: httpx.Client, body: str) -> httpx.Response:
    return client.post("/api/v1/rules", content=body, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"event_type": "battery_status", "match": {"status": "^["}}, "params.match.status"),
        ({"event_type": "dtc_set"}, "params.event_type"),
        ({"event_type": "battery_status", "match": {"status": "^" + "(a)" * 200}}, "params.match.status"),
    ],
)
def test_api_refuses_bad_event_rules_with_422_naming_the_field(
    clients: dict[str, httpx.Client], params: dict[str, Any], field: str
) -> None:
    body = {**RULE, "key": "implant.bad_event", "kind": "event", "params": params}
    error = assert_error(clients["provider"].post("/api/v1/rules", json=body), 422)
    assert error["message"].startswith(f"{field}: "), error


def test_api_refuses_unknown_metric_nan_and_infinity(clients: dict[str, httpx.Client]) -> None:
    unknown = {**RULE, "params": {**RULE["params"], "metric": "rpm"}}
    assert_error(clients["provider"].post("/api/v1/rules", json=unknown), 422)["message"].startswith(
        "params.metric"
    )
    # JSON has no NaN or Infinity, but Python's parser accepts them (and 1e999 overflows to inf).
    for number in ("NaN", "Infinity", "-Infinity", "1e999"):
        body = json.dumps(RULE).replace('"value": 14', f'"value": {number}')
        error = assert_error(_post_raw(clients["provider"], body), 422)
        assert error["message"].startswith("params.value: must be a finite number"), error
    window = {
        **RULE,
        "kind": "count",
        "params": {"event_types": ["device_reset"], "count": 2, "window_s": -5},
    }
    assert_error(clients["provider"].post("/api/v1/rules", json=window), 422)["message"].startswith(
        "params.window_s"
    )
    names = [r["key"] for r in clients["provider"].get("/api/v1/rules").json()]
    assert "implant.charge_slow" not in names  # nothing half-created


def test_clinical_rule_asked_as_technical_is_created_clinical(clients: dict[str, httpx.Client]) -> None:
    body = {
        **RULE,
        "key": "implant.hr_fast",
        "params": {"metric": "heart_rate_bpm", "op": ">", "value": 150, "for_s": 0},
    }
    created = clients["provider"].post("/api/v1/rules", json=body)
    assert created.status_code == 201, created.text
    rule = created.json()
    assert rule["class"] == "clinical" and rule["error_count"] == 0 and rule["last_error"] is None
    # Asking again through a patch changes nothing: the answer says what the rule is.
    patched = clients["provider"].patch(f"/api/v1/rules/{rule['rule_id']}", json={"class": "technical"})
    assert patched.status_code == 200 and patched.json()["class"] == "clinical"
    shock = {
        **RULE,
        "key": "implant.shock_tech",
        "kind": "event",
        "params": {"event_type": "shock_delivered"},
    }
    assert clients["provider"].post("/api/v1/rules", json=shock).json()["class"] == "clinical"


def test_patch_is_validated_like_create(clients: dict[str, httpx.Client]) -> None:
    body = {**RULE, "key": "implant.reset_reason", "kind": "event", "params": {"event_type": "device_reset"}}
    rule = clients["provider"].post("/api/v1/rules", json=body).json()
    bad = {"params": {"match": {"reason": "^(unclosed"}}}
    error = assert_error(clients["provider"].patch(f"/api/v1/rules/{rule['rule_id']}", json=bad), 422)
    assert error["message"].startswith("params.match.reason: not a valid RE2 pattern"), error
    nan = '{"params": {"event_type": "device_reset", "match": {"code": NaN}}}'
    response = clients["provider"].patch(
        f"/api/v1/rules/{rule['rule_id']}", content=nan, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 422)
    current = next(
        r for r in clients["provider"].get("/api/v1/rules").json() if r["rule_id"] == rule["rule_id"]
    )
    assert current["params"] == {"event_type": "device_reset"}


# --- evaluation: a broken rule fails alone ------------------------------------------------------------------


def test_broken_rules_of_one_org_do_not_stop_another_orgs_alerts(
    conn: Conn, world: World, users: Users, db_url: str, clients: dict[str, httpx.Client]
) -> None:
    """Org A (the clinic) has rules that fail in every way we know: a stored invalid regex, a stored
    row of nonsense, a catastrophic (valid) pattern, a rule whose stored state is corrupt (raises in
    the step) and one whose alert write fails in PostgreSQL. Each round, B's alert is raised, A's
    other rules still fire, the queue is empty, and A's failures are recorded on A's rules."""
    world.add_device("icd-hostile")
    world.add_device("veh-victim", kind="vehicle")
    bad_match = {"event_type": "battery_status", "match": {"status": "^["}}
    bad_regex = _insert_rule(conn, world.clinic_id, "clinic.bad_regex", "event", bad_match)
    nonsense = _insert_rule(
        conn, world.clinic_id, "clinic.nonsense", "threshold", {"metric": ["x"], "op": ">", "value": 1}
    )
    evil = {
        **RULE,
        "key": "implant.evil",
        "kind": "event",
        "params": {"event_type": "device_reset", "match": {"reason": CATASTROPHIC}},
    }
    assert clients["provider"].post("/api/v1/rules", json=evil).status_code == 201
    short = {
        **RULE,
        "key": "clinic.hv_short",
        "params": {"metric": "hv_impedance_ohm", "op": "<", "value": 20},
    }
    corrupt = clients["provider"].post("/api/v1/rules", json=short).json()["rule_id"]
    conn.execute(
        "INSERT INTO rule_state (device_id, rule_key, state) VALUES (%s, %s, %s)",
        ("icd-hostile", "clinic.hv_short", Jsonb({"phase": "active", "since": "garbage"})),
    )
    t = _now() - timedelta(seconds=30)
    hostile = [(t, "battery_status", {"status": "ERI"}), (t, "device_reset", {"reason": EVIL_INPUT})]
    commit_batch(conn, "icd-hostile", [(t, "hv_impedance_ohm", 10.0)], hostile)  # queued first
    commit_batch(conn, "veh-victim", events=[(t, "dongle_unplugged", {})])

    assert _one_round(db_url) == 2
    assert _queue(conn) == []
    assert [a["rule_key"] for a in alerts_of(conn, "veh-victim")] == ["vehicle.dongle_unplugged"]
    fired = {a["rule_key"] for a in alerts_of(conn, "icd-hostile")}
    assert {"implant.battery_eri", "implant.device_reset", "implant.hv_impedance_low"} <= fired
    assert not fired & {"implant.evil", "clinic.bad_regex", "clinic.nonsense", "clinic.hv_short"}
    broken = _rule_row(conn, bad_regex)
    assert broken["error_count"] == 1 and broken["last_error_at"] is not None
    assert "icd-hostile" in broken["last_error"] and "missing ]" in broken["last_error"]
    assert _rule_row(conn, nonsense)["last_error"].startswith("device icd-hostile: params.metric")
    assert _rule_row(conn, corrupt)["last_error"].startswith("device icd-hostile: TypeError")

    # Next round: A's battery alert cannot be updated (its counter is at the integer limit). That
    # rule's write is undone alone; the device-reset alert of the same device, same batch, counts.
    conn.execute(
        "UPDATE alerts SET occurrences = 2147483647 WHERE device_id = 'icd-hostile'"
        " AND rule_key = 'implant.battery_eri'"
    )
    later = t + timedelta(seconds=5)
    again = [(later, "battery_status", {"status": "EOS"}), (later, "device_reset", {"reason": "wdt"})]
    commit_batch(conn, "icd-hostile", events=again)
    commit_batch(conn, "veh-victim", events=[(later, "dongle_unplugged", {})])
    assert _one_round(db_url) == 2 and _queue(conn) == []
    assert _rule_row(conn, bad_regex)["error_count"] == 2
    assert alerts_of(conn, "veh-victim")[0]["occurrences"] == 2
    occurrences = {a["rule_key"]: a["occurrences"] for a in alerts_of(conn, "icd-hostile")}
    assert occurrences["implant.device_reset"] == 2
    global_eri = conn.execute(
        "SELECT * FROM rules WHERE key = 'implant.battery_eri' AND provider_org_id IS NULL"
    ).fetchone()
    assert global_eri is not None and global_eri["error_count"] == 1
    assert global_eri["last_error"] == "NumericValueOutOfRange (details in the relay log)"
    conn.execute(
        "UPDATE rules SET last_error = NULL, error_count = 0 WHERE rule_id = %s", (global_eri["rule_id"],)
    )

    # A sees the errors in the API; B does not see A's rules at all.
    listed = {r["rule_id"]: r for r in clients["provider"].get("/api/v1/rules").json()}
    assert listed[bad_regex]["error_count"] == 2 and "missing ]" in listed[bad_regex]["last_error"]
    assert listed[bad_regex]["last_error_at"] is not None
    assert bad_regex not in {r["rule_id"] for r in clients["provider2"].get("/api/v1/rules").json()}

    # Fixing the rule through the API clears its record.
    fixed = clients["provider"].patch(
        f"/api/v1/rules/{bad_regex}", json={"params": {"match": {"status": "^E.S$"}}}
    )
    assert fixed.status_code == 200, fixed.text
    assert (fixed.json()["error_count"], fixed.json()["last_error"]) == (0, None)


def test_rules_page_shows_the_recorded_error(conn: Conn, world: World, users: Users, api: ApiServer) -> None:
    bad_match = {"event_type": "transmission", "match": {"kind": "^("}}
    rule_id = _insert_rule(conn, world.clinic_id, "clinic.page_regex", "event", bad_match)
    commit_batch(conn, "icd-a", events=[(_now(), "transmission", {"kind": "scheduled"})])
    assert _one_round(world.db_url) == 1
    with httpx.Client(base_url=api.url, headers={"Accept": "text/html"}, timeout=10) as web:
        login = web.get("/login").text
        token = login.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        signed = web.post(
            "/login",
            data={
                "email": "provider@example.org",
                "password": "provider-secret-pw",
                "csrf_token": token,
                "next": "/",
            },
        )
        assert signed.status_code == 303, signed.text
        page = web.get("/rules")
        assert page.status_code == 200
        row = page.text.split(f'id="rule-{rule_id}"', 1)[1].split("</tr>", 1)[0]
        assert 'data-errors="1"' in row and "missing )" in row and "icd-a" in row
        assert 'href="/rules"' in page.text
    with httpx.Client(base_url=api.url, headers={"Accept": "text/html"}, timeout=10) as web:
        login = web.get("/login").text
        token = login.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        web.post(
            "/login",
            data={"email": "vendor@example.org", "password": "vendor-secret-pw", "csrf_token": token},
        )
        assert web.get("/rules").status_code == 403


def test_a_failing_global_default_tells_other_orgs_no_device_or_data(
    conn: Conn, world: World, db_url: str
) -> None:
    rule_id = _insert_rule(
        conn,
        None,
        "implant.global_bad",
        "event",
        {"event_type": "integrity_fault", "match": {"code": "^[z-a]$"}},
    )
    world.add_device("icd-global")
    commit_batch(conn, "icd-global", events=[(_now(), "integrity_fault", {"code": "Ada Patient"})])
    assert _one_round(db_url) == 1 and _queue(conn) == []
    text = _rule_row(conn, rule_id)["last_error"]
    assert text.startswith("params.match.code: not a valid RE2 pattern"), text
    assert "icd-global" not in text and "Ada" not in text
    conn.execute("DELETE FROM rules WHERE rule_id = %s", (rule_id,))


def test_a_device_that_fails_as_a_whole_waits_and_loses_nothing(
    conn: Conn, world: World, db_url: str
) -> None:
    """Corrupt stored state fails the whole device (not one rule): its batches wait with a delay and
    the error, the other device is evaluated in the same round, and once repaired nothing is lost."""
    world.add_device("icd-corrupt")
    world.add_device("veh-next", kind="vehicle")
    conn.execute(
        "INSERT INTO rule_state (device_id, rule_key, state)"
        " VALUES ('icd-corrupt', 'implant.battery_eri', '[1, 2]')"
    )
    t = _now() - timedelta(seconds=10)
    commit_batch(conn, "icd-corrupt", events=[(t, "battery_status", {"status": "ERI"})])
    commit_batch(conn, "veh-next", events=[(t, "dongle_unplugged", {})])
    assert _one_round(db_url) == 1
    assert [a["rule_key"] for a in alerts_of(conn, "veh-next")] == ["vehicle.dongle_unplugged"]
    assert [q["device_id"] for q in _queue(conn)] == ["icd-corrupt"]  # kept, untouched
    waiting = conn.execute("SELECT * FROM eval_retry WHERE device_id = 'icd-corrupt'").fetchone()
    assert waiting is not None and waiting["attempts"] == 1
    assert waiting["retry_at"] > datetime.now(UTC) and "TypeError" in waiting["last_error"]
    with connect(db_url) as c:
        assert "icd-corrupt" not in pending_devices(c)
    assert _one_round(db_url) == 0  # still waiting: the round skips it
    with connect(db_url) as c:  # and so does the engine when a notification names the device
        assert evaluate_one(c, "icd-corrupt", EngineConfig()) == 0
    assert [q["device_id"] for q in _queue(conn)] == ["icd-corrupt"]
    assert conn.execute("SELECT attempts FROM eval_retry").fetchone() == {"attempts": 1}
    conn.execute("DELETE FROM rule_state WHERE device_id = 'icd-corrupt'")
    conn.execute("UPDATE eval_retry SET retry_at = now() - interval '1 second'")
    assert _one_round(db_url) == 1 and _queue(conn) == []
    assert conn.execute("SELECT * FROM eval_retry").fetchall() == []
    assert [a["rule_key"] for a in alerts_of(conn, "icd-corrupt")] == ["implant.battery_eri"]


def test_a_broken_absence_rule_does_not_stop_the_silence_check(conn: Conn, world: World) -> None:
    """Before validation at load, `factor: "x"` raised in the tick and no silent device was reported."""
    rule_id = _insert_rule(conn, world.clinic_id, "clinic.silent_bad", "absence", {"factor": "x"})
    world.add_device("icd-silent")
    world.add_device("veh-silent", kind="vehicle")
    conn.execute(
        "UPDATE devices SET created_at = now() - interval '3 days'"
        " WHERE device_id IN ('icd-silent', 'veh-silent')"
    )
    opened = check_silences(conn, CFG)
    assert {a["rule_key"] for a in alerts_of(conn, "veh-silent")} == {"vehicle.heartbeat_missed"}
    assert {a["rule_key"] for a in alerts_of(conn, "icd-silent")} == {"implant.monitor_silent"}
    assert len(opened) >= 2
    assert _rule_row(conn, rule_id)["last_error"].startswith("device ")
    assert "params.factor: must be a number" in _rule_row(conn, rule_id)["last_error"]
    conn.execute("DELETE FROM rules WHERE rule_id = %s", (rule_id,))


# --- vendors and event data ---------------------------------------------------------------------------------


def test_vendor_gets_whitelisted_event_fields_only(
    conn: Conn, world: World, users: Users, clients: dict[str, httpx.Client]
) -> None:
    world.add_device("icd-events")
    t = _now() - timedelta(minutes=5)
    data = [
        ("battery_status", {"status": "ERI", "note": "Ada Patient fainted", "level_mv": 2400}),
        ("device_reset", {"reason": "watchdog", "dump": {"owner": "Ada Patient"}}),
        ("transmission", {"kind": "alert", "kind_detail": "x" * 50}),
        ("integrity_fault", {"code": "F12", "lat": 51.5}),
        ("af_episode", {"duration_s": 400}),
    ]
    for i, (etype, payload) in enumerate(data):
        conn.execute(
            "INSERT INTO events (ts, device_id, boot_id, seq, type, data)"
            " VALUES (%s, 'icd-events', 'b', %s, %s, %s)",
            (t + timedelta(seconds=i), i, etype, Jsonb(payload)),
        )
    vendor = clients["vendor"].get("/api/v1/devices/icd-events/events").json()["items"]
    seen = {e["type"]: e["data"] for e in vendor}
    assert seen == {
        "battery_status": {"status": "ERI"},
        "device_reset": {"reason": "watchdog"},
        "transmission": {"kind": "alert"},
        "integrity_fault": {"code": "F12"},
    }
    assert_vendor_safe(vendor)
    provider = clients["provider"].get("/api/v1/devices/icd-events/events").json()["items"]
    assert {e["type"]: e["data"] for e in provider}["battery_status"]["note"] == "Ada Patient fainted"
