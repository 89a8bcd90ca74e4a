"""Wiring: the REST app (with ``/_sim/``), the ticker app and the market loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from ticker_tasks.simulator.config import SimulatorConfig
from ticker_tasks.simulator.context import CONTEXT, SimContext, build_context
from ticker_tasks.simulator.control import add_control_routes
from ticker_tasks.simulator.market import MarketModel
from ticker_tasks.simulator.rest import add_market_routes, kite_middleware
from ticker_tasks.simulator.rest_orders import add_order_routes
from ticker_tasks.simulator.streamer import Streamer

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5.0


@dataclass(slots=True)
class RunningSimulator:
    """A simulator serving in this event loop.

    Attributes:
        rest_url: ``http://host:port`` (pass as ``KiteConnect(root=...)``).
        ws_url: ``ws://host:port`` (pass as ``KiteTicker(root=...)``).
        context: Every component (universe, model, state, order book, statistics).
    """

    rest_url: str
    ws_url: str
    context: SimContext
    _runners: list[web.AppRunner] = field(default_factory=list)
    _streamer: Streamer | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def model(self) -> MarketModel:
        """The market model (universe, clock, trade path)."""
        return self.context.model

    def market_loop_done(self) -> bool:
        """Whether the market loop task has ended (it only ends on :meth:`stop`)."""
        return self._task is None or self._task.done()

    async def stop(self) -> None:
        """Stop the market loop, close every ticker connection and both servers."""
        if self._streamer is not None:
            self._streamer.stop()
        if self._task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, timeout=STOP_TIMEOUT_S)
            self._task = None
        await self.context.hub.close_all()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()


def _rest_app(ctx: SimContext) -> web.Application:
    app = web.Application(middlewares=[kite_middleware])
    app[CONTEXT] = ctx
    add_control_routes(app)
    add_market_routes(app)
    add_order_routes(app)
    return app


async def _serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, int(bound)


async def start_simulator(
    config: SimulatorConfig, time_source: Callable[[], float] = time.time
) -> RunningSimulator:
    """Build the market and start serving REST, the ticker and the market loop.

    Args:
        config: Simulator options (port 0 picks a free port; ``ws_port=None`` shares the
            REST port).
        time_source: Wall clock (epoch seconds).

    Returns:
        The running simulator; call :meth:`RunningSimulator.stop` to shut it down.
    """
    ctx = build_context(config, time_source)
    rest = _rest_app(ctx)
    if config.shared_port:
        rest.router.add_get("/", ctx.hub.handle)
    runner, rest_port = await _serve(rest, config.host, config.rest_port)
    runners = [runner]
    ws_port = rest_port
    if not config.shared_port:
        ticker = web.Application()
        ticker[CONTEXT] = ctx
        ticker.router.add_get("/{tail:.*}", ctx.hub.handle)
        ws_runner, ws_port = await _serve(ticker, config.host, config.ws_port or 0)
        runners.append(ws_runner)
    streamer = Streamer(ctx)
    task = asyncio.create_task(streamer.run(), name="simulator-market-loop")
    sim = RunningSimulator(
        rest_url=f"http://{config.host}:{rest_port}",
        ws_url=f"ws://{config.host}:{ws_port}",
        context=ctx,
        _runners=runners,
        _streamer=streamer,
        _task=task,
    )
    log.info(
        "simulator ready: rest %s ws %s, %d instruments",
        sim.rest_url,
        sim.ws_url,
        ctx.universe.active_count(),
    )
    return sim
