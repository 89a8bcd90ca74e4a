"""The streamer process: leases, plan, connections, delivery, metrics, graceful stop.

:class:`StreamerService` runs, on one event loop:

* the **lease loop**: renews held leases every ``lease_ttl_s / 3`` (a lost lease, or one whose
  ``safe_until`` passed while Redis did not answer, closes the account's sockets at once) and
  every ``lease_poll_interval_s`` takes the enabled accounts nobody holds;
* the **planner**: re-plans on a lease change, on a ``SUBSCRIPTIONS_CHANNEL`` message (within a
  second) and every ``streamer_reconcile_interval_s`` (0 = off): desired set from the database
  (chains centred on their stored ATM), ``plan_subscriptions`` over the held accounts with the
  canaries and the previous plan (minimal churn); each account's share is stored as
  ``Plan.to_json`` in ``ticker_tasks:streamer:plan:{account_id}`` for operators;
* ``Delivery.run()`` (batches to the ``ticks`` queue) and an aiohttp server with ``/metrics``
  and ``/health`` on ``streamer_metrics_port`` (0 = off); the histogram
  ``ticker_tasks_streamer_subscription_apply_seconds`` observes, per re-plan that sent a change
  on a subscribed socket, the time from the first notification (else the re-plan's start) to
  the last subscribe/mode message sent.

SIGTERM / SIGINT: stop leasing and planning, unsubscribe everything and read until only
heartbeats arrive (bounded), flush the batchers, drain the delivery, release the leases, exit
0, all within ``streamer_shutdown_timeout_s``. Every wait of the stop is bounded, and none
relies on a single ``task.cancel()``: on Python 3.11 a cancellation can be lost inside a Redis
call (see :mod:`workers.streamer.tasks`), so the loops also end by themselves once the stop is
requested, and tasks are cancelled again until they end
(:func:`~workers.streamer.tasks.cancel_and_wait`).

Database calls (desired set, credentials, account list) are short synchronous queries with the
database's connect and statement timeouts, run on the loop (no thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import redis.asyncio as aioredis
from aiohttp import web
from kombu.exceptions import OperationalError
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from schemas.ticks import OrderUpdate
from ticker_tasks import accounts
from ticker_tasks.crypto import CredentialCipher
from ticker_tasks.errors import NotFound, ServiceUnavailable
from ticker_tasks.kite.rest import KiteAccount
from ticker_tasks.leases import Lease, LeaseManager
from ticker_tasks.market.registry import RegistryCache, table_from_instruments
from ticker_tasks.subscriptions import store
from ticker_tasks.subscriptions.plan import AccountCapacity, Plan, plan_subscriptions
from workers.streamer.account import AccountStreamer, ConnectionOptions
from workers.streamer.connection import OutageLog
from workers.streamer.delivery import Delivery
from workers.streamer.stats import PREFIX, DeliveryCollector
from workers.streamer.tasks import cancel_and_wait, finish, run_all

if TYPE_CHECKING:
    import redis
    from celery import Celery

    from ticker_tasks.settings import Settings

log = logging.getLogger(__name__)

PLAN_KEY: Final = "ticker_tasks:streamer:plan:{account_id}"
#: The plan of every enabled account, shared by all streamers (previous plan of the next one).
CLUSTER_PLAN_KEY: Final = "ticker_tasks:streamer:plan"
ORDER_UPDATE: Final = "ticker_tasks.orders.update"
#: Buckets (seconds) of the subscription-change latency histogram.
APPLY_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Bounds (seconds) of the steps of the stop besides the drain.
WORKERS_STOP_S: Final = 2.0
FORCED_CLOSE_S: Final = 6.0
DELIVERY_STOP_S: Final = 2.0
RELEASE_S: Final = 3.0
HTTP_STOP_S: Final = 2.0


class StreamerService:
    """One streamer process (see the module notes)."""

    def __init__(
        self,
        settings: Settings,
        *,
        app: Celery,
        redis_async: aioredis.Redis,
        redis_sync: redis.Redis,
        sessions: sessionmaker[Session],
        owner_id: str,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self._on_stop = on_stop
        self._app = app
        self._redis = redis_async
        self._sessions = sessions
        self._cipher = CredentialCipher.from_settings(settings)
        self._registry = RegistryCache(
            redis_sync, check_interval_s=settings.registry_check_interval_s
        )
        self._redis_sync = redis_sync
        self.leases = LeaseManager.from_settings(redis_async, owner_id, settings)
        self.delivery = Delivery.from_settings(app, settings)
        self.outages = OutageLog(redis_async)
        self.accounts: dict[str, AccountStreamer] = {}
        self.plan: Plan | None = None
        self.orders_sent = 0
        self.orders_failed = 0
        self.invalid_tokens = 0
        self._replan = asyncio.Event()
        #: Monotonic time of the first notification not yet applied by a re-plan.
        self._notified_at: float | None = None
        self.apply_seconds = Histogram(
            f"{PREFIX}subscription_apply_seconds",
            "From a subscription-change notification (or the start of the re-plan) to the last "
            "subscribe/mode message of the change sent on the sockets.",
            buckets=APPLY_BUCKETS,
            registry=None,
        )
        self._stop = asyncio.Event()
        self._options = ConnectionOptions(
            ws_root=settings.kite_ws_root,
            connect_timeout_s=settings.kite_ws_connect_timeout_s,
            silence_timeout_s=settings.streamer_silence_timeout_s,
            reconnect_max_s=settings.streamer_reconnect_max_s,
            batch_max_frames=settings.streamer_batch_max_frames,
            batch_max_delay_s=settings.streamer_batch_max_delay_s,
            token_poll_s=settings.streamer_token_poll_interval_s,
            capture_dir=settings.streamer_capture_dir or None,
            canaries=tuple(settings.subscription_canary_tokens),
            canary_lag_s=settings.streamer_canary_lag_s,
            source=settings.streamer_source,
        )

    # ------------------------------------------------------------------ callbacks

    def _credentials(self, account_id: str) -> KiteAccount:
        with self._sessions() as session:
            return accounts.kite_account(session, self._cipher, account_id)

    def _mark_invalid(self, account_id: str) -> None:
        self.invalid_tokens += 1
        try:
            with self._sessions.begin() as session:
                accounts.record_token_check(session, account_id, valid=False)
        except SQLAlchemyError as exc:
            log.error("account %s: token status not recorded: %r", account_id, exc)

    def _send_order(self, update: OrderUpdate) -> None:
        try:
            self._app.send_task(
                ORDER_UPDATE,
                kwargs=update.model_dump(mode="json"),
                queue="orders",
                retry=False,
                ignore_result=True,  # never touch the result backend from the event loop
            )
            self.orders_sent += 1
        except (OperationalError, OSError) as exc:
            self.orders_failed += 1
            log.error("order update %s %s not sent: %r", update.order_id, update.status, exc)

    # ------------------------------------------------------------------ main

    def request_stop(self) -> None:
        """Begin the graceful stop (SIGTERM / SIGINT); ``on_stop`` is called on the first."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._on_stop is not None:
            self._on_stop()

    async def run(self) -> int:
        """Stream until SIGTERM/SIGINT; the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        runner = await self._start_http()
        delivery = loop.create_task(self.delivery.run(), name="delivery")
        workers = [
            loop.create_task(self._lease_loop(), name="leases"),
            loop.create_task(self._planner(), name="planner"),
            loop.create_task(self._listen(), name="subscriptions"),
            loop.create_task(self._reconcile_timer(), name="reconcile"),
        ]
        log.info("streamer %s started", self.leases.owner_id)
        await self._stop.wait()
        deadline = time.monotonic() + self.settings.streamer_shutdown_timeout_s
        log.info("stopping: draining %d accounts", len(self.accounts))
        # Cancelled again until they end, bounded: one cancellation can be lost (tasks.py).
        await cancel_and_wait(workers, WORKERS_STOP_S)

        def left() -> float:
            return max(0.5, deadline - time.monotonic())

        held = list(self.accounts.values())
        budget = left() * 0.5
        # The whole drain is bounded, whatever state a socket is in (even mid-connect).
        if not await run_all((a.drain(budget) for a in held), budget + 1.0, name="drain"):
            log.error("accounts not drained before the deadline: closing their sockets")
            await run_all((a.close(exit_timeout_s=1.0) for a in held), FORCED_CLOSE_S, name="close")
        if not await self.delivery.drain(left() - 1.0):
            log.error(
                "%d tick batches not sent before the deadline (journaled)", self.delivery.pending
            )
        self.delivery.close()
        await finish(delivery, DELIVERY_STOP_S)
        await run_all((self._release(a.lease) for a in held), RELEASE_S, name="release")
        self.accounts.clear()
        if runner is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HTTP_STOP_S):
                    await runner.cleanup()
        log.info("streamer stopped")
        return 0

    async def _release(self, lease: Lease) -> None:
        with contextlib.suppress(ServiceUnavailable):
            await self.leases.release(lease)

    # ------------------------------------------------------------------ leases

    async def _lease_loop(self) -> None:
        tick = min(self.leases.renew_every_s, self.settings.lease_poll_interval_s, 1.0)
        last_renew = last_poll = float("-inf")
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_renew >= self.leases.renew_every_s:
                last_renew = now
                await self._renew_all()
            await self._drop_expired()
            if now - last_poll >= self.settings.lease_poll_interval_s:
                last_poll = now
                await self._take_unheld()
            for account in list(self.accounts.values()):
                account.tick()
            await asyncio.sleep(tick)

    async def _renew_all(self) -> None:
        for account_id, account in list(self.accounts.items()):
            try:
                if not await self.leases.renew(account.lease):
                    await self._lose(account_id, "lease lost")
            except ServiceUnavailable as exc:
                log.warning("account %s: lease renewal failed: %s", account_id, exc)

    async def _drop_expired(self) -> None:
        now = self.leases.now()
        for account_id, account in list(self.accounts.items()):
            if not account.lease.is_valid(now):
                await self._lose(account_id, "lease past safe_until")

    async def _lose(self, account_id: str, why: str) -> None:
        account = self.accounts.pop(account_id)
        log.error("account %s: %s; closing its sockets", account_id, why)
        await account.close()
        self._replan.set()

    async def _take_unheld(self) -> None:
        try:
            with self._sessions() as session:
                enabled = accounts.enabled_account_ids(session)
        except SQLAlchemyError as exc:
            log.error("account list unavailable: %r", exc)
            return
        for account_id in [a for a in self.accounts if a not in enabled]:
            held = self.accounts[account_id].lease
            await self._lose(account_id, "account disabled")
            with contextlib.suppress(ServiceUnavailable):
                await self.leases.release(held)
        try:
            free = await self.leases.unheld([a for a in enabled if a not in self.accounts])
            for account_id in free:
                if self._stop.is_set():
                    return
                lease = await self.leases.try_acquire(account_id)
                if lease is not None:
                    self._hold(account_id, lease)
        except ServiceUnavailable as exc:
            log.warning("lease poll failed: %s", exc)

    def _hold(self, account_id: str, lease: Lease) -> None:
        log.info("account %s: lease taken (fence %d)", account_id, lease.fence)
        account = AccountStreamer(
            account_id,
            lease,
            options=self._options,
            credentials=lambda: self._credentials(account_id),
            on_batch=self.delivery.submit,
            outages=self.outages,
            on_order=self._send_order,
            on_invalid=self._mark_invalid,
        )
        account.start()
        self.accounts[account_id] = account
        self._replan.set()

    # ------------------------------------------------------------------ plan

    async def _listen(self) -> None:
        while not self._stop.is_set():
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(store.SUBSCRIPTIONS_CHANNEL)
                while not self._stop.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        if self._notified_at is None:
                            self._notified_at = time.monotonic()
                        self._replan.set()
            except (RedisError, OSError) as exc:
                log.warning("subscription notifications lost (%r); resubscribing", exc)
                self._replan.set()  # catch up on what was missed
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(RedisError, OSError):  # TimeoutError is an OSError
                    async with asyncio.timeout(2.0):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _reconcile_timer(self) -> None:
        interval = self.settings.streamer_reconcile_interval_s
        if interval <= 0:
            return
        while not self._stop.is_set():
            await asyncio.sleep(interval)
            self._replan.set()

    async def _planner(self) -> None:
        while not self._stop.is_set():
            await self._replan.wait()
            if self._stop.is_set():
                return
            self._replan.clear()
            started = time.monotonic()
            notified, self._notified_at = self._notified_at, None
            try:
                if await self.replan():
                    self.apply_seconds.observe(time.monotonic() - (notified or started))
            except (SQLAlchemyError, RedisError, ServiceUnavailable, OSError) as exc:
                log.error("re-plan failed, retrying in 1 s: %r", exc)
                await asyncio.sleep(1.0)
                if notified is not None and self._notified_at is None:
                    self._notified_at = notified  # measured from the first notification
                self._replan.set()

    def _desired(self) -> dict[int, str]:
        try:
            table = self._registry.current()
        except NotFound:
            table = table_from_instruments([])
        atm = store.load_atm(self._redis_sync)
        with self._sessions() as session:
            return store.desired_tokens(
                session,
                table,
                {},
                atm=atm,
                hysteresis_strikes=self.settings.subscription_atm_hysteresis_strikes,
            )

    async def replan(self) -> bool:
        """Plan the cluster's enabled accounts and apply the share of the held ones.

        Returns True when a change was sent on a subscribed socket.

        Every streamer plans over *all* enabled accounts, starting from the cluster plan kept
        in Redis, so the share of each account is the same whichever streamer holds it: no
        token is streamed by two accounts and none is left out because its account is held
        elsewhere. The planner is deterministic, so streamers planning at the same moment write
        the same plan; a race between different previous plans converges at the next re-plan.
        """
        held = sorted(self.accounts)
        if not held:
            return False
        with self._sessions() as session:
            enabled = sorted(accounts.enabled_account_ids(session))
        desired = self._desired()
        capacities = [
            AccountCapacity(
                a,
                self.settings.kite_connections_per_account,
                self.settings.kite_tokens_per_connection,
            )
            for a in sorted(set(enabled) | set(held))
        ]
        async with asyncio.timeout(self.settings.redis_socket_timeout_s):
            stored = await self._redis.get(CLUSTER_PLAN_KEY)
        previous = Plan.from_json(json.loads(stored)) if stored else self.plan
        plan = plan_subscriptions(
            desired,
            capacities,
            canaries=self.settings.subscription_canary_tokens,
            previous=previous,
        )
        if plan.unplaced:
            log.error("%d desired tokens fit on no connection of any account", len(plan.unplaced))
        self.plan = plan
        async with asyncio.timeout(self.settings.redis_socket_timeout_s):
            await self._redis.set(CLUSTER_PLAN_KEY, json.dumps(plan.to_json()))
        sent = False
        for account_id in held:
            account = self.accounts.get(account_id)
            if account is None:
                continue
            sent = await account.apply(plan.for_account(account_id)) or sent
            own = Plan(
                connections={k: v for k, v in plan.connections.items() if k[0] == account_id},
                unplaced=plan.unplaced,
                canaries=plan.canaries,
            )
            async with asyncio.timeout(self.settings.redis_socket_timeout_s):
                await self._redis.set(
                    PLAN_KEY.format(account_id=account_id), json.dumps(own.to_json())
                )
        return sent

    # ------------------------------------------------------------------ metrics

    async def _start_http(self) -> web.AppRunner | None:
        port = self.settings.streamer_metrics_port
        if port == 0:
            return None
        registry = CollectorRegistry()
        registry.register(DeliveryCollector(lambda: self.delivery.stats))
        registry.register(StreamerCollector(self))
        registry.register(self.apply_seconds)

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(registry), content_type="text/plain")

        async def health(_: web.Request) -> web.Response:
            return web.json_response(self.health())

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/health", health)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", port).start()  # noqa: S104 (scraped from outside)
        return runner

    def health(self) -> dict[str, Any]:
        """Accounts, connections and delivery state as JSON."""
        now = time.time()
        return {
            "owner": self.leases.owner_id,
            "broker_up": self.delivery.stats.broker_up,
            "accounts": {
                account_id: {
                    "token_rejected": account.auth.blocked,
                    "connections": {
                        c.connection_id: {
                            "connected": c.stats.connected,
                            "tokens": len(c.tokens),
                            "last_frame_age_s": now - c.stats.last_frame_at,
                        }
                        for c in account.connections.values()
                    },
                }
                for account_id, account in self.accounts.items()
            },
        }


class StreamerCollector(Collector):
    """Per account and connection metrics of a :class:`StreamerService` at every scrape."""

    COUNTERS: Final = {
        "frames": "Binary data frames received.",
        "packets": "Packets in the received frames (from the frame headers).",
        "bytes": "Bytes of the received data frames.",
        "heartbeats": "1-byte heartbeats received.",
        "reconnects": "Sockets that ended and were replaced.",
        "errors": "Error texts from the broker and unexpected failures.",
        "orders": "Order updates received.",
        "outages": "Outages (socket down, silent, token rejected).",
    }

    def __init__(self, service: StreamerService) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        """One family per connection counter, plus state, frame age and account gauges."""
        labels = ["account_id", "connection"]
        families = {
            name: CounterMetricFamily(f"{PREFIX}connection_{name}", text, labels=labels)
            for name, text in self.COUNTERS.items()
        }
        up = GaugeMetricFamily(f"{PREFIX}connection_up", "1 while subscribed.", labels=labels)
        age = GaugeMetricFamily(
            f"{PREFIX}connection_last_frame_age_seconds", "Seconds since any frame.", labels=labels
        )
        rejected = GaugeMetricFamily(
            f"{PREFIX}account_token_rejected",
            "1 while the token is refused.",
            labels=["account_id"],
        )
        now = time.time()
        for account_id, account in self._service.accounts.items():
            rejected.add_metric([account_id], float(account.auth.blocked))
            for connection in account.connections.values():
                values = [account_id, connection.connection_id]
                stats = connection.stats
                for name, family in families.items():
                    family.add_metric(values, float(getattr(stats, name)))
                up.add_metric(values, float(stats.connected))
                age.add_metric(values, now - stats.last_frame_at if stats.last_frame_at else 0.0)
        yield from families.values()
        yield from (up, age, rejected)
        service = self._service
        yield GaugeMetricFamily(
            f"{PREFIX}accounts_held", "Leased accounts.", value=len(service.accounts)
        )
        yield CounterMetricFamily(
            f"{PREFIX}orders_sent", "Order updates enqueued.", value=service.orders_sent
        )
        yield CounterMetricFamily(
            f"{PREFIX}orders_failed",
            "Order updates the broker refused.",
            value=service.orders_failed,
        )
        yield CounterMetricFamily(
            f"{PREFIX}outages_recorded", "Outages written to Redis.", value=service.outages.recorded
        )
        yield CounterMetricFamily(
            f"{PREFIX}tokens_rejected",
            "Access tokens refused with 403.",
            value=service.invalid_tokens,
        )
