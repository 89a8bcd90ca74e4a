"""Kite REST routes for orders, trades and positions."""

from __future__ import annotations

import asyncio

import numpy as np
from aiohttp import web

from ticker_tasks.simulator.contracts import TICKS_PER_RUPEE
from ticker_tasks.simulator.rest import api_key_of, ctx_of, ok


async def _form(request: web.Request) -> dict[str, str]:
    form = await request.post()
    return {k: str(v) for k, v in form.items()}


async def list_orders(request: web.Request) -> web.Response:
    """GET /orders."""
    return ok(ctx_of(request).orders.for_account(api_key_of(request)))


async def place_order(request: web.Request) -> web.Response:
    """POST /orders/{variety} (the delay fault answers late, after the order is placed)."""
    ctx = ctx_of(request)
    api_key = api_key_of(request)
    order_id = ctx.orders.place(api_key, request.match_info["variety"], await _form(request))
    delay = ctx.faults.take_order_delay(api_key)
    if delay is not None:
        await asyncio.sleep(delay)
    return ok({"order_id": order_id})


async def modify_order(request: web.Request) -> web.Response:
    """PUT /orders/{variety}/{order_id}."""
    ctx = ctx_of(request)
    order_id = ctx.orders.modify(
        api_key_of(request),
        request.match_info["variety"],
        request.match_info["order_id"],
        await _form(request),
    )
    return ok({"order_id": order_id})


async def cancel_order(request: web.Request) -> web.Response:
    """DELETE /orders/{variety}/{order_id}."""
    ctx = ctx_of(request)
    order_id = ctx.orders.cancel(
        api_key_of(request), request.match_info["variety"], request.match_info["order_id"]
    )
    return ok({"order_id": order_id})


async def order_history(request: web.Request) -> web.Response:
    """GET /orders/{order_id}: every state, oldest first."""
    ctx = ctx_of(request)
    return ok(ctx.orders.history(api_key_of(request), request.match_info["order_id"]))


async def order_trades(request: web.Request) -> web.Response:
    """GET /orders/{order_id}/trades."""
    ctx = ctx_of(request)
    api_key = api_key_of(request)
    order_id = request.match_info["order_id"]
    ctx.orders.history(api_key, order_id)  # unknown order -> OrderException
    return ok(ctx.orders.portfolio.trades(api_key, order_id))


async def trades(request: web.Request) -> web.Response:
    """GET /trades."""
    ctx = ctx_of(request)
    return ok(ctx.orders.portfolio.trades(api_key_of(request)))


async def positions(request: web.Request) -> web.Response:
    """GET /portfolio/positions valued at the current last prices."""
    ctx = ctx_of(request)
    api_key = api_key_of(request)
    rows = ctx.orders.portfolio.rows(api_key)
    last: dict[int, float] = {}
    close: dict[int, float] = {}
    if rows:
        snap = ctx.state.snapshot(np.asarray(rows, dtype=np.int64))
        for i, row in enumerate(rows):
            last[row] = int(snap.last[i]) / TICKS_PER_RUPEE
            close[row] = int(snap.close[i]) / TICKS_PER_RUPEE
    return ok(ctx.orders.portfolio.positions(api_key, last, close))


def add_order_routes(app: web.Application) -> None:
    """Register order, trade and position routes."""
    app.router.add_get("/orders", list_orders)
    app.router.add_post("/orders/{variety}", place_order)
    app.router.add_put("/orders/{variety}/{order_id}", modify_order)
    app.router.add_delete("/orders/{variety}/{order_id}", cancel_order)
    app.router.add_get("/orders/{order_id}", order_history)
    app.router.add_get("/orders/{order_id}/trades", order_trades)
    app.router.add_get("/trades", trades)
    app.router.add_get("/portfolio/positions", positions)
