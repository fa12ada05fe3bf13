"""`pulsewire ingest`: one ingest worker; run any number of them against the same broker."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import threading
from types import FrameType

from ingest._consumer import SHARE_GROUP
from ingest.service import IngestService, default_client_id
from pulsewire.settings import Settings

log = logging.getLogger("ingest")
# A batch holds tens of thousands of young objects (messages, readings, timestamps) that all live
# until its commit: with the default thresholds (700, 10, 10) the collector ran through them again
# and again, about a tenth of the GIL's time at 1 reading a message (docs/benchmarks.md). They are
# freed by reference counting; the rare cycles are still collected, less often.
GC_THRESHOLDS = (50_000, 20, 100)
SWITCH_INTERVAL_S = 0.0005


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `pulsewire ingest`."""
    parser.add_argument(
        "--client-id",
        help="MQTT client id; keep it stable across restarts so the broker session (and the messages "
        "queued for it) is resumed. Default: pulsewire-ingest-<host>-<slot>",
    )
    parser.add_argument(
        "--share-group",
        default=SHARE_GROUP,
        help="MQTT shared-subscription group; workers of one group split the load. '' = plain subscription "
        "(one worker only; survives a Mosquitto restart, see docs/benchmarks.md)",
    )
    parser.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics (0 = off)")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run until SIGTERM or SIGINT, then flush, commit, ack and disconnect."""
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The writer thread waits on PostgreSQL about ten times a batch; each time the answer is in, it
    # needs the GIL back from the busy network thread, which by default holds it up to 5 ms.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.freeze()  # what start-up allocated (modules, settings) is never scanned again
    gc.set_threshold(*GC_THRESHOLDS)
    client_id = args.client_id or default_client_id(settings.state_dir)
    service = IngestService(settings, client_id=client_id, share_group=args.share_group)
    if args.metrics_port:
        service.metrics.serve(args.metrics_port, args.metrics_host)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    service.start()
    log.info("ingest worker %s started", client_id)
    while not stop.wait(1.0):
        if not service.alive:
            log.error("the writer thread stopped unexpectedly")
            service.stop()
            return 1
    log.info("stopping: flushing what is queued")
    service.stop()
    totals = service.totals
    log.info("stopped: %d message(s), %d reading(s), %d event(s), %d duplicate(s), %d quarantined",
             totals.messages, totals.readings, totals.events, totals.duplicates,
             sum(totals.quarantined.values()))  # fmt: skip
    return 0
