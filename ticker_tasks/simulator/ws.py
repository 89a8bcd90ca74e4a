"""The ticker WebSocket server: authentication at upgrade, subscriptions, frames, heartbeats.

One :class:`Connection` per client socket. Credentials come from the query string and are
checked before the upgrade (HTTP 403 on bad credentials, 429 for a connection beyond the
per-api_key cap), so the official client reports ``WebSocket connection upgrade failed
(403 - Forbidden)``. Client messages (``subscribe``/``unsubscribe``/``mode``) are idempotent.
The :class:`~ticker_tasks.simulator.streamer.Streamer` hands every slot's trades to
:meth:`TickerHub.fanout`, which queues one binary frame per connection; a sender task per
connection writes the queue and sends a 1-byte heartbeat after each idle second.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import time
from collections import deque
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from aiohttp import WSMsgType, web

from ticker_tasks.kite.codec import HEARTBEAT, encode
from ticker_tasks.simulator.auth import Accounts
from ticker_tasks.simulator.config import SimulatorConfig
from ticker_tasks.simulator.connection import Connection
from ticker_tasks.simulator.frames import MODE_CODES, build_rows
from ticker_tasks.simulator.state import MarketState, SlotTrades

log = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]
RECEIVE_TIMEOUT_S: Final = 30.0
SEND_TIMEOUT_S: Final = 10.0
CLOSED_KEPT: Final = 1000
ENSURE_CHUNK: Final = 256
TOO_MANY: Final = "Can't subscribe to more than {limit} instruments."


class TickerHub:
    """Every ticker connection of the simulator.

    Args:
        config: Simulator options.
        accounts: Credentials.
        state: Live market state.
    """

    def __init__(self, config: SimulatorConfig, accounts: Accounts, state: MarketState) -> None:
        self.config = config
        self.accounts = accounts
        self.state = state
        self.connections: dict[str, Connection] = {}
        self.closed: deque[Connection] = deque(maxlen=CLOSED_KEPT)
        self.rejected: dict[str, int] = {"403": 0, "429": 0}
        self._ids = itertools.count(1)

    # ----------------------------------------------------------------- handshake

    def open_count(self, api_key: str) -> int:
        """Open connections of an api_key."""
        return sum(1 for c in self.connections.values() if c.api_key == api_key)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """aiohttp handler of the ticker endpoint (any path)."""
        api_key = request.query.get("api_key", "")
        token = request.query.get("access_token", "")
        if not self.accounts.valid(api_key, token):
            self.rejected["403"] += 1
            return web.Response(status=403, text="Forbidden")
        if self.open_count(api_key) >= self.config.max_connections_per_key:
            self.rejected["429"] += 1
            return web.Response(status=429, reason="TooManyRequests", text="Too many connections")
        ws = web.WebSocketResponse(autoping=True, heartbeat=None, compress=False)
        if not ws.can_prepare(request).ok:
            return web.json_response(
                {
                    "status": "error",
                    "message": "WebSocket upgrade expected",
                    "error_type": "InputException",
                },
                status=400,
            )
        conn = Connection(
            id=f"c{next(self._ids)}",
            api_key=api_key,
            ws=ws,
            transport=request.transport,
            queue=asyncio.Queue(maxsize=self.config.send_queue_frames),
        )
        self.connections[conn.id] = conn
        try:
            await ws.prepare(request)
            sender = asyncio.create_task(self._sender(conn), name=f"ticker-send-{conn.id}")
            try:
                await self._reader(conn)
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
        except Exception:  # connection boundary: log, close, never crash the server
            log.exception("ticker connection %s failed", conn.id)
            conn.close_reason = conn.close_reason or "error"
        finally:
            self._forget(conn)
            if not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await asyncio.wait_for(ws.close(), timeout=SEND_TIMEOUT_S)
        return ws

    def _forget(self, conn: Connection) -> None:
        if self.connections.pop(conn.id, None) is not None:
            conn.closed_at = time.time()
            conn.close_reason = conn.close_reason or "closed"
            self.closed.append(conn)

    # ----------------------------------------------------------------- reading

    async def _reader(self, conn: Connection) -> None:
        while not conn.ws.closed:
            try:
                msg = await conn.ws.receive(timeout=RECEIVE_TIMEOUT_S)
            except TimeoutError:
                continue
            if msg.type == WSMsgType.TEXT:
                await self._on_text(conn, str(msg.data))
            elif msg.type in (
                WSMsgType.CLOSE,
                WSMsgType.CLOSING,
                WSMsgType.CLOSED,
                WSMsgType.ERROR,
            ):
                conn.close_reason = conn.close_reason or f"client {msg.type.name.lower()}"
                return

    async def _on_text(self, conn: Connection, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        action, value = message.get("a"), message.get("v")
        if action == "subscribe" and isinstance(value, list):
            await self._subscribe(conn, _tokens(value), None)
        elif action == "unsubscribe" and isinstance(value, list):
            for token in _tokens(value):
                conn.modes.pop(token, None)
                conn.snapshot.discard(token)
            conn.resolved_version = -1
        elif action == "mode" and isinstance(value, list) and len(value) == 2:
            mode = MODE_CODES.get(str(value[0]))
            if mode is not None and isinstance(value[1], list):
                await self._subscribe(conn, _tokens(value[1]), mode)

    async def _subscribe(self, conn: Connection, tokens: list[int], mode: int | None) -> None:
        """Subscribe (``mode`` None: default quote, existing modes kept) or set a mode."""
        limit = self.config.max_tokens_per_connection
        refused = False
        changed: list[int] = []
        for token in tokens:
            if token in conn.modes:
                if mode is not None and conn.modes[token] != mode:
                    conn.modes[token] = mode
                    changed.append(token)
                continue
            if mode is not None and not self.config.mode_subscribes:
                continue
            if len(conn.modes) >= limit:
                refused = True
                continue
            conn.modes[token] = mode or MODE_CODES["quote"]
            changed.append(token)
        if refused:
            self._send_text(
                conn, json.dumps({"type": "error", "data": TOO_MANY.format(limit=limit)})
            )
        if not changed:
            return
        rows, _ = self.state.model.universe.indices_of_tokens(changed)
        for lo in range(0, rows.size, ENSURE_CHUNK):
            self.state.ensure(rows[lo : lo + ENSURE_CHUNK])
            await asyncio.sleep(0)
        if self.config.snapshot_on_subscribe:
            conn.snapshot.update(changed)
        conn.resolved_version = -1

    # ----------------------------------------------------------------- writing

    def _send_text(self, conn: Connection, text: str) -> None:
        try:
            conn.queue.put_nowait((False, text, 0))
        except asyncio.QueueFull:
            conn.frames_dropped += 1

    def broadcast_order(self, api_key: str, payload: dict[str, Any]) -> None:
        """Queue an order update for every connection of ``api_key``."""
        text = json.dumps({"type": "order", "data": payload})
        for conn in list(self.connections.values()):
            if conn.api_key == api_key:
                self._send_text(conn, text)

    def send_message(self, conn_ids: list[str], kind: str, data: str) -> int:
        """Queue a text ``{"type": kind, "data": data}`` message (control API)."""
        text = json.dumps({"type": kind, "data": data})
        for conn_id in conn_ids:
            self._send_text(self.connections[conn_id], text)
        return len(conn_ids)

    async def _sender(self, conn: Connection) -> None:
        """Write queued messages; heartbeat when idle; abort the socket if writing fails."""
        try:
            await self._send_loop(conn)
        except (ConnectionError, RuntimeError, TimeoutError) as exc:
            log.info("ticker connection %s: send failed (%s); closing", conn.id, exc)
            conn.close_reason = conn.close_reason or "send failed"
            if conn.transport is not None:
                conn.transport.abort()

    async def _send_loop(self, conn: Connection) -> None:
        interval = self.config.heartbeat_interval_s
        while not conn.ws.closed:
            try:
                binary, payload, packets = await asyncio.wait_for(
                    conn.queue.get(), timeout=interval
                )
            except TimeoutError:
                if not conn.silent:
                    await self._write(conn, True, HEARTBEAT)
                    conn.heartbeats_sent += 1
                continue
            if conn.silent:
                conn.frames_dropped += 1
                continue
            if binary and conn.truncate_frames > 0:
                conn.truncate_frames -= 1
                assert isinstance(payload, bytes)
                payload = payload[: max(3, len(payload) // 2)]
            await self._write(conn, binary, payload)
            if binary:
                conn.frames_sent += 1
                conn.packets_sent += packets
            else:
                conn.texts_sent += 1

    async def _write(self, conn: Connection, binary: bool, payload: bytes | str) -> None:
        if binary:
            assert isinstance(payload, bytes)
            await asyncio.wait_for(conn.ws.send_bytes(payload), timeout=SEND_TIMEOUT_S)
        else:
            await asyncio.wait_for(conn.ws.send_str(str(payload)), timeout=SEND_TIMEOUT_S)

    # ----------------------------------------------------------------- streaming

    def _resolve(self, conn: Connection) -> None:
        universe = self.state.model.universe
        if conn.resolved_version == universe.version:
            return
        tokens = list(conn.modes)
        rows, found = universe.indices_of_tokens(tokens)
        conn.rows = rows
        conn.row_modes = np.array([conn.modes[t] for t in found], dtype=np.int64)
        conn.resolved_version = universe.version

    def fanout(self, trades: SlotTrades) -> None:
        """Queue this slot's ticks: one frame per connection with its traded tokens (every
        subscribed token with ``every_slot``)."""
        if not self.connections:
            return
        universe = self.state.model.universe
        traded = np.zeros(universe.size, dtype=np.bool_)
        traded[trades.rows] = True
        ready = self.state.ready
        for conn in list(self.connections.values()):
            self._resolve(conn)
            if conn.rows.size == 0:
                continue
            stale = ~ready[conn.rows]
            if stale.any():  # after a skip-ahead or a listing change: recompute, then stream
                self.state.ensure(conn.rows[stale])
                ready = self.state.ready
            pick = (traded[conn.rows] | self.config.every_slot) & ready[conn.rows]
            if conn.snapshot:
                wanted, _ = universe.indices_of_tokens(sorted(conn.snapshot))
                pick |= np.isin(conn.rows, wanted) & ready[conn.rows]
                conn.snapshot.clear()
            if not pick.any():
                continue
            rows = conn.rows[pick]
            frame = encode(build_rows(self.state, rows, conn.row_modes[pick]))
            try:
                conn.queue.put_nowait((True, frame, int(rows.size)))
            except asyncio.QueueFull:
                conn.frames_dropped += 1

    # ----------------------------------------------------------------- faults

    def select(self, api_key: str | None, connection_id: str | None) -> list[Connection]:
        """Open connections matching a fault target (one id, one api_key, or all)."""
        return [
            c
            for c in self.connections.values()
            if (connection_id is None or c.id == connection_id)
            and (api_key is None or c.api_key == api_key)
        ]

    async def drop(self, targets: list[Connection], abort: bool) -> None:
        """Abort the TCP connection (or close cleanly with 1000) of each target."""
        for conn in targets:
            conn.close_reason = "dropped (abort)" if abort else "dropped (close)"
            if abort and conn.transport is not None:
                conn.transport.abort()
            else:
                with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
                    await asyncio.wait_for(conn.ws.close(code=1000, message=b"bye"), SEND_TIMEOUT_S)

    @staticmethod
    def silence(targets: list[Connection], seconds: float | None) -> None:
        """Send nothing (no data, no heartbeat) for ``seconds`` (None: until cleared)."""
        until = math.inf if seconds is None else time.monotonic() + seconds
        for conn in targets:
            conn.silent_until = until

    @staticmethod
    def malformed(targets: list[Connection], frames: int) -> None:
        """Truncate the next ``frames`` binary frames of each target."""
        for conn in targets:
            conn.truncate_frames += frames

    def clear_faults(self) -> None:
        """End silences and pending truncations."""
        for conn in self.connections.values():
            conn.silent_until = 0.0
            conn.truncate_frames = 0

    async def close_all(self) -> None:
        """Close every connection (server shutdown)."""
        for conn in list(self.connections.values()):
            conn.close_reason = "server shutdown"
            with contextlib.suppress(ConnectionError, RuntimeError, TimeoutError):
                await asyncio.wait_for(conn.ws.close(code=1001, message=b"going away"), 2.0)

    def stats(self) -> dict[str, Any]:
        """WebSocket statistics for ``/_sim/stats``."""
        per_key: dict[str, int] = {}
        for conn in self.connections.values():
            per_key[conn.api_key] = per_key.get(conn.api_key, 0) + 1
        every = {c.id: c.stats() for c in self.closed}
        every.update({c.id: c.stats() for c in self.connections.values()})
        return {
            "open": len(self.connections),
            "open_per_api_key": per_key,
            "rejected": dict(self.rejected),
            "connections": every,
        }


def _tokens(values: list[Any]) -> list[int]:
    """Integer tokens of a message (strings and other types are ignored, like Kite)."""
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
