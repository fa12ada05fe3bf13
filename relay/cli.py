"""`pulsewire relay`: one relay worker (rules, alerts, deliveries); any number may run at once."""

from __future__ import annotations

import argparse
import logging

from pulsewire.settings import Settings
from relay.deliver import RetryPolicy
from relay.service import RelayConfig, run_forever


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `pulsewire relay`."""
    parser.add_argument("--delivery-threads", type=int, default=4, help="concurrent deliveries (default 4)")
    parser.add_argument(
        "--eval-threads",
        type=int,
        default=3,
        help="concurrent rule evaluators, one of them kept for devices with events (default 3)",
    )
    parser.add_argument("--no-evaluate", action="store_true", help="only deliver, do not evaluate rules")
    parser.add_argument("--no-deliver", action="store_true", help="only evaluate, do not deliver")
    parser.add_argument("--tick-s", type=float, default=5.0, help="absence/escalation check period")
    parser.add_argument(
        "--late-after-s",
        type=float,
        default=300.0,
        help="evidence older than this is a late alert, never escalated",
    )
    parser.add_argument("--max-attempts", type=int, default=8, help="delivery attempts before `dead`")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run one worker until Ctrl-C."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = RelayConfig.from_settings(
        settings,
        delivery_threads=max(1, args.delivery_threads),
        eval_threads=max(1, args.eval_threads),
        evaluate=not args.no_evaluate,
        deliver=not args.no_deliver,
        tick_s=args.tick_s,
        late_after_s=args.late_after_s,
        retry=RetryPolicy(max_attempts=args.max_attempts),
    )
    run_forever(cfg)
    return 0
