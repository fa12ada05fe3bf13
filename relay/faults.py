"""Faults that stay where they happen: a rule that fails on one device, a device whose evaluation fails.

A rule's fault is recorded on the rule (`last_error`, `error_count`, `last_error_at`) for its
provider to see in the API and on the rules page; the rule is skipped for that device and every
other rule and device goes on. A device whose evaluation fails as a whole (not in one rule) has its
queued batches put back with a growing delay, so it never holds up the queue and loses nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg

Conn = psycopg.Connection[dict[str, Any]]
log = logging.getLogger("pulsewire.relay")

ERROR_MAX_CHARS = 500
DEVICE_RETRY_MAX_S = 300
_LOGGED_MAX = 10_000
_logged: set[tuple[int | None, str]] = set()


@dataclass(frozen=True)
class RuleFault:
    """A rule that could not be used or evaluated for one device, and why."""

    rule_id: int | None
    key: str
    device_id: str
    error: str
    # The error is about the rule's own definition (a RuleError naming its field), not the data.
    invalid_rule: bool = False

    @classmethod
    def of(cls, rule_id: int | None, key: str, device_id: str, exc: BaseException) -> RuleFault:
        """The fault `exc` of one rule on one device, its text bounded."""
        # A RuleError already says which field and why; other errors need their type to make sense.
        invalid = hasattr(exc, "field")
        text = str(exc) if invalid else f"{type(exc).__name__}: {exc}"
        return cls(rule_id, key, device_id, text[:ERROR_MAX_CHARS], invalid)

    def shared_text(self) -> str:
        """What every provider may read of it on a global default: nothing of a device or its data."""
        if self.invalid_rule:
            return self.error
        return f"{self.error.split(':', 1)[0]} (details in the relay log)"


# A global default is shared by every provider: the device and the error's text (which may quote
# the device's data) belong to one tenant, so the others get `shared_text`; the relay log has it all.
_RECORD = """
UPDATE rules SET error_count = error_count + %(n)s, last_error_at = now(),
       last_error = CASE WHEN provider_org_id IS NULL THEN %(shared)s ELSE %(text)s END
WHERE rule_id = %(rule_id)s
"""


def record_rule_faults(conn: Conn, faults: list[RuleFault]) -> None:
    """Record the faults on their rules, one short READ COMMITTED transaction (outside any other).

    Kept out of the device's transaction: workers evaluating other devices of the same broken rule
    would otherwise wait on its row lock and fail to serialize.
    """
    per_rule: dict[int, tuple[int, RuleFault]] = {}
    for f in faults:
        _log_once(f)
        if f.rule_id is not None:
            n, _ = per_rule.get(f.rule_id, (0, f))
            per_rule[f.rule_id] = (n + 1, f)
    if not per_rule:
        return
    level = conn.isolation_level
    conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
    try:
        with conn.transaction():
            for rule_id, (n, f) in sorted(per_rule.items()):  # one lock order for every worker
                text = f"device {f.device_id}: {f.error}"
                conn.execute(_RECORD, {"n": n, "shared": f.shared_text(), "text": text, "rule_id": rule_id})
    finally:
        conn.isolation_level = level


def _log_once(f: RuleFault) -> None:
    # Once per rule and error text per process: a broken rule fails on every batch of every device.
    if (f.rule_id, f.error) in _logged:
        return
    if len(_logged) >= _LOGGED_MAX:
        _logged.clear()
    _logged.add((f.rule_id, f.error))
    log.warning("rule %s (%s) failed on device %s and is skipped: %s", f.key, f.rule_id, f.device_id, f.error)


def defer_device(conn: Conn, device_id: str, exc: BaseException) -> None:
    """Hold a device back with a growing (capped) delay after its evaluation failed; its batches stay."""
    log.error("evaluation of device %s failed; retried later", device_id, exc_info=exc)
    with conn.transaction():
        conn.execute(
            """INSERT INTO eval_retry AS r (device_id, retry_at, last_error)
               VALUES (%(device)s, now() + interval '1 second', %(error)s)
               ON CONFLICT (device_id) DO UPDATE SET attempts = r.attempts + 1,
                   last_error = EXCLUDED.last_error,
                   retry_at = now() + make_interval(secs => least(%(cap)s, power(2, r.attempts))),
                   updated_at = now()""",
            {
                "device": device_id,
                "error": f"{type(exc).__name__}: {exc}"[:ERROR_MAX_CHARS],
                "cap": DEVICE_RETRY_MAX_S,
            },
        )
