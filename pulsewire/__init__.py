"""Pulsewire: telemetry relay for devices that customers own.

Shared runtime used by every service: settings, the error tree, database access, migrations and
time-series housekeeping, the registry (orgs, owners, devices, users), Mosquitto's password and ACL
files, MQTT connections (`pulsewire.mqtt`), what the services say to each other through PostgreSQL
(`pulsewire.wire`), the local stack, and the command line with `pulsewire up`.
"""

__version__ = "0.1.0"
