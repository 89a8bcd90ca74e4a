"""The ``/_sim/`` control API: statistics, order book, faults, accounts, instruments, model.

Not rate limited, not authenticated, not counted in the request statistics. Documented in
the project README (section *Kite simulator*).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import numpy as np
from aiohttp import web

from ticker_tasks.simulator.context import SimContext
from ticker_tasks.simulator.contracts import KIND_FUT, KIND_OPT, TICKS_PER_RUPEE, ContractSpec
from ticker_tasks.simulator.faults import FaultSpecError
from ticker_tasks.simulator.market import MinuteFields
from ticker_tasks.simulator.rest import ctx_of
from ticker_tasks.simulator.universe import UnknownInstrument

MAX_TRADE_WINDOW_S = 3600


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _bad(message: str, status: int = 400) -> web.Response:
    return _json({"error": message}, status)


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except json.JSONDecodeError as exc:
        raise FaultSpecError(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise FaultSpecError("body must be a JSON object")
    return body


async def stats(request: web.Request) -> web.Response:
    """GET /_sim/stats."""
    ctx = ctx_of(request)
    return _json(
        {
            "now": ctx.clock.now(),
            "started_at": ctx.started_at,
            "slot": ctx.state.slot,
            "slots_per_minute": ctx.clock.slots_per_minute,
            **ctx.limiter.stats(),
            "ws": ctx.hub.stats(),
            "stream": {
                "slots_processed": ctx.stream.slots_processed,
                "slots_skipped": ctx.stream.slots_skipped,
                "max_lag_s": round(ctx.stream.max_lag_s, 4),
                "errors": ctx.stream.errors,
                "expired_tokens": ctx.stream.expired_tokens,
            },
            "universe": {"listed": ctx.universe.active_count(), "rows": ctx.universe.size},
            "faults": ctx.faults.describe(),
        }
    )


async def reset_stats(request: web.Request) -> web.Response:
    """POST /_sim/reset-stats: clear request statistics, windows and closed connections."""
    ctx = ctx_of(request)
    ctx.limiter.reset()
    ctx.hub.closed.clear()
    ctx.hub.rejected = {"403": 0, "429": 0}
    for conn in ctx.hub.connections.values():
        conn.packets_sent = conn.frames_sent = conn.heartbeats_sent = conn.texts_sent = 0
        conn.frames_dropped = 0
    return _json({"reset": True})


async def orders(request: web.Request) -> web.Response:
    """GET /_sim/orders: every account's orders with their history."""
    return _json(ctx_of(request).orders.everything())


async def faults_get(request: web.Request) -> web.Response:
    """GET /_sim/faults."""
    return _json(ctx_of(request).faults.describe())


async def faults_delete(request: web.Request) -> web.Response:
    """DELETE /_sim/faults: clear REST faults, silences and pending truncations."""
    ctx = ctx_of(request)
    ctx.faults.clear()
    ctx.hub.clear_faults()
    return _json({"cleared": True})


async def faults_post(request: web.Request) -> web.Response:
    """POST /_sim/faults with ``{"kind": ..., ...}`` (see the README)."""
    ctx = ctx_of(request)
    try:
        spec = await _body(request)
        return _json(await _apply_fault(ctx, spec))
    except (FaultSpecError, ValueError, TypeError, KeyError) as exc:
        return _bad(str(exc))


async def _apply_fault(ctx: SimContext, spec: dict[str, Any]) -> dict[str, Any]:
    kind = spec.get("kind")
    api_key = spec.get("api_key")
    targets = ctx.hub.select(api_key, spec.get("connection_id"))
    if kind == "drop":
        await ctx.hub.drop(targets, abort=spec.get("mode", "abort") == "abort")
        return {"kind": kind, "connections": [c.id for c in targets]}
    if kind == "silence":
        seconds = spec.get("seconds")
        ctx.hub.silence(targets, None if seconds is None else float(seconds))
        return {"kind": kind, "connections": [c.id for c in targets]}
    if kind == "malformed":
        ctx.hub.malformed(targets, int(spec.get("frames", 1)))
        return {"kind": kind, "connections": [c.id for c in targets]}
    if kind == "ws_message":
        count = ctx.hub.send_message(
            [c.id for c in targets], str(spec.get("type", "message")), str(spec.get("data", ""))
        )
        return {"kind": kind, "connections": count}
    if kind in ("rest_429", "rest_5xx"):
        body = dict(spec)
        body.setdefault("status", 429 if kind == "rest_429" else 503)
        fault = ctx.faults.add_rest(body)
        return {"kind": kind, "status": fault.status, "remaining": fault.remaining}
    if kind == "order_response_delay":
        delay = ctx.faults.add_order_delay(spec)
        return {"kind": kind, "seconds": delay.seconds, "remaining": delay.remaining}
    if kind == "order_reject":
        count = int(spec.get("count", 1))
        message = str(spec.get("message", "RMS: order rejected by the simulator (fault)."))
        ctx.orders.reject_next(count, api_key, message)
        return {"kind": kind, "remaining": count}
    if kind == "token_expiry":
        if not api_key or ctx.accounts.get(str(api_key)) is None:
            raise FaultSpecError("token_expiry needs a known api_key")
        ctx.accounts.expire(str(api_key))
        return {"kind": kind, "api_key": api_key}
    raise FaultSpecError(f"unknown fault kind {kind!r}")


async def accounts(request: web.Request) -> web.Response:
    """POST /_sim/accounts ``{"api_key", "access_token"[, "api_secret"]}``: add or re-token."""
    ctx = ctx_of(request)
    try:
        body = await _body(request)
        api_key, token = str(body["api_key"]), str(body["access_token"])
    except (FaultSpecError, KeyError) as exc:
        return _bad(f"api_key and access_token are required ({exc})")
    account = ctx.accounts.upsert(api_key, token, body.get("api_secret"))
    ctx.orders.accounts = ctx.accounts.by_key()
    return _json({"api_key": account.api_key, "user_id": account.user_id})


async def instrument(request: web.Request) -> web.Response:
    """GET /_sim/instruments/{token}: dump row plus model parameters."""
    ctx = ctx_of(request)
    try:
        row = ctx.universe.index_of_token(int(request.match_info["token"]))
    except (ValueError, UnknownInstrument):
        return _bad("unknown token", 404)
    return _json(_describe(ctx, row))


def _describe(ctx: SimContext, row: int) -> dict[str, Any]:
    u = ctx.universe
    out: dict[str, Any] = dict(u.row_dict(row))
    out["row"] = row
    out["underlying"] = u.underlying(row).symbol
    out["liquidity"] = u.float_at("liquidity", row)
    out["idle_minute_probability"] = u.float_at("p_idle", row)
    return out


async def expire(request: web.Request) -> web.Response:
    """POST /_sim/instruments/expire ``{"instrument_token"}``: delist a contract now."""
    ctx = ctx_of(request)
    try:
        body = await _body(request)
        row = ctx.universe.expire(int(body["instrument_token"]))
    except (FaultSpecError, KeyError, ValueError, UnknownInstrument) as exc:
        return _bad(f"cannot expire: {exc}")
    return _json(_describe(ctx, row))


async def reuse(request: web.Request) -> web.Response:
    """POST /_sim/instruments/reuse: list a new contract on an expired contract's token.

    Body: ``{"instrument_token", "expiry"?: "YYYY-MM-DD", "strike"?, "instrument_type"?}``.
    The new contract has the old one's underlying; by default the same kind and strike, with
    an expiry one week after the old expiry.
    """
    ctx = ctx_of(request)
    u = ctx.universe
    try:
        body = await _body(request)
        token = int(body["instrument_token"])
        olds = [r for r in range(u.size) if u.int_at("token", r) == token]
        if not olds:
            return _bad("token was never listed")
        old = olds[-1]
        if u.bool_at("active", old):
            return _bad("token is still listed: expire it first")
        kind = u.int_at("kind", old)
        if kind not in (KIND_FUT, KIND_OPT):
            return _bad("only futures and options tokens can be reused")
        row = u.add(_reuse_spec(ctx, old, token, body))
    except (FaultSpecError, KeyError, ValueError) as exc:
        return _bad(f"cannot reuse: {exc}")
    ctx.state.grow()
    return _json(_describe(ctx, row))


def _reuse_spec(ctx: SimContext, old: int, token: int, body: dict[str, Any]) -> ContractSpec:
    """The new contract: given fields, else the old one's, a week later than any listed twin."""
    u = ctx.universe
    itype = str(body.get("instrument_type", u.instrument_type(old)))
    old_expiry = u.expiry_date[old]
    assert old_expiry is not None
    spec = ContractSpec(
        path=u.int_at("path", old),
        kind=KIND_FUT if itype == "FUT" else KIND_OPT,
        expiry=date.fromisoformat(body["expiry"]) if "expiry" in body else old_expiry,
        strike=float(body.get("strike", u.float_at("strike", old))),
        is_call=itype != "PE",
        monthly=bool(body.get("monthly", itype == "FUT")),
        token=token,
    )
    if "expiry" in body:
        return spec
    for weeks in range(1, 105):
        candidate = replace(spec, expiry=old_expiry + timedelta(days=7 * weeks))
        if not u.has_symbol("NFO", u.symbol_of(candidate)):
            return candidate
    raise ValueError("no free expiry within two years")


def _rows_param(ctx: SimContext, request: web.Request) -> list[int]:
    rows: list[int] = []
    for raw in request.query.getall("i", []):
        try:
            rows.append(ctx.universe.index_of_token(int(raw)))
        except (ValueError, UnknownInstrument):
            continue
    return rows


async def state(request: web.Request) -> web.Response:
    """GET /_sim/state?i=TOKEN...: the live day state the stream is built from."""
    ctx = ctx_of(request)
    rows = _rows_param(ctx, request)
    if not rows:
        return _json({"slot": ctx.state.slot, "instruments": {}})
    snap = ctx.state.snapshot(np.asarray(rows, dtype=np.int64))
    average = snap.average_price()
    out: dict[str, Any] = {}
    for i, row in enumerate(rows):
        out[str(ctx.universe.int_at("token", row))] = {
            "last_price": int(snap.last[i]) / TICKS_PER_RUPEE,
            "last_traded_quantity": int(snap.ltq[i]),
            "last_trade_time": int(snap.ltt[i]),
            "volume_traded": int(snap.volume[i]),
            "average_traded_price": round(float(average[i]), 2),
            "open": int(snap.open[i]) / TICKS_PER_RUPEE,
            "high": int(snap.high[i]) / TICKS_PER_RUPEE,
            "low": int(snap.low[i]) / TICKS_PER_RUPEE,
            "close": int(snap.close[i]) / TICKS_PER_RUPEE,
            "oi": int(snap.oi[i]),
            "oi_day_high": int(snap.oi_high[i]),
            "oi_day_low": int(snap.oi_low[i]),
        }
    return _json({"slot": ctx.state.slot, "instruments": out})


async def trade_path(request: web.Request) -> web.Response:
    """GET /_sim/trades?instrument_token=T&from=EPOCH&to=EPOCH: every trade of the path.

    Each trade: ``[epoch_second, price, quantity, cumulative_volume_in_minute]``; at most one
    hour per call.
    """
    ctx = ctx_of(request)
    try:
        row = ctx.universe.index_of_token(int(request.query["instrument_token"]))
        first = int(float(request.query["from"])) // 60
        last = int(float(request.query["to"])) // 60
    except (KeyError, ValueError, UnknownInstrument) as exc:
        return _bad(f"instrument_token, from and to are required ({exc})")
    if (last - first) * 60 > MAX_TRADE_WINDOW_S or last < first:
        return _bad("from/to must span at most one hour")
    minutes = ctx.clock.session_minutes(first, last)
    f = ctx.model.minute_fields(np.array([row], dtype=np.int64), minutes).ravel()
    return _json(
        {"instrument_token": int(request.query["instrument_token"]), "trades": _trades(ctx, f)}
    )


def _trades(ctx: SimContext, f: MinuteFields) -> list[list[float | int]]:
    out: list[list[float | int]] = []
    for i in np.flatnonzero(f.n > 0).tolist():
        one = f.take(np.array([i]))
        for r in range(int(one.n[0])):
            rank = np.array([r], dtype=np.int64)
            out.append(
                [
                    int(ctx.model.trade_epoch(one, rank)[0]),
                    int(ctx.model.trade_price(one, rank)[0]) / TICKS_PER_RUPEE,
                    int(
                        ctx.model.cum_quantity(one, rank + 1)[0]
                        - ctx.model.cum_quantity(one, rank)[0]
                    ),
                    int(ctx.model.cum_quantity(one, rank + 1)[0]),
                ]
            )
    return out


async def clock(request: web.Request) -> web.Response:
    """GET /_sim/clock: wall time, current slot and whether the market trades now."""
    ctx = ctx_of(request)
    minute = ctx.state.slot // ctx.clock.slots_per_minute
    return _json(
        {
            "now": ctx.clock.now(),
            "slot": ctx.state.slot,
            "slot_epoch": ctx.clock.slot_epoch(ctx.state.slot),
            "minute": minute,
            "slots_per_minute": ctx.clock.slots_per_minute,
            "in_session": bool(ctx.clock.in_session(np.array([minute]))[0]),
            "follow_calendar": ctx.clock.follow_calendar,
        }
    )


def add_control_routes(app: web.Application) -> None:
    """Register the ``/_sim/`` routes."""
    app.router.add_get("/_sim/stats", stats)
    app.router.add_post("/_sim/reset-stats", reset_stats)
    app.router.add_get("/_sim/orders", orders)
    app.router.add_get("/_sim/faults", faults_get)
    app.router.add_post("/_sim/faults", faults_post)
    app.router.add_delete("/_sim/faults", faults_delete)
    app.router.add_post("/_sim/accounts", accounts)
    app.router.add_post("/_sim/instruments/expire", expire)
    app.router.add_post("/_sim/instruments/reuse", reuse)
    app.router.add_get("/_sim/instruments/{token}", instrument)
    app.router.add_get("/_sim/state", state)
    app.router.add_get("/_sim/trades", trade_path)
    app.router.add_get("/_sim/clock", clock)
