"""The Pulsewire error hierarchy.

Library errors (psycopg, paho, aiomqtt) are converted where they enter our code,
so callers catch these and nothing else::

    PulsewireError
    ├── ConfigError          a setting is missing or malformed
    ├── StackError           the local stack cannot start, stop or be reached
    ├── DatabaseError        PostgreSQL is unreachable or refused a statement
    ├── BrokerError          the MQTT broker is unreachable or refused us
    ├── RegistryError        an org, user or device is unknown or conflicts
    └── ScenarioError        a simulator scenario file is invalid
"""


class PulsewireError(Exception):
    """Base class of every error Pulsewire raises on purpose."""


class ConfigError(PulsewireError):
    """A setting is missing or malformed."""


class StackError(PulsewireError):
    """The local stack cannot start, stop or be reached."""


class DatabaseError(PulsewireError):
    """PostgreSQL is unreachable or refused a statement."""


class BrokerError(PulsewireError):
    """The MQTT broker is unreachable or refused us."""


class RegistryError(PulsewireError):
    """An org, user or device is unknown, or would conflict with an existing one."""


class ScenarioError(PulsewireError):
    """A simulator scenario file is invalid."""
