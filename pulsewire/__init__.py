"""Pulsewire: telemetry relay for devices that customers own.

Shared runtime used by every service: settings, the error tree, database access, migrations and
time-series housekeeping, the registry (orgs, owners, devices, users), Mosquitto's password and ACL
files, the local stack, and the command line with `pulsewire up`. Each service keeps its own MQTT
client.
"""

__version__ = "0.1.0"
