"""The Pulsewire error hierarchy.

Library errors (psycopg, paho, aiomqtt) are converted where they enter our code, so callers
catch these and nothing else. Data and domain code raises them; the dashboard maps each class to
an HTTP status in one table (`dashboards/errors.py`)::

    PulsewireError
    ├── NotFound             no such object in the caller's scope (another tenant's is "not found" too)
    │   └── UnknownRecord        (+ RegistryError) the org, user or device named does not exist
    ├── Conflict             the object's state does not allow the change
    │   ├── DuplicateRecord      (+ RegistryError) an org, user or device with that key exists
    │   └── DeviceDecommissioned     dashboards/commands.py: a retired device takes no commands
    ├── InvalidInput         a value the caller sent is unacceptable; `field` names it when known
    │   ├── InvalidRecord        (+ RegistryError) a registry value is refused
    │   ├── RuleError            relay/rules.py: a rule definition is invalid
    │   ├── EgressRefused        relay/egress.py: a destination the egress policy refuses
    │   └── ScenarioError        a simulator scenario file is invalid
    ├── Forbidden            the caller may see the object but not do this to it
    ├── RateLimited          too many at once or within a window; `retry_after_s` says when to retry
    │   ├── CommandLimitReached      dashboards/commands.py: a device's command budget is spent
    │   └── StreamLimitReached       relay/sse.py: too many live streams
    ├── Unavailable          a dependency is not there right now; retrying later may work
    │   ├── DatabaseError        PostgreSQL is unreachable or refused to serve
    │   │   └── QueryTimeout         a statement ran past the statement timeout and was cancelled
    │   ├── BrokerError          the MQTT broker is unreachable or refused us
    │   └── StackError           the local stack cannot start, stop or be reached
    ├── ConfigError          a setting is missing or malformed
    └── RegistryError        any refusal of the registry (base of the three marked above)

Every error may carry a `code` that refines its kind for programs (`invalid_bucket` is an
InvalidInput) and `details` (data, never secrets).
"""

from __future__ import annotations

from typing import Any


class PulsewireError(Exception):
    """Base class of every error Pulsewire raises on purpose."""

    code: str | None = None

    def __init__(self, message: str = "", *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.details = details


class NotFound(PulsewireError):
    """No such object in the caller's scope; another tenant's object is not found either."""


class Conflict(PulsewireError):
    """The object's state does not allow the change (e.g. acknowledging a resolved alert)."""


class InvalidInput(PulsewireError):
    """A value the caller sent is not acceptable; the message says which and why."""

    def __init__(
        self, message: str = "", *, field: str | None = None, code: str | None = None, details: Any = None
    ) -> None:
        if details is None and field is not None:
            details = {"field": field}
        super().__init__(message, code=code, details=details)
        self.field = field


class Forbidden(PulsewireError):
    """The caller may see the object but may not do this to it."""


class RateLimited(PulsewireError):
    """Too many at once or within a window; `retry_after_s` says when one frees up."""

    def __init__(self, message: str = "", *, retry_after_s: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class Unavailable(PulsewireError):
    """A dependency is not there right now; `retry_after_s`, when known, says when to try again."""

    def __init__(
        self, message: str = "", *, retry_after_s: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class ConfigError(PulsewireError):
    """A setting is missing or malformed."""


class StackError(Unavailable):
    """The local stack cannot start, stop or be reached."""


class DatabaseError(Unavailable):
    """PostgreSQL is unreachable or refused to serve (its text may name hosts: log it, never show it)."""


class QueryTimeout(DatabaseError):
    """A statement ran past the statement timeout and PostgreSQL cancelled it."""

    code = "query_timeout"


class BrokerError(Unavailable):
    """The MQTT broker is unreachable or refused us."""


class RegistryError(PulsewireError):
    """The registry refused: an org, user or device is unknown, exists already, or is invalid."""


class UnknownRecord(NotFound, RegistryError):
    """The org, user or device named does not exist."""


class DuplicateRecord(Conflict, RegistryError):
    """An org, user or device with that key exists already."""


class InvalidRecord(InvalidInput, RegistryError):
    """A registry value is refused (unknown kind or role, reserved id, missing org)."""


class ScenarioError(InvalidInput):
    """A simulator scenario file is invalid."""
