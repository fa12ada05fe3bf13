"""`pulsewire simulate`: a simulated fleet against the configured broker, with a live display.

Without `--scenario`, every device streams live telemetry at `--rate` messages per second for
`--duration` seconds (load mode). With `--scenario NAME`, every device plays that scenario in
compressed event time and the summary lists the alerts it must produce. With `--live` (what
`pulsewire up` runs), the fleet lives on a simulated clock at `--time-scale`, starting with a day
of history, with seeded incidents now and then, until SIGTERM/SIGINT or `--duration` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any

from devices.simulator.fleet import Fleet, summary_line
from devices.simulator.live import LiveOptions, run_live
from devices.simulator.registration import ensure_devices
from devices.simulator.runner import DeviceLogin, run_scenario
from devices.simulator.scenarios import available, load
from devices.simulator.transport import Counters
from pulsewire.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `pulsewire simulate`."""
    parser.add_argument("--kind", choices=["implant", "vehicle", "mixed"], default="mixed")
    parser.add_argument("--devices", type=int, default=10, help="fleet size")
    parser.add_argument("--rate", type=float, default=1.0, help="messages per second per device (load mode)")
    parser.add_argument(
        "--duration", type=float, help="wall seconds (load mode: default 10; live: default 0 = until stopped)"
    )
    parser.add_argument(
        "--live", action="store_true", help="a continuous fleet on a simulated clock until stopped"
    )
    parser.add_argument(
        "--readings-per-message", type=int, default=1, help="readings per message (load mode)"
    )
    parser.add_argument("--scenario", help=f"play a scenario: {', '.join(available())}")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--time-scale", type=float, help="event seconds per wall second (scenario: its own; live: 60)"
    )
    parser.add_argument("--max-inflight", type=int, default=50, help="unacknowledged messages per device")
    parser.add_argument(
        "--lag",
        type=float,
        default=86_400.0,
        metavar="S",
        help="live mode: start the simulated clock S seconds behind now (that much history replays "
        "at --time-scale until it catches up; incidents follow a few minutes after)",
    )
    parser.add_argument("--quiet", action="store_true", help="no live display (the summary still prints)")
    parser.add_argument("--json", action="store_true", help="print one JSON summary at the end")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Register (or reuse) the devices, run, print the summary; 0 when nothing failed."""
    if args.live and args.scenario:
        print("pulsewire simulate: --live and --scenario do not go together", file=sys.stderr)
        return 2
    scenario = load(args.scenario) if args.scenario else None
    kind = scenario.kind if scenario else args.kind
    kinds = [
        ("implant" if i % 2 == 0 else "vehicle") if kind == "mixed" else kind for i in range(args.devices)
    ]
    logins = ensure_devices(settings, kinds)
    if args.live:
        runner = _live_main(settings, args, logins)
    elif args.scenario:
        runner = _scenario_main(settings, args, logins)
    else:
        runner = _load_main(settings, args, logins)
    summary = asyncio.run(runner)
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>20}: {value}")
    return 0 if summary.get("errors", 0) == 0 else 1


class _Display:
    """Counters once a second: rewritten in place on a terminal, plain lines otherwise."""

    def __init__(self, counters: Counters, quiet: bool) -> None:
        self.counters, self.quiet = counters, quiet
        self.tty = sys.stdout.isatty()
        self.previous, self.at = 0, time.monotonic()

    def __call__(self, counters: Counters) -> None:
        now = time.monotonic()
        line = summary_line(counters, self.previous, now - self.at)
        self.previous, self.at = counters.published, now
        if not self.quiet:
            sys.stderr.write(f"\r{line}" if self.tty else f"{line}\n")
            sys.stderr.flush()

    async def every_second(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self(self.counters)


async def _load_main(
    settings: Settings, args: argparse.Namespace, logins: list[DeviceLogin]
) -> dict[str, Any]:
    fleet = Fleet(logins, settings.mqtt(), seed=args.seed, max_inflight=args.max_inflight)
    display = _Display(fleet.counters, quiet=False)
    await fleet.connect()
    try:
        report = await fleet.run_load(
            args.rate,
            10.0 if args.duration is None else args.duration,
            readings_per_message=args.readings_per_message,
            on_tick=display,
        )
    finally:
        await fleet.close()
    if display.tty:
        sys.stderr.write("\n")
    return {"mode": "load", **report.to_json()}


async def _scenario_main(
    settings: Settings, args: argparse.Namespace, logins: list[DeviceLogin]
) -> dict[str, Any]:
    scenario = load(args.scenario)
    counters = Counters()
    display = _Display(counters, quiet=False)
    ticker = asyncio.create_task(display.every_second())
    began = time.monotonic()
    try:
        runs = await asyncio.gather(
            *(
                run_scenario(
                    scenario,
                    login,
                    settings.mqtt(),
                    seed=args.seed + i,
                    time_scale=args.time_scale,
                    counters=counters,
                )
                for i, login in enumerate(logins)
            )
        )
    finally:
        ticker.cancel()
    elapsed = time.monotonic() - began
    if display.tty:
        sys.stderr.write("\n")
    return {
        "mode": "scenario",
        "scenario": scenario.name,
        "devices": len(logins),
        "published": counters.published,
        "acknowledged": counters.acknowledged,
        "errors": counters.errors,
        "reconnects": counters.reconnects,
        "duration_s": round(elapsed, 3),
        "msg_per_s": round(counters.published / elapsed, 1) if elapsed else 0.0,
        "readings": sum(sum(r.expected_readings().values()) for r in runs),
        "quarantine_expected": sum(len(r.expected_quarantine()) for r in runs),
        "expected_alerts": [a.to_json() for a in scenario.expect],
        "device_ids": [r.device_id for r in runs][:20],
        "last_error": counters.last_error,
    }


async def _live_main(
    settings: Settings, args: argparse.Namespace, logins: list[DeviceLogin]
) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    options = LiveOptions(
        time_scale=args.time_scale or 60.0,
        duration_s=args.duration or None,
        seed=args.seed,
        lag_s=max(0.0, args.lag),
        max_inflight=args.max_inflight,
    )
    counters = Counters()
    display = _Display(counters, quiet=args.quiet)
    ticker = asyncio.create_task(display.every_second())
    try:
        report = await run_live(logins, settings.mqtt(), options, stop=stop, counters=counters)
    finally:
        ticker.cancel()
    if display.tty:
        sys.stderr.write("\n")
    return report.to_json()
