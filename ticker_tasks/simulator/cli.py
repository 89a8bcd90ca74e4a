"""``ticker-tasks simulator`` / ``python -m ticker_tasks.simulator``: run the Kite simulator."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Sequence

from ticker_tasks.simulator.config import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_API_KEY,
    Account,
    ConfigurationError,
    RateLimits,
    SimulatorConfig,
)
from ticker_tasks.simulator.server import start_simulator

HEALTH_CHECK_S = 30.0


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the simulator command."""
    parser = argparse.ArgumentParser(
        prog="ticker-tasks simulator",
        description="Protocol-exact Zerodha Kite Connect simulator (REST + ticker WebSocket).",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    add("--rest-port", type=int, default=8000, help="REST port (default 8000; 0 = any free)")
    add("--ws-port", type=int, default=None, help="ticker port (default: the REST port)")
    add("--seed", type=int, default=1, help="market model seed (default 1)")
    add(
        "--account",
        action="append",
        default=None,
        metavar="KEY:TOKEN[:SECRET]",
        help=f"an account (repeatable; default {DEFAULT_API_KEY}:{DEFAULT_ACCESS_TOKEN}; "
        "secret defaults to secret-KEY)",
    )
    add(
        "--ticks-per-second",
        type=float,
        default=1.0,
        help="trade-path slots per second = most ticks per instrument per second (default 1)",
    )  # fmt: skip
    add("--universe-size", type=int, default=2000, help="minimum instruments (default 2000)")
    add("--follow-calendar", action="store_true",
        help="trade only 09:15-15:30 IST on weekdays (default: always open)")  # fmt: skip
    add("--every-slot", action="store_true",
        help="send every subscribed token in every slot (load tests)")  # fmt: skip
    add("--quote-rate", type=float, default=1.0, help="quote requests/s per api_key (1)")
    add("--historical-rate", type=float, default=3.0, help="historical requests/s (3)")
    add("--order-rate", type=float, default=10.0, help="order requests/s (10)")
    add("--orders-per-minute", type=int, default=400, help="order placements/min (400)")
    add("--orders-per-day", type=int, default=5000, help="order placements/day (5000)")
    add("--general-rate", type=float, default=10.0, help="other requests/s (10)")
    add("--max-tokens-per-connection", type=int, default=3000, help="(3000)")
    add("--max-connections-per-key", type=int, default=3, help="(3)")
    add("--heartbeat-interval", type=float, default=1.0, help="idle seconds per heartbeat (1)")
    add("--no-snapshot-on-subscribe", action="store_true",
        help="do not send the current state of newly subscribed tokens")  # fmt: skip
    add("--price-band-pct", type=float, default=20.0, help="LIMIT price band, %% (20)")
    add("--log-level", default="INFO", help="logging level (INFO)")
    return parser


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """Turn parsed arguments into a :class:`SimulatorConfig`.

    Raises:
        ConfigurationError: An invalid value.
    """
    specs = args.account or [f"{DEFAULT_API_KEY}:{DEFAULT_ACCESS_TOKEN}"]
    accounts = tuple(Account.parse(spec, n) for n, spec in enumerate(specs, start=1))
    ws_port = None if args.ws_port is None or args.ws_port == args.rest_port else args.ws_port
    return SimulatorConfig(
        host=args.host,
        rest_port=args.rest_port,
        ws_port=ws_port,
        seed=args.seed,
        accounts=accounts,
        ticks_per_second=args.ticks_per_second,
        universe_size=args.universe_size,
        follow_calendar=args.follow_calendar,
        every_slot=args.every_slot,
        rate_limits=RateLimits(
            quote_per_s=args.quote_rate,
            historical_per_s=args.historical_rate,
            orders_per_s=args.order_rate,
            orders_per_min=args.orders_per_minute,
            orders_per_day=args.orders_per_day,
            general_per_s=args.general_rate,
        ),
        max_tokens_per_connection=args.max_tokens_per_connection,
        max_connections_per_key=args.max_connections_per_key,
        heartbeat_interval_s=args.heartbeat_interval,
        snapshot_on_subscribe=not args.no_snapshot_on_subscribe,
        price_band_pct=args.price_band_pct,
    )


async def serve(config: SimulatorConfig) -> None:
    """Run until SIGTERM or SIGINT; print one JSON line with the URLs once serving."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sim = await start_simulator(config)
    ready = {
        "rest_url": sim.rest_url,
        "ws_url": sim.ws_url,
        "instruments": sim.context.universe.active_count(),
    }
    print(json.dumps(ready), flush=True)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=HEALTH_CHECK_S)
            if sim.market_loop_done():
                print("ticker-tasks simulator: the market loop ended; stopping", file=sys.stderr)
                break
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse ``argv``, run the simulator, return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=str(args.log_level).upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
    except ConfigurationError as exc:
        print(f"ticker-tasks simulator: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        print(f"ticker-tasks simulator: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """:func:`main` for callers holding a sequence."""
    return main(None if argv is None else list(argv))
