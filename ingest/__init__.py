"""Ingest: MQTT → validate → dedupe → batch → COPY → commit → ack, into PostgreSQL.

`IngestService` is one worker (any number may share the broker's `$share/ingest/...` subscription);
`pulsewire ingest` runs one from the command line. `ingest.validate` is the pure validation step and
`IngestMetrics` the worker's own Prometheus metrics (`--metrics-port`; not part of the dashboard's).
"""

from ingest.metrics import IngestMetrics
from ingest.service import IngestService, default_client_id

__all__ = ["IngestMetrics", "IngestService", "default_client_id"]
