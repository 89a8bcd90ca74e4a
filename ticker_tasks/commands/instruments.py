"""``ticker-tasks instruments ...``: refresh the master, look instruments up."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ticker_tasks.market.jobs import refresh_instruments
from ticker_tasks.market.registry import RegistryCache
from ticker_tasks.runtime import Runtime
from ticker_tasks.settings import Settings


def _refresh(args: argparse.Namespace, settings: Settings) -> int:
    runtime = Runtime.build(settings)
    try:
        outcome = refresh_instruments(runtime, account_id=args.account)
    finally:
        runtime.close()
    if args.json:
        print(json.dumps(outcome.as_dict()))
    elif outcome.applied:
        print(
            f"instrument master refreshed: {outcome.rows} rows, {outcome.added} added, "
            f"{outcome.changed} changed, {outcome.vanished} vanished (now inactive)"
        )
        for segment, count in sorted(outcome.counts.items()):
            print(f"  {segment:<12} {count:>8}")
    else:
        print("instrument dump refused; the master is unchanged:")
        for problem in outcome.problems:
            print(f"  - {problem}")
    return 0 if outcome.applied else 1


def _show(args: argparse.Namespace, settings: Settings) -> int:
    runtime = Runtime.build(settings)
    try:
        table = RegistryCache(runtime.redis, check_interval_s=0).current()
        info = table.resolve(args.instrument)
    finally:
        runtime.close()
    print(json.dumps({**info.__dict__, "expiry": str(info.expiry) if info.expiry else None}))
    return 0


def register(sub: Any) -> None:
    """Add the ``instruments`` command."""
    parser = sub.add_parser("instruments", help="instrument master and registry")
    commands = parser.add_subparsers(dest="instruments_command", required=True)
    refresh = commands.add_parser("refresh", help="download, validate and apply the dump now")
    refresh.add_argument("--account", default=None, help="account whose client downloads")
    refresh.add_argument("--json", action="store_true")
    refresh.set_defaults(handler=_refresh)
    show = commands.add_parser("show", help="look up a token or EXCHANGE:TRADINGSYMBOL")
    show.add_argument("instrument")
    show.set_defaults(handler=_show)
