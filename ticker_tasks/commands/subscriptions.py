"""``ticker-tasks subscriptions add|remove|list``: the desired ticker subscriptions.

::

    ticker-tasks subscriptions add NSE:INFY --mode full
    ticker-tasks subscriptions add 408065
    ticker-tasks subscriptions add --underlying NIFTY --expiry 2026-11-26 --strikes 10 --mode quote
    ticker-tasks subscriptions add --underlying NIFTY --expiry next
    ticker-tasks subscriptions remove NSE:INFY          (or a token)
    ticker-tasks subscriptions remove --underlying NIFTY --expiry 2026-11-26
    ticker-tasks subscriptions remove --id 7
    ticker-tasks subscriptions list [--json]

Instruments resolve through the published registry (a token names its current holder). Every
change is committed, then :func:`~ticker_tasks.subscriptions.store.notify_changed` tells the
streamers, which apply it within a second. Bad input (unknown instrument or expiry, bad mode)
raises :class:`~ticker_tasks.errors.ValidationError` / :class:`~ticker_tasks.errors.NotFound`;
the CLI prints it as one line and exits 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from ticker_tasks.errors import NotFound, ValidationError
from ticker_tasks.market.calendar import IST
from ticker_tasks.market.registry import InstrumentTable, RegistryCache
from ticker_tasks.runtime import Runtime
from ticker_tasks.settings import Settings
from ticker_tasks.subscriptions import store
from ticker_tasks.subscriptions.plan import check_mode

#: Strikes on each side of the ATM when ``--strikes`` is not given.
DEFAULT_STRIKES = 10
NEXT_EXPIRY = "next"


def _registry(runtime: Runtime) -> InstrumentTable:
    return RegistryCache(runtime.redis, check_interval_s=0).current()


def resolve_expiry(table: InstrumentTable, underlying: str, text: str, today: dt.date) -> dt.date:
    """``YYYY-MM-DD``, or ``next``: the underlying's nearest listed option expiry on or after
    ``today``.

    Raises:
        ValidationError: Not a date nor ``next``.
        NotFound: ``next`` when the underlying lists no option expiry.
    """
    if text.strip().lower() == NEXT_EXPIRY:
        following = next((e for e in table.expiries(underlying) if e >= today), None)
        if following is None:
            raise NotFound(f"no listed {underlying} option expiry on or after {today}")
        return following
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise ValidationError(f"expiry must be YYYY-MM-DD or 'next', got {text!r}") from None


def _target(args: argparse.Namespace) -> str:
    """Which form was asked for: ``instrument`` or ``chain`` (``id`` for remove)."""
    forms = [
        name
        for name, given in (
            ("instrument", args.instrument is not None),
            ("chain", args.underlying is not None or args.expiry is not None),
            ("id", getattr(args, "subscription_id", None) is not None),
        )
        if given
    ]
    if len(forms) != 1:
        hint = "EXCHANGE:TRADINGSYMBOL or token, or --underlying U --expiry E"
        if hasattr(args, "subscription_id"):
            hint += ", or --id N"
        raise ValidationError(f"give exactly one of: {hint}")
    if forms[0] == "chain" and (args.underlying is None or args.expiry is None):
        raise ValidationError("a chain needs both --underlying and --expiry")
    return forms[0]


def _publish(runtime: Runtime) -> int:
    return store.notify_changed(runtime.redis)


def _add(args: argparse.Namespace, settings: Settings) -> int:
    form = _target(args)
    mode = check_mode(args.mode)
    runtime = Runtime.build(settings)
    try:
        table = _registry(runtime)
        with runtime.sessions.begin() as session:
            if form == "instrument":
                view = store.add_instrument(session, table, args.instrument, mode)
            else:
                underlying = args.underlying.strip().upper()
                today = dt.datetime.now(IST).date()
                expiry = resolve_expiry(table, underlying, args.expiry, today)
                view = store.add_chain(session, table, underlying, expiry, args.strikes, mode)
        version = _publish(runtime)
    finally:
        runtime.close()
    token = f", token {view.instrument_token}" if view.instrument_token is not None else ""
    print(
        f"subscription {view.subscription_id}: {view.target} (mode {view.mode}{token}); "
        f"streamers notified (version {version})"
    )
    return 0


def _remove(args: argparse.Namespace, settings: Settings) -> int:
    form = _target(args)
    runtime = Runtime.build(settings)
    try:
        with runtime.sessions.begin() as session:
            if form == "id":
                what = f"subscription {args.subscription_id}"
                removed = store.remove(session, args.subscription_id)
            elif form == "instrument":
                table = _registry(runtime)
                what = table.resolve(args.instrument).key
                removed = store.remove_instrument(session, table, args.instrument)
            else:
                table = _registry(runtime)
                underlying = args.underlying.strip().upper()
                today = dt.datetime.now(IST).date()
                expiry = resolve_expiry(table, underlying, args.expiry, today)
                what = f"{underlying} {expiry} chain"
                removed = store.remove_chain(session, underlying, expiry)
            if removed == 0:
                raise NotFound(f"no subscription of {what}")
        version = _publish(runtime)
    finally:
        runtime.close()
    print(f"removed {what}; streamers notified (version {version})")
    return 0


def _as_json(view: store.SubscriptionView) -> dict[str, Any]:
    return {
        "subscription_id": view.subscription_id,
        "target": view.target,
        "mode": view.mode,
        "active": view.active,
        "instrument_id": view.instrument_id,
        "instrument_token": view.instrument_token,
        "key": view.key,
        "underlying": view.underlying,
        "expiry": view.expiry.isoformat() if view.expiry else None,
        "strikes_around_atm": view.strikes_around_atm,
    }


def _list(args: argparse.Namespace, settings: Settings) -> int:
    runtime = Runtime.build(settings)
    try:
        with runtime.sessions() as session:
            views = store.list_subscriptions(session)
    finally:
        runtime.close()
    if args.json:
        print(json.dumps([_as_json(v) for v in views]))
        return 0
    if not views:
        print("(no subscriptions)")
        return 0
    rows = [
        {
            "id": str(v.subscription_id),
            "subscription": v.target,
            "token": "-" if v.instrument_token is None else str(v.instrument_token),
            "mode": v.mode,
            "active": "yes" if v.active else "no",
        }
        for v in views
    ]
    headers = list(rows[0])
    widths = [max(len(h), *(len(r[h]) for r in rows)) for h in headers]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(row[h].ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    return 0


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "instrument", nargs="?", default=None, help="EXCHANGE:TRADINGSYMBOL or instrument token"
    )
    parser.add_argument("--underlying", default=None, help="option chain: underlying (NIFTY)")
    parser.add_argument(
        "--expiry", default=None, help="option chain: expiry YYYY-MM-DD, or 'next' (nearest)"
    )


def register(sub: Any) -> None:
    """Add the ``subscriptions`` command (``add``, ``remove``, ``list``)."""
    parser = sub.add_parser("subscriptions", help="desired ticker subscriptions")
    commands = parser.add_subparsers(dest="subscriptions_command", required=True)

    add = commands.add_parser(
        "add", help="subscribe an instrument, or an option chain around ATM (idempotent)"
    )
    _target_arguments(add)
    add.add_argument(
        "--strikes",
        type=int,
        default=DEFAULT_STRIKES,
        help=f"option chain: strikes on each side of ATM (default {DEFAULT_STRIKES})",
    )
    add.add_argument(
        "--mode", default=store.DEFAULT_MODE, help=f"ltp, quote or full ({store.DEFAULT_MODE})"
    )
    add.set_defaults(handler=_add)

    remove = commands.add_parser("remove", help="delete a subscription")
    _target_arguments(remove)
    remove.add_argument("--id", dest="subscription_id", type=int, default=None)
    remove.set_defaults(handler=_remove)

    listing = commands.add_parser("list", help="list the subscriptions")
    listing.add_argument("--json", action="store_true", help="print one JSON array")
    listing.set_defaults(handler=_list)
