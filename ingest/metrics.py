"""Prometheus metrics of an ingest worker, on a registry of its own (several workers per process in tests).

They are served by the worker itself (`pulsewire ingest --metrics-port N`), not by the dashboard.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

_BATCH_SIZES = (1, 10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 20_000, 50_000)
_COMMIT_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class IngestMetrics:
    """Counters and histograms of one ingest worker."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter("pulsewire_ingest_messages", "MQTT messages received", ["kind"], registry=r)
        self.readings = Counter("pulsewire_ingest_readings_stored", "readings committed", registry=r)
        self.events = Counter("pulsewire_ingest_events_stored", "events committed", registry=r)
        self.quarantined = Counter(
            "pulsewire_ingest_quarantined", "messages quarantined, by reason", ["reason"], registry=r
        )
        self.duplicates = Counter("pulsewire_ingest_duplicates", "redelivered messages not stored again",
                                  registry=r)  # fmt: skip
        self.gaps = Counter("pulsewire_ingest_seq_gaps", "seq gaps recorded", registry=r)
        self.batch_messages = Histogram(
            "pulsewire_ingest_batch_messages",
            "messages per committed batch",
            buckets=_BATCH_SIZES,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "pulsewire_ingest_batch_commit_seconds", "time to write and commit one batch",
            buckets=_COMMIT_SECONDS, registry=r,
        )  # fmt: skip
        self.db_retries = Counter(
            "pulsewire_ingest_db_retries", "batch writes retried after a database error", registry=r
        )
        self.queue_depth = Gauge(
            "pulsewire_ingest_queue_depth", "validated batches waiting for the writer", registry=r
        )

    def watch_queue(self, depth: Callable[[], int]) -> None:
        """Report the queue depth by asking for it at scrape time."""
        self.queue_depth.set_function(depth)

    def text(self) -> bytes:
        """The metrics in Prometheus text format, as `serve` answers a scrape.

        The dashboard's `/metrics` does not include these: it has only its own HTTP metrics.
        """
        return bytes(generate_latest(self.registry))

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve the metrics over HTTP on `port` in a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)
