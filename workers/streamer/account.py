"""The ticker connections of one leased account.

An :class:`AccountStreamer` exists while this process holds the account's lease. It keeps up to
``kite_connections_per_account`` :class:`~workers.streamer.connection.TickerConnection` s, one
per connection index of the account's share of the plan: :meth:`AccountStreamer.apply` opens
the connections a new plan adds, sends each kept connection its
:class:`~ticker_tasks.subscriptions.plan.ConnectionDiff`, and closes the connections the plan
dropped. It also polls the stored access token every ``token_poll_s`` while the token is
rejected, so the account resumes by itself once a new token is stored.
:meth:`AccountStreamer.tick` (about every second, from the service's lease loop) flushes the
connections' raw-frame captures and replaces a connection whose canary lags its freshest
sibling's by over ``streamer_canary_lag_s``.

:meth:`AccountStreamer.close` drops every socket at once (lease lost, or its ``safe_until``
passed); :meth:`AccountStreamer.drain` is the graceful stop (unsubscribe, wait for quiet,
flush the batchers, close).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from schemas.ticks import Source
from ticker_tasks.errors import AuthError
from ticker_tasks.leases import Lease
from ticker_tasks.subscriptions.plan import ConnectionDiff
from workers.streamer.batcher import Batcher, FlushCallback
from workers.streamer.capture import CaptureWriter
from workers.streamer.connection import (
    AccountAuth,
    Credentials,
    OrderSink,
    OutageLog,
    TickerConnection,
    lagging_canaries,
)
from workers.streamer.tasks import cancel_and_wait, finish

log = logging.getLogger(__name__)

#: How long a stopped connection's task may take to end before it is cancelled.
CONNECTION_EXIT_S = 5.0


def token_diff(old: Mapping[int, str], new: Mapping[int, str]) -> ConnectionDiff:
    """The messages that turn ``old`` subscriptions into ``new`` ones."""
    return ConnectionDiff(
        subscribe={t: m for t, m in new.items() if t not in old},
        unsubscribe=frozenset(t for t in old if t not in new),
        mode_changes={t: m for t, m in new.items() if t in old and old[t] != m},
    )


@dataclass(frozen=True)
class ConnectionOptions:
    """What every connection of the process shares (from Settings)."""

    ws_root: str
    connect_timeout_s: float
    silence_timeout_s: float
    reconnect_max_s: float
    batch_max_frames: int
    batch_max_delay_s: float
    token_poll_s: float
    #: Raw-frame capture directory (None: no capture).
    capture_dir: str | None = None
    #: Canary tokens every connection carries (tracked for the canary-lag watchdog).
    canaries: tuple[int, ...] = field(default_factory=tuple)
    #: Replace a connection whose canary lags its freshest sibling's this long (0 = off).
    canary_lag_s: float = 0.0
    #: Source stamped on the batches (``stream``, or ``mock`` for simulated feeds).
    source: Source = "stream"


class AccountStreamer:
    """The connections of one account while its lease is held.

    Args:
        account_id: The account.
        lease: Its lease (renewed by the service).
        options: Connection settings.
        credentials: Reads the account's current credentials (database).
        on_batch: Receives tick batches (``Delivery.submit``).
        outages: Outage recorder.
        on_order: Receives order updates.
        on_invalid: Records a rejected token (``accounts.record_token_check``).
    """

    def __init__(
        self,
        account_id: str,
        lease: Lease,
        *,
        options: ConnectionOptions,
        credentials: Credentials,
        on_batch: FlushCallback,
        outages: OutageLog,
        on_order: OrderSink,
        on_invalid: Callable[[str], None],
    ) -> None:
        self.account_id = account_id
        self.lease = lease
        self.auth = AccountAuth(account_id, on_invalid)
        self.connections: dict[int, TickerConnection] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._options = options
        self._credentials = credentials
        self._on_batch = on_batch
        self._outages = outages
        self._on_order = on_order
        self._poller: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        """Start the token poller (connections start with :meth:`apply`)."""
        self._poller = asyncio.get_running_loop().create_task(
            self._poll_token(), name=f"token-poll-{self.account_id}"
        )

    async def _poll_token(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._options.token_poll_s)
            if not self.auth.blocked:
                continue
            try:
                account = self._credentials()
            except AuthError as exc:
                log.info("account %s: still no usable token: %s", self.account_id, exc)
                continue
            except Exception:  # boundary of the poller: a database hiccup must not kill it
                log.exception("account %s: token poll failed", self.account_id)
                continue
            self.auth.token_stored(account.access_token or "")

    # ------------------------------------------------------------------ plan

    async def apply(self, plan: Mapping[int, Mapping[int, str]]) -> bool:
        """Make the connections carry ``plan`` (``{index: {token: mode}}``).

        Returns:
            True when a change was sent on a subscribed socket.
        """
        if self._closed:
            return False
        for index in sorted(set(self.connections) - set(plan)):
            await self._close_connection(index)
        sent = False
        for index in sorted(plan):
            connection = self.connections.get(index)
            if connection is None:
                connection = self._open_connection(index)
            sent = await connection.apply(token_diff(connection.tokens, plan[index])) or sent
        return sent

    # ------------------------------------------------------------------ periodic

    def tick(self, now: float | None = None) -> list[str]:
        """Periodic duties (about every second): flush the captures, replace lagging canaries.

        Returns:
            The ids of the connections replaced for a lagging canary.
        """
        for connection in self.connections.values():
            if connection.capture is not None:
                connection.capture.flush()
        if self._closed or self._options.canary_lag_s <= 0:
            return []
        live = [c for c in self.connections.values() if c.live]
        now = time.time() if now is None else now
        lagging = lagging_canaries(
            {c.connection_id: c.stats.last_canary_at for c in live},
            now,
            self._options.canary_lag_s,
            {c.connection_id: c.stats.subscribed_at for c in live},
        )
        by_id = {c.connection_id: c for c in self.connections.values()}
        for connection_id in lagging:
            by_id[connection_id].replace("canary_lag")
        return lagging

    def _open_connection(self, index: int) -> TickerConnection:
        options = self._options
        connection_id = f"{self.account_id}:{index}"
        connection = TickerConnection(
            account_id=self.account_id,
            index=index,
            ws_root=options.ws_root,
            credentials=self._credentials,
            auth=self.auth,
            batcher=Batcher(
                options.batch_max_frames,
                options.batch_max_delay_s,
                self._on_batch,
                account_id=self.account_id,
                connection=connection_id,
                source=options.source,
            ),
            outages=self._outages,
            on_order=self._on_order,
            connect_timeout_s=options.connect_timeout_s,
            silence_timeout_s=options.silence_timeout_s,
            reconnect_max_s=options.reconnect_max_s,
            capture=(
                CaptureWriter(options.capture_dir, self.account_id, connection_id)
                if options.capture_dir
                else None
            ),
            canaries=options.canaries,
        )
        self.connections[index] = connection
        self._tasks[index] = asyncio.get_running_loop().create_task(
            connection.run(), name=f"ticker-{connection_id}"
        )
        return connection

    async def _close_connection(
        self, index: int, exit_timeout_s: float = CONNECTION_EXIT_S
    ) -> None:
        """Stop a connection, wait for its task (bounded), flush its batcher, forget it.

        It is forgotten last: a close interrupted half-way is done again by the next one.
        """
        connection, task = self.connections.get(index), self._tasks.get(index)
        if connection is None or task is None:
            return  # closed meanwhile
        await connection.stop()
        await finish(task, exit_timeout_s)
        connection.batcher.close()
        if connection.capture is not None:
            connection.capture.close()
        if self.connections.get(index) is connection:
            del self.connections[index]
            del self._tasks[index]

    # ------------------------------------------------------------------ stopping

    async def drain(self, timeout_s: float) -> None:
        """Graceful stop: unsubscribe all, wait for quiet sockets (bounded), flush, close."""
        self._closed = True
        results = await asyncio.gather(
            *(c.drain(timeout_s) for c in self.connections.values()), return_exceptions=True
        )
        for connection, result in zip(list(self.connections.values()), results, strict=True):
            if result is not True:
                log.warning(
                    "%s: not quiet before the deadline (%r)", connection.connection_id, result
                )
        await self.close()

    async def close(self, exit_timeout_s: float = CONNECTION_EXIT_S) -> None:
        """Close every socket now and flush the batchers (bounded: about
        ``exit_timeout_s`` + 4 s at most, the connections are closed concurrently)."""
        self._closed = True
        if self._poller is not None:
            await cancel_and_wait([self._poller])
        await asyncio.gather(
            *(self._close_connection(i, exit_timeout_s) for i in sorted(self.connections))
        )
