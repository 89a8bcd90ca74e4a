"""One Kite ticker WebSocket: connect, subscribe, read frames, reconnect (asyncio only).

A :class:`TickerConnection` owns one socket of one account (connection id
``"{account_id}:{index}"``, the ``connection`` of its tick batches). It runs until
:meth:`TickerConnection.stop`:

* **Connect** to ``{kite_ws_root}?api_key=..&access_token=..`` with the connect timeout; the
  credentials are read again (a callable, from the database) before every attempt.
* **Subscribe** everything of its share of the plan on every (re)connect, per mode:
  ``subscribe`` then ``mode``, chunks of at most :data:`CHUNK` tokens. Later plan changes
  arrive as :class:`~ticker_tasks.subscriptions.plan.ConnectionDiff` (:meth:`apply`).
* **Read**: binary frames longer than one byte go to the connection's
  :class:`~workers.streamer.batcher.Batcher` with their receive time (never parsed; the packet
  count is the frame's first two bytes); 1-byte heartbeats only prove liveness; text
  ``order`` messages go to ``on_order``, ``error`` messages are logged and counted.
* **Capture** (optional): every binary data frame is also appended, with its receive time,
  to the connection's :class:`~workers.streamer.capture.CaptureWriter` (its owner flushes and
  closes it).
* **Watchdog**: a socket that delivers nothing (no frame, no heartbeat) for
  ``streamer_silence_timeout_s`` is closed and replaced. The time of the last frame holding a
  canary token is tracked (:func:`frame_has_token`, packet headers only, at most one hit per
  :data:`CANARY_SCAN_EVERY_S`); the account decides with :func:`lagging_canaries` which
  sockets to :meth:`TickerConnection.replace` (outage reason ``canary_lag``).
* **Reconnect** with exponential backoff and jitter (1 s doubling up to
  ``streamer_reconnect_max_s``). HTTP 403 at the upgrade marks the account's token invalid
  (:class:`AccountAuth`): no connection of the account retries until the stored token
  changes. HTTP 429 is retried with backoff.
* **Outages**: every interruption (last frame before it, until subscribed again) is appended
  to :data:`~schemas.feed.OUTAGES_STREAM` by :class:`OutageLog`.

Every wait is bounded with ``asyncio.timeout``, never ``asyncio.wait_for``: on Python 3.11 the
latter loses a cancellation that arrives as its awaitable completes (see
:mod:`workers.streamer.tasks`), and a lost cancellation here would keep a socket reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import redis.asyncio as aioredis
from pydantic import ValidationError as PydanticValidationError
from redis.exceptions import RedisError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from schemas.feed import OUTAGES_STREAM, OUTAGES_STREAM_MAXLEN, Outage
from schemas.ticks import OrderUpdate
from ticker_tasks.errors import AuthError
from ticker_tasks.kite.rest import KiteAccount
from ticker_tasks.subscriptions.plan import MODES, ConnectionDiff
from workers.streamer.batcher import Batcher
from workers.streamer.capture import CaptureWriter

log = logging.getLogger(__name__)

#: Most tokens in one subscribe / unsubscribe / mode message.
CHUNK: Final = 3000
FIRST_BACKOFF_S: Final = 1.0
#: Heartbeats in a row (no data frame between) that prove a drained socket is quiet.
QUIET_HEARTBEATS: Final = 2
REDIS_TIMEOUT_S: Final = 2.0
#: After a frame with a canary token, frames are not scanned for one again this long.
CANARY_SCAN_EVERY_S: Final = 1.0
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")

Credentials = Callable[[], KiteAccount]
OrderSink = Callable[[OrderUpdate], None]


@dataclass
class ConnectionStats:
    """Counters of one connection (exported by the service's collector)."""

    connected: bool = False
    frames: int = 0
    packets: int = 0
    bytes: int = 0
    heartbeats: int = 0
    reconnects: int = 0
    errors: int = 0
    orders: int = 0
    outages: int = 0
    last_frame_at: float = 0.0
    #: Receive time of the last frame holding a canary token (0: none yet).
    last_canary_at: float = 0.0
    #: When the socket was last subscribed.
    subscribed_at: float = 0.0


def frame_has_token(frame: bytes, tokens: frozenset[int]) -> bool:
    """Whether a binary frame holds a packet of one of ``tokens`` (packet headers only).

    A frame is a ``uint16`` packet count, then per packet a ``uint16`` length and the packet,
    whose first 4 bytes are its instrument token (all big-endian). A torn frame is scanned as
    far as it goes.
    """
    size = len(frame)
    if size < 2:
        return False
    (count,) = _U16.unpack_from(frame, 0)
    offset = 2
    for _ in range(count):
        if offset + 2 > size:
            return False
        (length,) = _U16.unpack_from(frame, offset)
        offset += 2
        if length >= 4 and offset + 4 <= size and _U32.unpack_from(frame, offset)[0] in tokens:
            return True
        offset += length
    return False


def lagging_canaries(
    last_canary: Mapping[str, float],
    now: float,
    lag_s: float,
    subscribed_at: Mapping[str, float] | None = None,
) -> list[str]:
    """The connections whose canary is older than their freshest sibling's by over ``lag_s``.

    Args:
        last_canary: ``{connection id: time of its last frame with a canary}`` of the
            subscribed connections (0: none seen yet).
        now: The current time (same clock).
        lag_s: Allowed lag (0 = off).
        subscribed_at: When each connection was last subscribed: a connection is not judged
            on its canary before that time plus ``lag_s`` (grace after a reconnect).

    Returns:
        The connection ids to replace, sorted. None with fewer than two connections, or
        while no connection has seen a canary (a quiet market is no lag).
    """
    if lag_s <= 0 or len(last_canary) < 2:
        return []
    seen = [at for at in last_canary.values() if at > 0]
    if not seen:
        return []
    freshest = min(max(seen), now)
    since = subscribed_at or {}
    return sorted(
        cid for cid, at in last_canary.items() if freshest - max(at, since.get(cid, 0.0)) > lag_s
    )


class AccountAuth:
    """Whether an account's token may be tried: cleared by a 403, set again on a new token.

    Args:
        account_id: The account.
        on_invalid: Called once per rejected token (record ``token_status`` invalid).
    """

    def __init__(self, account_id: str, on_invalid: Callable[[str], None]) -> None:
        self.account_id = account_id
        self._on_invalid = on_invalid
        self._allowed = asyncio.Event()
        self._allowed.set()
        self.rejected_token: str | None = None
        self.rejections = 0

    @property
    def blocked(self) -> bool:
        """Whether the last token was rejected and no new one is stored yet."""
        return not self._allowed.is_set()

    def reject(self, access_token: str) -> None:
        """The broker refused ``access_token`` (HTTP 403): stop every connection retrying."""
        if self.blocked and self.rejected_token == access_token:
            return
        self.rejected_token = access_token
        self.rejections += 1
        self._allowed.clear()
        log.error(
            "account %s: access token rejected (403); waiting for a new token", self.account_id
        )
        self._on_invalid(self.account_id)

    def token_stored(self, access_token: str) -> None:
        """The stored token is now ``access_token``: resume when it differs from the rejected."""
        if self.blocked and access_token != self.rejected_token:
            log.warning("account %s: new access token stored; reconnecting", self.account_id)
            self._allowed.set()

    async def wait_allowed(self, timeout_s: float) -> bool:
        """Wait until connecting is allowed; False when ``timeout_s`` passed first."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._allowed.wait()
        except TimeoutError:
            return False
        return True


class OutageLog:
    """Appends outages to :data:`OUTAGES_STREAM` (``XADD MAXLEN ~``); failures are counted."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self.recorded = 0
        self.failed = 0

    async def record(self, outage: Outage) -> None:
        """Append one outage; a Redis failure is logged and counted, never raised."""
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                await self._redis.xadd(
                    OUTAGES_STREAM,
                    outage.to_fields(),  # type: ignore[arg-type]
                    maxlen=OUTAGES_STREAM_MAXLEN,
                    approximate=True,
                )
            self.recorded += 1
        except (RedisError, OSError, TimeoutError) as exc:
            self.failed += 1
            log.error("outage of %s not recorded: %r", outage.connection, exc)


def _chunks(tokens: Iterable[int]) -> list[list[int]]:
    ordered = sorted(tokens)
    return [ordered[i : i + CHUNK] for i in range(0, len(ordered), CHUNK)]


def _by_mode(tokens: Mapping[int, str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {mode: [] for mode in MODES}
    for token, mode in tokens.items():
        groups[mode].append(token)
    return {mode: group for mode, group in groups.items() if group}


class TickerConnection:
    """One ticker socket of an account, reconnecting until :meth:`stop`.

    Args:
        account_id: Account holding the connection.
        index: Connection index within the account (0..2).
        ws_root: ``kite_ws_root``.
        credentials: Reads the account's api_key and current access token (database).
        auth: The account's token gate (shared by its connections).
        batcher: Receives the binary frames.
        outages: Where outages are recorded.
        on_order: Receives order updates (must not block long).
        connect_timeout_s: Timeout of connect + upgrade.
        silence_timeout_s: Close a socket silent this long.
        reconnect_max_s: Longest backoff between attempts.
        capture: Raw-frame capture of the connection (None: off); closed by the owner.
        canaries: Canary tokens whose frames :attr:`ConnectionStats.last_canary_at` tracks.
    """

    def __init__(
        self,
        *,
        account_id: str,
        index: int,
        ws_root: str,
        credentials: Credentials,
        auth: AccountAuth,
        batcher: Batcher,
        outages: OutageLog,
        on_order: OrderSink,
        connect_timeout_s: float,
        silence_timeout_s: float,
        reconnect_max_s: float,
        capture: CaptureWriter | None = None,
        canaries: Iterable[int] = (),
    ) -> None:
        self.account_id = account_id
        self.index = index
        self.connection_id = f"{account_id}:{index}"
        self.stats = ConnectionStats()
        self.batcher = batcher
        self._ws_root = ws_root
        self._credentials = credentials
        self._auth = auth
        self._outages = outages
        self._on_order = on_order
        self._connect_timeout_s = connect_timeout_s
        self._silence_timeout_s = silence_timeout_s
        self._reconnect_max_s = reconnect_max_s
        self._tokens: dict[int, str] = {}
        self._ws: ClientConnection | None = None
        self._live = False
        self._lock = asyncio.Lock()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._draining = False
        self._quiet = asyncio.Event()
        self._quiet_count = 0
        self._outage_start: float | None = None
        self._outage_reason = ""
        self.capture = capture
        self._canaries = frozenset(canaries)
        self._close_reason: str | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def live(self) -> bool:
        """Whether the socket is open and subscribed."""
        return self._live

    @property
    def tokens(self) -> dict[int, str]:
        """The connection's share of the plan ``{instrument_token: mode}``."""
        return dict(self._tokens)

    # ------------------------------------------------------------------ plan changes

    async def apply(self, diff: ConnectionDiff) -> bool:
        """Apply a plan change: remember it, and send it when the socket is subscribed.

        Returns:
            True when messages were sent on the socket (False: nothing to send, or not live).
        """
        for token in diff.unsubscribe:
            self._tokens.pop(token, None)
        self._tokens.update(diff.subscribe)
        self._tokens.update(diff.mode_changes)
        async with self._lock:
            ws = self._ws
            if not self._live or ws is None:
                return False  # the next (re)subscribe sends the whole set
            if not (diff.unsubscribe or diff.subscribe or diff.mode_changes):
                return False
            try:
                for chunk in _chunks(diff.unsubscribe):
                    await ws.send(json.dumps({"a": "unsubscribe", "v": chunk}))
                await self._send_modes(ws, diff.subscribe, subscribe=True)
                await self._send_modes(ws, diff.mode_changes, subscribe=False)
            except ConnectionClosed as exc:
                log.info("%s: closed while applying a plan change (%s)", self.connection_id, exc)
                return False
            return True

    @staticmethod
    async def _send_modes(
        ws: ClientConnection, tokens: Mapping[int, str], *, subscribe: bool
    ) -> None:
        for mode, group in _by_mode(tokens).items():
            for chunk in _chunks(group):
                if subscribe:
                    await ws.send(json.dumps({"a": "subscribe", "v": chunk}))
                await ws.send(json.dumps({"a": "mode", "v": [mode, chunk]}))

    # ------------------------------------------------------------------ life cycle

    async def run(self) -> None:
        """Connect, stream and reconnect until :meth:`stop`; never raises but on cancel."""
        delay = FIRST_BACKOFF_S
        while not self._stopping:
            if self._auth.blocked:
                self._begin_outage("token_expired")
                await self._auth.wait_allowed(1.0)
                continue
            try:
                account = self._credentials()
            except AuthError as exc:  # disabled, or no token stored
                self._begin_outage("no_token")
                log.error("%s: cannot connect: %s", self.connection_id, exc)
                await self._sleep(delay)
                continue
            try:
                await self._connect_and_stream(account)
                delay = FIRST_BACKOFF_S
                continue
            except InvalidStatus as exc:
                status = exc.response.status_code
                self._begin_outage("token_expired" if status == 403 else f"http_{status}")
                if status == 403:
                    self._auth.reject(account.access_token or "")
                    continue
                log.warning(
                    "%s: upgrade refused with HTTP %s; retrying", self.connection_id, status
                )
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed) as exc:
                self._begin_outage("connect_failed")
                log.warning("%s: connect failed: %r", self.connection_id, exc)
            except Exception:  # connection boundary: logged and counted, then reconnect
                self.stats.errors += 1
                self._begin_outage("error")
                log.exception("%s: unexpected failure", self.connection_id)
            await self._sleep(delay)
            delay = min(delay * 2, self._reconnect_max_s)
        await self._end_outage()

    async def _sleep(self, delay: float) -> None:
        jittered = delay * (0.5 + random.random() / 2)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(jittered):
                await self._stopped.wait()

    async def _connect_and_stream(self, account: KiteAccount) -> None:
        url = f"{self._ws_root}?api_key={account.api_key}&access_token={account.access_token}"
        async with asyncio.timeout(self._connect_timeout_s + 1):
            ws = await connect(
                url,
                open_timeout=self._connect_timeout_s,
                ping_interval=None,
                compression=None,
                max_size=None,
                close_timeout=2.0,
                proxy=None,
            )
        if self._stopping:
            # stop() ran while connecting: it saw no socket to close, so close this one here
            # instead of streaming until the silence watchdog (ticks keep it from firing).
            await self._close_ws(ws)
            return
        try:
            async with self._lock:
                self._ws = ws
                await self._send_modes(ws, self._tokens, subscribe=True)
                self._live = True
                self._close_reason = None
            self.stats.connected = True
            self.stats.subscribed_at = time.time()  # the canary's lag counts from here
            if self.stats.last_frame_at == 0.0:
                self.stats.last_frame_at = time.time()
            await self._end_outage()
            log.info("%s: streaming %d tokens", self.connection_id, len(self._tokens))
            reason = await self._read(ws)
            if self._close_reason is not None:
                reason, self._close_reason = self._close_reason, None
        finally:
            self._live = False
            self._ws = None
            self.stats.connected = False
            await self._close_ws(ws)
        if not self._stopping:
            self.stats.reconnects += 1
            self._begin_outage(reason)
            log.warning("%s: socket ended (%s); reconnecting", self.connection_id, reason)

    async def _read(self, ws: ClientConnection) -> str:
        """Read until the socket ends; the reason."""
        while True:
            try:
                async with asyncio.timeout(self._silence_timeout_s):
                    message = await ws.recv()
            except TimeoutError:
                return "silent"
            except ConnectionClosed:
                return "closed"
            now = time.time()
            self.stats.last_frame_at = now
            if isinstance(message, bytes):
                if len(message) > 1:
                    self.stats.frames += 1
                    self.stats.bytes += len(message)
                    self.stats.packets += int.from_bytes(message[:2], "big")
                    self.batcher.add(message, now)
                    self._quiet_count = 0
                    if self.capture is not None:
                        self.capture.write(now, message)
                    if (
                        self._canaries
                        and now - self.stats.last_canary_at >= CANARY_SCAN_EVERY_S
                        and frame_has_token(message, self._canaries)
                    ):
                        self.stats.last_canary_at = now
                else:
                    self.stats.heartbeats += 1
                    if self._draining:
                        self._quiet_count += 1
                        if self._quiet_count >= QUIET_HEARTBEATS:
                            self._quiet.set()
            else:
                self._on_text(message, now)

    def _on_text(self, text: str, now: float) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind == "order" and message.get("data"):
            try:
                update = OrderUpdate(
                    account_id=self.account_id, received_at=now, data=message["data"]
                )
            except PydanticValidationError as exc:
                self.stats.errors += 1
                log.error("%s: malformed order update: %s", self.connection_id, exc)
                return
            self.stats.orders += 1
            self._on_order(update)
        elif kind == "error":
            self.stats.errors += 1
            log.error("%s: broker error: %s", self.connection_id, message.get("data"))
        else:
            log.info("%s: broker message: %s", self.connection_id, message.get("data"))

    # ------------------------------------------------------------------ outages

    def _begin_outage(self, reason: str) -> None:
        if self._outage_start is not None and reason == "token_expired":
            self._outage_reason = reason  # the cause that kept the connection down
        if self._outage_start is None:
            last = self.stats.last_frame_at
            self._outage_start = last if last > 0 else time.time()
            self._outage_reason = reason
            self.stats.outages += 1

    async def _end_outage(self) -> None:
        start, self._outage_start = self._outage_start, None
        if start is None:
            return
        outage = Outage(
            account_id=self.account_id,
            connection=self.connection_id,
            tokens=sorted(self._tokens),
            start=start,
            end=max(start, time.time()),
            reason=self._outage_reason or "closed",
        )
        await self._outages.record(outage)

    def replace(self, reason: str) -> None:
        """Close the socket now (without waiting) and reconnect; ``reason`` names the outage."""
        ws = self._ws
        if ws is None or not self._live or self._stopping:
            return
        self._close_reason = reason
        log.warning("%s: replacing the socket (%s)", self.connection_id, reason)
        task = asyncio.get_running_loop().create_task(self._close_ws(ws))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_ws(ws: ClientConnection) -> None:
        with contextlib.suppress(OSError, TimeoutError, ConnectionClosed):
            async with asyncio.timeout(2.0):
                await ws.close()

    # ------------------------------------------------------------------ stopping

    async def drain(self, timeout_s: float) -> bool:
        """Unsubscribe everything and wait until only heartbeats arrive; False on timeout."""
        self._draining = True
        self._quiet_count = 0
        try:
            async with asyncio.timeout(timeout_s):
                async with self._lock:
                    ws = self._ws
                    if ws is None or not self._live:
                        return True
                    try:
                        for chunk in _chunks(self._tokens):
                            await ws.send(json.dumps({"a": "unsubscribe", "v": chunk}))
                    except ConnectionClosed:
                        return True
                await self._quiet.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Make :meth:`run` return: no reconnect; the socket is closed (2 s at most)."""
        self._stopping = True
        self._stopped.set()
        ws = self._ws
        if ws is not None:
            await self._close_ws(ws)
