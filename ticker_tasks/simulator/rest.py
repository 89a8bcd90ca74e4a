"""Kite REST routes at the host root: envelopes, auth, rate limits, market data routes.

Success: ``{"status": "success", "data": ...}``; errors:
``{"status": "error", "message": ..., "error_type": ...}`` with the HTTP status Kite uses.
Every response carries a Content-Type (the official client needs one). The middleware, in
order: injected faults (429/5xx bursts), authentication (``Authorization: token
api_key:access_token``; 403 TokenException), the per-api_key sliding-window rate limit
(429 NetworkException), then the handler; it records every request for ``/_sim/stats``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import numpy as np
from aiohttp import web

from ticker_tasks.simulator.auth import AuthError, profile_payload
from ticker_tasks.simulator.clock import day_of_minute, ist_string, parse_ist
from ticker_tasks.simulator.context import CONTEXT, SimContext
from ticker_tasks.simulator.contracts import KIND_INDEX, TICKS_PER_RUPEE
from ticker_tasks.simulator.faults import REST_STATUSES
from ticker_tasks.simulator.history import HistoryError, candle_parts, join
from ticker_tasks.simulator.orders_rules import OrderError, price_band
from ticker_tasks.simulator.ratelimit import monotonic, route_class
from ticker_tasks.simulator.universe import UnknownInstrument

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
QUOTE_LIMITS: Final = {"/quote": 500, "/quote/ohlc": 1000, "/quote/ltp": 1000}
UNAUTHENTICATED: Final = frozenset({("POST", "/session/token")})


def ok(data: Any) -> web.Response:
    """Kite success envelope."""
    return web.json_response({"status": "success", "data": data})


def error(status: int, error_type: str, message: str) -> web.Response:
    """Kite error envelope."""
    return web.json_response(
        {"status": "error", "message": message, "error_type": error_type, "data": None},
        status=status,
    )


def ctx_of(request: web.Request) -> SimContext:
    """The simulator context of a request."""
    return request.app[CONTEXT]


def api_key_of(request: web.Request) -> str:
    """The authenticated api_key (set by the middleware)."""
    return str(request["api_key"])


def _route_name(request: web.Request) -> str:
    info = request.match_info.route.resource
    path = info.canonical if info is not None else request.path
    return f"{request.method} {path}"


def _fault_response(status: int, body: str) -> web.Response:
    if body == "html":
        return web.Response(
            status=status,
            text=f"<html><body><h1>{status}</h1>Gateway error</body></html>",
            content_type="text/html",
        )
    error_type, message = REST_STATUSES[status]
    return error(status, error_type, message)


@web.middleware
async def kite_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Faults, auth, rate limits and statistics around every Kite route."""
    if (
        request.path.startswith("/_sim/")
        or request.headers.get("Upgrade", "").lower() == "websocket"
    ):
        return await handler(request)
    ctx = ctx_of(request)
    route = _route_name(request)
    canonical = route.split(" ", 1)[1]
    klass = route_class(request.method, canonical)
    header = request.headers.get("Authorization", "")
    claimed = header.removeprefix("token ").partition(":")[0] if header else ""
    if (request.method, canonical) in UNAUTHENTICATED:
        claimed = (await request.post()).get("api_key", "") or claimed  # type: ignore[assignment]
    response = await _guarded(ctx, request, handler, claimed, klass, header)
    ctx.limiter.record(str(claimed) or "-", route, response.status, time.time())
    return response


async def _guarded(
    ctx: SimContext,
    request: web.Request,
    handler: Handler,
    claimed: str,
    klass: str,
    header: str,
) -> web.StreamResponse:
    fault = ctx.faults.take_rest(claimed, klass)
    if fault is not None:
        return _fault_response(fault.status, fault.body)
    canonical = _route_name(request).split(" ", 1)[1]
    try:
        if (request.method, canonical) not in UNAUTHENTICATED:
            request["api_key"] = ctx.accounts.check_header(header)
        placement = request.method == "POST" and canonical.startswith("/orders/")
        day = day_of_minute(int(ctx.clock.now() // 60))
        if not ctx.limiter.admit(claimed or "-", klass, placement, monotonic(), day):
            return error(429, "NetworkException", "Too many requests")
        return await handler(request)
    except AuthError as exc:
        return error(exc.status, exc.error_type, exc.message)
    except OrderError as exc:
        return error(exc.status, exc.error_type, exc.message)
    except web.HTTPException as exc:
        if exc.status == 404:
            return error(404, "GeneralException", "Route not found")
        if exc.status == 405:
            return error(405, "GeneralException", "Method not allowed")
        return error(exc.status, "GeneralException", exc.reason)
    except Exception:  # request boundary: log, answer Kite's 500 envelope, keep serving
        log.exception("%s %s failed", request.method, request.path)
        return error(500, "GeneralException", "Internal error in the simulator.")


# --------------------------------------------------------------------------- session / user


async def session_token(request: web.Request) -> web.Response:
    """POST /session/token."""
    ctx = ctx_of(request)
    form = await request.post()
    data = ctx.accounts.login(
        str(form.get("api_key", "")),
        str(form.get("request_token", "")),
        str(form.get("checksum", "")),
        int(ctx.clock.now()),
    )
    return ok(data)


async def session_delete(request: web.Request) -> web.Response:
    """DELETE /session/token (invalidates the access token)."""
    ctx = ctx_of(request)
    ctx.accounts.logout(
        request.query.get("api_key", api_key_of(request)), request.query.get("access_token", "")
    )
    return ok(True)


async def profile(request: web.Request) -> web.Response:
    """GET /user/profile."""
    account = ctx_of(request).accounts.get(api_key_of(request))
    assert account is not None
    return ok(profile_payload(account))


def _segment_margins(ctx: SimContext, api_key: str, segment: str) -> dict[str, Any]:
    cash = ctx.config.opening_balance
    debits = ctx.orders.used.get(api_key, 0.0) if segment == "equity" else 0.0
    return {
        "enabled": True,
        "net": round(cash - debits, 2),
        "available": {
            "adhoc_margin": 0,
            "cash": cash,
            "opening_balance": cash,
            "live_balance": round(cash - debits, 2),
            "collateral": 0,
            "intraday_payin": 0,
        },
        "utilised": {
            "debits": round(debits, 2),
            "exposure": 0,
            "m2m_realised": 0,
            "m2m_unrealised": 0,
            "option_premium": 0,
            "payout": 0,
            "span": 0,
            "holding_sales": 0,
            "turnover": 0,
            "liquid_collateral": 0,
            "stock_collateral": 0,
            "delivery": 0,
        },
    }


async def margins(request: web.Request) -> web.Response:
    """GET /user/margins and /user/margins/{segment}."""
    ctx = ctx_of(request)
    api_key = api_key_of(request)
    segment = request.match_info.get("segment")
    if segment is None:
        return ok({s: _segment_margins(ctx, api_key, s) for s in ("equity", "commodity")})
    if segment not in ("equity", "commodity"):
        return error(400, "InputException", "Invalid segment.")
    return ok(_segment_margins(ctx, api_key, segment))


# --------------------------------------------------------------------------- instruments


async def instruments(request: web.Request) -> web.Response:
    """GET /instruments and /instruments/{exchange} (CSV)."""
    exchange = request.match_info.get("exchange")
    body = ctx_of(request).universe.csv_dump(exchange)
    return web.Response(text=body, content_type="text/csv")


async def historical(request: web.Request) -> web.Response:
    """GET /instruments/historical/{instrument_token}/{interval}."""
    ctx = ctx_of(request)
    try:
        token = int(request.match_info["instrument_token"])
        row = ctx.universe.index_of_token(token)
    except (ValueError, UnknownInstrument):
        return error(400, "InputException", "invalid token")
    try:
        from_s = parse_ist(request.query.get("from", ""))
        to_s = parse_ist(request.query.get("to", ""))
    except ValueError:
        return error(400, "InputException", "invalid from / to date")
    with_oi = request.query.get("oi", "0") in ("1", "true", "True")
    last_minute = ctx.state.slot // ctx.clock.slots_per_minute - 1
    interval = request.match_info["interval"]
    try:
        chunks = candle_parts(ctx.model, row, interval, from_s, to_s, last_minute)
    except HistoryError as exc:
        return error(400, "InputException", str(exc))
    parts = []
    for part in chunks:
        parts.append(part)
        await asyncio.sleep(0)  # long ranges: let the market loop run between chunks
    return ok({"candles": join(parts).rows(with_oi)})


# --------------------------------------------------------------------------- quotes


def _resolve(ctx: SimContext, keys: list[str]) -> tuple[list[str], list[int]]:
    names: list[str] = []
    rows: list[int] = []
    for key in keys:
        try:
            if key.isdigit():
                row = ctx.universe.index_of_token(int(key))
            else:
                exchange, _, symbol = key.partition(":")
                row = ctx.universe.index_of_symbol(exchange, symbol)
        except UnknownInstrument:
            continue
        names.append(key)
        rows.append(row)
    return names, rows


def _price(ticks: int) -> float:
    return ticks / TICKS_PER_RUPEE


async def quote(request: web.Request) -> web.Response:
    """GET /quote, /quote/ohlc, /quote/ltp (unknown keys are absent from the map)."""
    ctx = ctx_of(request)
    keys = request.query.getall("i", [])
    limit = QUOTE_LIMITS[request.path]
    if len(keys) > limit:
        return error(400, "InputException", f"Maximum {limit} instruments are allowed.")
    names, rows_list = _resolve(ctx, keys)
    if not rows_list:
        return ok({})
    rows = np.asarray(rows_list, dtype=np.int64)
    snap = ctx.state.snapshot(rows)
    tokens = ctx.universe.ints("token")[rows]
    data: dict[str, Any] = {}
    full = request.path == "/quote"
    book = ctx.state.depth(rows, snap.last) if full else None
    average = snap.average_price()
    stamp = ist_string(ctx.clock.slot_epoch(ctx.state.slot))
    for i, name in enumerate(names):
        last = _price(int(snap.last[i]))
        entry: dict[str, Any] = {"instrument_token": int(tokens[i]), "last_price": last}
        ohlc = {
            "open": _price(int(snap.open[i])),
            "high": _price(int(snap.high[i])),
            "low": _price(int(snap.low[i])),
            "close": _price(int(snap.close[i])),
        }
        if request.path == "/quote/ohlc":
            entry["ohlc"] = ohlc
        elif full and book is not None:
            row = int(rows[i])
            index = ctx.universe.int_at("kind", row) == KIND_INDEX
            lower, upper = (
                (0.0, 0.0)
                if index
                else price_band(ctx.universe, row, int(snap.close[i]), ctx.config.price_band_pct)
            )
            entry = {
                "instrument_token": int(tokens[i]),
                "timestamp": stamp,
                "last_trade_time": ist_string(int(snap.ltt[i])),
                "last_price": last,
                "last_quantity": int(snap.ltq[i]),
                "buy_quantity": int(book["total_buy"][i]),
                "sell_quantity": int(book["total_sell"][i]),
                "volume": int(snap.volume[i]),
                "average_price": round(float(average[i]), 2),
                "oi": int(snap.oi[i]),
                "oi_day_high": int(snap.oi_high[i]),
                "oi_day_low": int(snap.oi_low[i]),
                "net_change": round(last - ohlc["close"], 2),
                "lower_circuit_limit": lower,
                "upper_circuit_limit": upper,
                "ohlc": ohlc,
                "depth": {
                    side: [
                        {
                            "price": _price(int(book[f"{prefix}_price"][i, j])),
                            "quantity": int(book[f"{prefix}_qty"][i, j]),
                            "orders": int(book[f"{prefix}_orders"][i, j]),
                        }
                        for j in range(5)
                    ]
                    for side, prefix in (("buy", "bid"), ("sell", "ask"))
                },
            }
        data[name] = entry
    return ok(data)


def add_market_routes(app: web.Application) -> None:
    """Register session, user, instrument, historical and quote routes."""
    app.router.add_post("/session/token", session_token)
    app.router.add_delete("/session/token", session_delete)
    app.router.add_get("/user/profile", profile)
    app.router.add_get("/user/margins", margins)
    app.router.add_get("/user/margins/{segment}", margins)
    app.router.add_get("/instruments", instruments)
    app.router.add_get("/instruments/historical/{instrument_token}/{interval}", historical)
    app.router.add_get("/instruments/{exchange}", instruments)
    app.router.add_get("/quote", quote)
    app.router.add_get("/quote/ohlc", quote)
    app.router.add_get("/quote/ltp", quote)
