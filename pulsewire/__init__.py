"""Pulsewire: telemetry relay for devices that customers own.

Shared runtime used by every service: settings, errors, database and MQTT helpers,
the local stack and the command line.
"""

__version__ = "0.1.0"
