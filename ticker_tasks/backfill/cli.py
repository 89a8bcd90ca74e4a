"""``ticker-tasks backfill ...`` and ``ticker-tasks candles ...``.

``backfill`` enqueues ``ticker_tasks.backfill.run`` by name through the app (a worker of the
``backfill`` queue does the work), then shows a progress bar from the task's ``PROGRESS``
state until the summary arrives. ``candles`` reads stored candles back from the database,
as a table or as CSV. Wire them with :func:`register` (or call the handlers directly).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.backfill import BackfillRequest, parse_when
from ticker_tasks.backfill import RUN_TASK, store
from ticker_tasks.backfill.plan import INTERVALS, request_window
from ticker_tasks.db.engine import build_engine
from ticker_tasks.db.models import Instrument
from ticker_tasks.errors import PermanentError, ValidationError
from ticker_tasks.market.calendar import IST
from ticker_tasks.market.registry import InstrumentInfo, table_from_instruments
from ticker_tasks.queues import BACKFILL
from ticker_tasks.settings import Settings

#: Exit status when the job did not finish within ``--timeout`` (it keeps running).
STILL_RUNNING = 3
_BAR_WIDTH = 30


def add_backfill_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ticker-tasks backfill``."""
    parser.add_argument("instruments", nargs="+", help="tokens or EXCHANGE:TRADINGSYMBOL")
    parser.add_argument("--interval", choices=INTERVALS, default="minute")
    parser.add_argument("--from", dest="from_", required=True, help="YYYY-MM-DD or ISO datetime")
    parser.add_argument(
        "--to", required=True, help="YYYY-MM-DD (inclusive) or ISO datetime (exclusive)"
    )
    parser.add_argument("--oi", action="store_true", help="also fetch open interest")
    parser.add_argument("--continuous", action="store_true", help="continuous future series")
    parser.add_argument("--account", default=None, help="account whose api_key fetches")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and exit")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def add_candles_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ticker-tasks candles``."""
    parser.add_argument("instrument", help="token or EXCHANGE:TRADINGSYMBOL (expired too)")
    parser.add_argument("--interval", choices=INTERVALS, default="minute")
    parser.add_argument("--from", dest="from_", required=True, help="YYYY-MM-DD or ISO datetime")
    parser.add_argument(
        "--to", required=True, help="YYYY-MM-DD (inclusive) or ISO datetime (exclusive)"
    )
    parser.add_argument("--continuous", action="store_true", help="continuous future series")
    parser.add_argument("--format", choices=["table", "csv"], default="table")
    parser.add_argument("--limit", type=int, default=None, help="at most this many candles")


def register(sub: Any) -> None:
    """Add the ``backfill`` and ``candles`` commands to ``ticker-tasks``."""
    backfill = sub.add_parser("backfill", help="fetch missing historical candles from Kite")
    add_backfill_arguments(backfill)
    backfill.set_defaults(handler=backfill_command)
    candles = sub.add_parser("candles", help="print stored candles")
    add_candles_arguments(candles)
    candles.set_defaults(handler=candles_command)


# --- backfill ---------------------------------------------------------------------------------


def _request(args: argparse.Namespace) -> BackfillRequest:
    payload: dict[str, Any] = {
        "instruments": list(args.instruments),
        "interval": args.interval,
        "from": args.from_,
        "to": args.to,
        "oi": args.oi,
        "continuous": args.continuous,
    }
    if args.account:
        payload["account_id"] = args.account
    try:
        return BackfillRequest.model_validate(payload)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise ValidationError(f"invalid backfill request: {where}: {first['msg']}") from None


def backfill_command(args: argparse.Namespace, settings: Settings) -> int:
    """Enqueue a backfill, show its progress until done, print the summary.

    Returns:
        0 when the job succeeded, 1 when some range failed, 3 when still running at timeout.
    """
    from ticker_tasks.app import app

    request = _request(args)
    kwargs = request.model_dump(mode="json", by_alias=True, exclude_none=True)
    result = app.send_task(RUN_TASK, kwargs=kwargs, queue=BACKFILL)
    job_id = str(result.id)
    if args.no_wait:
        print(job_id)
        return 0
    print(f"backfill job {job_id} enqueued", file=sys.stderr)
    summary = wait_for_summary(result, timeout=args.timeout, out=sys.stderr)
    if summary is None:
        print(f"job {job_id} still running after {args.timeout:.0f}s", file=sys.stderr)
        return STILL_RUNNING
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary, sys.stdout)
    return 0 if summary.get("status") == "succeeded" else 1


def wait_for_summary(
    result: Any,
    *,
    timeout: float,
    out: TextIO,
    poll_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any] | None:
    """Poll a run task's state, drawing a progress bar, until its summary or ``timeout``.

    Raises:
        TickerTasksError: The run task failed (its error, e.g. an unknown instrument).
    """
    deadline = clock() + timeout
    drawn = False
    while True:
        state = result.state
        if state == "SUCCESS":
            value = result.result
            if drawn:
                out.write("\n")
            return value if isinstance(value, dict) else {"result": value}
        if state in ("FAILURE", "REVOKED"):
            if drawn:
                out.write("\n")
            raise PermanentError(f"backfill job {result.id} {state.lower()}: {result.result}")
        info = result.info
        if state == "PROGRESS" and isinstance(info, dict):
            out.write("\r" + progress_line(info))
            out.flush()
            drawn = True
        if clock() >= deadline:
            if drawn:
                out.write("\n")
            return None
        sleep(poll_s)


def progress_line(meta: dict[str, Any]) -> str:
    """``[#####.....]  12/40 requests   45,000 candles`` from a ``PROGRESS`` meta."""
    done, total = int(meta.get("done", 0)), int(meta.get("total", 0))
    filled = _BAR_WIDTH if total <= 0 else _BAR_WIDTH * done // total
    bar = "#" * filled + "." * (_BAR_WIDTH - filled)
    candles = int(meta.get("candles_written", 0))
    return f"[{bar}] {done:>5}/{total} requests {candles:>12,} candles"


def print_summary(summary: dict[str, Any], out: TextIO) -> None:
    """The summary as a few readable lines."""
    out.write(
        f"job {summary['job_id']}: {summary['status']} - {summary['requests']} requests, "
        f"{summary['candles_written']:,} candles written, {summary['retries']} retries\n"
    )
    for item in summary["instruments"]:
        out.write(
            f"  {item['exchange']}:{item['tradingsymbol']:<28} {item['status']:<20} "
            f"{item['requests']:>4} requests {item['candles_written']:>10,} candles\n"
        )
    for left in summary["ranges_left"]:
        out.write(
            f"  left: {left['instrument']} [{left['from']}, {left['to']}) {left['reason']}"
            f"{': ' + left['detail'] if left.get('detail') else ''}\n"
        )


# --- candles ----------------------------------------------------------------------------------


def find_instrument(session: Session, ref: str) -> InstrumentInfo:
    """A token (its current holder) or ``EXCHANGE:TRADINGSYMBOL`` (expired contracts too)."""
    if ref.isdigit():
        query = select(Instrument).where(Instrument.instrument_token == int(ref))
    elif ":" in ref:
        exchange, _, symbol = ref.strip().upper().partition(":")
        query = select(Instrument).where(
            Instrument.exchange == exchange, Instrument.tradingsymbol == symbol
        )
    else:
        raise ValidationError(f"not a token nor EXCHANGE:TRADINGSYMBOL: {ref!r}")
    return table_from_instruments(list(session.scalars(query))).resolve(ref)


def candles_command(args: argparse.Namespace, settings: Settings) -> int:
    """Print stored candles of one instrument as a table or CSV."""
    try:
        window = request_window(parse_when(args.from_), parse_when(args.to))
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    series = store.series_key(args.interval, continuous=args.continuous)
    engine = build_engine(settings)
    try:
        with Session(engine) as session:
            info = find_instrument(session, args.instrument)
            rows = store.read_candles(session, info.instrument_id, series, window, limit=args.limit)
    finally:
        engine.dispose()
    if args.format == "csv":
        write_csv(rows, sys.stdout)
    else:
        print(f"{info.key} ({'active' if info.active else 'expired'}) {series}: {len(rows)}")
        write_table(rows, sys.stdout)
    return 0


_HEADER = ("ts", "open", "high", "low", "close", "volume", "oi")


def _cells(row: store.CandleRow) -> tuple[str, ...]:
    return (
        row.ts.astimezone(IST).isoformat(),
        f"{row.open:g}",
        f"{row.high:g}",
        f"{row.low:g}",
        f"{row.close:g}",
        str(row.volume),
        "" if row.oi is None else str(row.oi),
    )


def write_csv(rows: list[store.CandleRow], out: TextIO) -> None:
    """Candles as CSV with a header; timestamps in IST ISO-8601."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_HEADER)
    writer.writerows(_cells(row) for row in rows)


def write_table(rows: list[store.CandleRow], out: TextIO) -> None:
    """Candles as an aligned text table."""
    widths = (25, 12, 12, 12, 12, 12, 10)
    out.write(" ".join(h.rjust(w) for h, w in zip(_HEADER, widths, strict=True)) + "\n")
    for row in rows:
        cells = _cells(row)
        out.write(" ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + "\n")
