"""A ticker connection stopped while its socket is still connecting does not stream on.

A local WebSocket server (real sockets) holds the upgrade for a moment, then sends a frame
every 10 ms, so the silence watchdog never fires: only closing the socket ends the run.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection, serve

from tests.support.services import Service
from ticker_tasks.kite.rest import KiteAccount
from workers.streamer.batcher import Batcher
from workers.streamer.connection import AccountAuth, OutageLog, TickerConnection

pytestmark = pytest.mark.integration

HANDSHAKE_DELAY_S = 1.0
#: Generous bound on the run's exit once stopped (its own close waits 2 s at most).
EXIT_BOUND_S = 10.0


async def _hold_upgrade(connection: ServerConnection, request: Any) -> None:
    await asyncio.sleep(HANDSHAKE_DELAY_S)


async def _stream(connection: ServerConnection) -> None:
    frame = (1).to_bytes(2, "big") + (8).to_bytes(2, "big") + bytes(8)
    with contextlib.suppress(Exception):
        while True:
            await connection.send(frame)
            await asyncio.sleep(0.01)


async def _scenario(redis_url: str) -> tuple[bool, int]:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    async with serve(_stream, "127.0.0.1", 0, process_request=_hold_upgrade) as server:
        port = server.sockets[0].getsockname()[1]
        batcher = Batcher(1000, 0.05, lambda batch: None, account_id="S", connection="S:0")
        connection = TickerConnection(
            account_id="S",
            index=0,
            ws_root=f"ws://127.0.0.1:{port}/",
            credentials=lambda: KiteAccount("S", "key", "token"),
            auth=AccountAuth("S", lambda token: None),
            batcher=batcher,
            outages=OutageLog(client),
            on_order=lambda update: None,
            connect_timeout_s=10.0,
            silence_timeout_s=60.0,
            reconnect_max_s=1.0,
        )
        run = asyncio.create_task(connection.run())
        await asyncio.sleep(HANDSHAKE_DELAY_S / 2)  # the upgrade is in flight
        await connection.stop()
        done, _ = await asyncio.wait({run}, timeout=EXIT_BOUND_S)
        frames = connection.stats.frames
        run.cancel()
        batcher.close()
    await client.aclose()
    return bool(done), frames


def test_a_connection_stopped_mid_connect_closes_its_new_socket(redis_service: Service) -> None:
    exited, frames = asyncio.run(_scenario(redis_service.url))
    assert exited, "run() kept streaming after stop()"
    assert frames == 0
