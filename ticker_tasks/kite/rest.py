"""The Kite REST client our tasks use: breaker, global rate limit and error mapping per call.

:class:`KiteRestClient` wraps one ``kiteconnect.KiteConnect`` per account and process. Every
network method:

1. asks the account's :class:`~ticker_tasks.breaker.CircuitBreaker` (``CircuitOpen`` while open);
2. takes a slot of its route class from the global :class:`~ticker_tasks.ratelimit.RateLimiter`
   (key ``{api_key}:{bucket}``; waits at most ``rate_limit_max_wait_s``, else ``RateLimited``);
3. calls Kite with ``kite_rest_timeout_s``;
4. maps failures with :func:`~ticker_tasks.kite.errors.classify` (``raise ... from exc``) and
   reports the outcome to the breaker: only outages (5xx, network failures, ambiguous
   outcomes) count as failures; any other answer from the broker closes the circuit.

Route classes (limits per api_key from Settings, each times ``kite_rate_headroom``):

==============  ===================================================  =========================
bucket          methods                                              rules
==============  ===================================================  =========================
``general``     profile, margins, instruments_csv, orders,           ``kite_rate_general_per_s``
                order_history, order_trades, trades, positions,
                generate_session
``quote``       quote, ltp, ohlc                                     ``kite_rate_quote_per_s``
``historical``  historical_data                                      ``kite_rate_historical_per_s``
``orders``      place_order                                          ``kite_rate_orders_per_s``,
                                                                     ``_per_min``, ``_per_day``
``orders``      modify_order, cancel_order (paced with placements,   ``kite_rate_orders_per_s``
                not counted in the minute/day order caps)
==============  ===================================================  =========================

:class:`KiteClients` is the per-process factory held by the :class:`~ticker_tasks.runtime.Runtime`:
one client per account, rebuilt when the account's credentials change. Clients are meant for
one thread (Celery prefork children, the CLI), like the ``requests`` session inside them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import redis
import requests

from ticker_tasks.breaker import CircuitBreaker
from ticker_tasks.errors import (
    AmbiguousError,
    BrokerUnavailable,
    ServiceUnavailable,
    TickerTasksError,
    ValidationError,
)
from ticker_tasks.kite.errors import classify, is_outage
from ticker_tasks.ratelimit import RateLimiter, Rule, rate_key
from ticker_tasks.settings import Settings

GENERAL = "general"
QUOTE = "quote"
HISTORICAL = "historical"
ORDERS = "orders"

MAX_QUOTE_KEYS = 500
MAX_LTP_OHLC_KEYS = 1000
KITE_TZ = ZoneInfo("Asia/Kolkata")

JsonDict = dict[str, Any]
logger = logging.getLogger(__name__)
_T = TypeVar("_T")


def bucket_rules(settings: Settings) -> dict[str, tuple[Rule, ...]]:
    """The rules of every route class: Kite's per-api_key limits times the headroom."""
    headroom = settings.kite_rate_headroom
    return {
        GENERAL: (Rule.per_second(settings.kite_rate_general_per_s).scaled(headroom),),
        QUOTE: (Rule.per_second(settings.kite_rate_quote_per_s).scaled(headroom),),
        HISTORICAL: (Rule.per_second(settings.kite_rate_historical_per_s).scaled(headroom),),
        ORDERS: (
            Rule.per_second(settings.kite_rate_orders_per_s).scaled(headroom),
            Rule.window(settings.kite_rate_orders_per_min, 60.0).scaled(headroom),
            Rule.window(settings.kite_rate_orders_per_day, 86_400.0).scaled(headroom),
        ),
    }


@dataclass(frozen=True)
class KiteAccount:
    """Credentials of one broker account (the access token never appears in a repr)."""

    account_id: str
    api_key: str
    access_token: str | None = field(default=None, repr=False)


class KiteRestClient:
    """Kite REST calls for one account, guarded by the breaker and the global rate limiter.

    Args:
        account: The account whose credentials sign every call.
        settings: REST root and timeout, rate limits, ``rate_limit_max_wait_s``.
        limiter: The process's rate limiter.
        breaker: The process's circuit breaker.
    """

    def __init__(
        self,
        account: KiteAccount,
        *,
        settings: Settings,
        limiter: RateLimiter,
        breaker: CircuitBreaker,
    ) -> None:
        self.account = account
        self._limiter = limiter
        self._breaker = breaker
        self._rules = bucket_rules(settings)
        self._max_wait = settings.rate_limit_max_wait_s
        # Imported here: the kiteconnect package imports Twisted (KiteTicker) and installs a
        # reactor, which processes that never call Kite REST (the streamer) should not pay for.
        from kiteconnect import KiteConnect
        from kiteconnect.exceptions import KiteException

        self._kite_error: type[Exception] = KiteException
        self._kite = KiteConnect(
            account.api_key,
            access_token=account.access_token,
            root=settings.kite_rest_root,
            timeout=settings.kite_rest_timeout_s,
        )

    # --- session ---------------------------------------------------------------------------

    def login_url(self) -> str:
        """The Kite login page for this api_key (no network call)."""
        return str(self._kite.login_url())

    def generate_session(self, request_token: str, api_secret: str) -> JsonDict:
        """Exchange a login ``request_token`` for a session (``access_token`` inside).

        The token exchange is single-use, so a timeout is ambiguous, never retried blindly.
        The new ``access_token`` is not written back to :attr:`account`: store it, then ask
        :meth:`KiteClients.get` with the updated account for a client that uses it.
        """
        return self._call(
            GENERAL,
            "POST /session/token",
            lambda: self._kite.generate_session(request_token, api_secret),
            idempotent=False,
            expect=dict,
        )

    # --- user and portfolio ----------------------------------------------------------------

    def profile(self) -> JsonDict:
        """The user's profile."""
        return self._get(GENERAL, "/user/profile", self._kite.profile, dict)

    def margins(self, segment: str | None = None) -> JsonDict:
        """Margins of every segment, or of ``segment`` (``equity`` / ``commodity``)."""
        return self._get(GENERAL, "/user/margins", lambda: self._kite.margins(segment), dict)

    def positions(self) -> JsonDict:
        """Positions: ``{"net": [...], "day": [...]}``."""
        return self._get(GENERAL, "/portfolio/positions", self._kite.positions, dict)

    # --- instruments and market data --------------------------------------------------------

    def instruments_csv(self, exchange: str | None = None) -> bytes:
        """The raw instrument dump (CSV bytes) of every exchange, or of ``exchange``."""

        def fetch() -> Any:
            if exchange:
                return self._kite._get("market.instruments", url_args={"exchange": exchange})
            return self._kite._get("market.instruments.all")

        return self._get(GENERAL, "/instruments", fetch, bytes)

    def historical_data(
        self,
        instrument_token: int,
        from_dt: datetime | date | str,
        to_dt: datetime | date | str,
        interval: str,
        *,
        continuous: bool = False,
        oi: bool = False,
    ) -> list[JsonDict]:
        """Candles ``{date, open, high, low, close, volume[, oi]}`` of one instrument.

        Aware datetimes are converted to IST, the exchange time Kite expects.
        """
        return self._get(
            HISTORICAL,
            "/instruments/historical",
            lambda: self._kite.historical_data(
                instrument_token,
                _kite_time(from_dt),
                _kite_time(to_dt),
                interval,
                continuous=continuous,
                oi=oi,
            ),
            list,
        )

    def quote(self, keys: Sequence[str]) -> JsonDict:
        """Full quotes keyed by ``EXCHANGE:TRADINGSYMBOL`` (at most 500 keys)."""
        return self._market("/quote", self._kite.quote, keys, MAX_QUOTE_KEYS)

    def ltp(self, keys: Sequence[str]) -> JsonDict:
        """Last prices keyed by ``EXCHANGE:TRADINGSYMBOL`` (at most 1000 keys)."""
        return self._market("/quote/ltp", self._kite.ltp, keys, MAX_LTP_OHLC_KEYS)

    def ohlc(self, keys: Sequence[str]) -> JsonDict:
        """OHLC and last price keyed by ``EXCHANGE:TRADINGSYMBOL`` (at most 1000 keys)."""
        return self._market("/quote/ohlc", self._kite.ohlc, keys, MAX_LTP_OHLC_KEYS)

    # --- orders ------------------------------------------------------------------------------

    def orders(self) -> list[JsonDict]:
        """Today's orders (latest state of each)."""
        return self._get(GENERAL, "/orders", self._kite.orders, list)

    def order_history(self, order_id: str) -> list[JsonDict]:
        """Every state of one order, oldest first."""
        return self._get(GENERAL, "/orders/{id}", lambda: self._kite.order_history(order_id), list)

    def order_trades(self, order_id: str) -> list[JsonDict]:
        """Trades (fills) of one order."""
        return self._get(
            GENERAL, "/orders/{id}/trades", lambda: self._kite.order_trades(order_id), list
        )

    def trades(self) -> list[JsonDict]:
        """Today's trades."""
        return self._get(GENERAL, "/trades", self._kite.trades, list)

    def place_order(
        self,
        *,
        variety: str,
        exchange: str,
        tradingsymbol: str,
        transaction_type: str,
        quantity: int,
        product: str,
        order_type: str,
        price: float | None = None,
        validity: str | None = None,
        validity_ttl: int | None = None,
        disclosed_quantity: int | None = None,
        trigger_price: float | None = None,
        iceberg_legs: int | None = None,
        iceberg_quantity: int | None = None,
        auction_number: str | None = None,
        algo_id: str | None = None,
        tag: str | None = None,
        market_protection: float | None = None,
    ) -> str:
        """Place an order; returns Kite's ``order_id``.

        Raises:
            AmbiguousError: The request may have reached Kite (timeout, 5xx, dropped
                connection): look the order up by ``tag`` before placing it again.
        """
        params = {
            "variety": variety,
            "exchange": exchange,
            "tradingsymbol": tradingsymbol,
            "transaction_type": transaction_type,
            "quantity": quantity,
            "product": product,
            "order_type": order_type,
            "price": price,
            "validity": validity,
            "validity_ttl": validity_ttl,
            "disclosed_quantity": disclosed_quantity,
            "trigger_price": trigger_price,
            "iceberg_legs": iceberg_legs,
            "iceberg_quantity": iceberg_quantity,
            "auction_number": auction_number,
            "algo_id": algo_id,
            "tag": tag,
            "market_protection": market_protection,
        }
        return self._order_call(
            f"POST /orders/{variety}",
            lambda: self._kite.place_order(**params),
            self._rules[ORDERS],
        )

    def modify_order(
        self,
        variety: str,
        order_id: str,
        *,
        parent_order_id: str | None = None,
        quantity: int | None = None,
        price: float | None = None,
        order_type: str | None = None,
        trigger_price: float | None = None,
        validity: str | None = None,
        disclosed_quantity: int | None = None,
        market_protection: float | None = None,
    ) -> str:
        """Modify an open order; returns its ``order_id``."""
        return self._order_call(
            f"PUT /orders/{variety}/{order_id}",
            lambda: self._kite.modify_order(
                variety,
                order_id,
                parent_order_id=parent_order_id,
                quantity=quantity,
                price=price,
                order_type=order_type,
                trigger_price=trigger_price,
                validity=validity,
                disclosed_quantity=disclosed_quantity,
                market_protection=market_protection,
            ),
            self._rules[ORDERS][:1],
        )

    def cancel_order(
        self, variety: str, order_id: str, *, parent_order_id: str | None = None
    ) -> str:
        """Cancel an open order; returns its ``order_id``."""
        return self._order_call(
            f"DELETE /orders/{variety}/{order_id}",
            lambda: self._kite.cancel_order(variety, order_id, parent_order_id=parent_order_id),
            self._rules[ORDERS][:1],
        )

    def close(self) -> None:
        """Close the HTTP connection pool of this client."""
        self._kite.reqsession.close()

    # --- plumbing ----------------------------------------------------------------------------

    def _market(
        self, path: str, method: Callable[..., Any], keys: Sequence[str], most: int
    ) -> JsonDict:
        if isinstance(keys, str):
            raise ValidationError(f"{path}: pass a sequence of instrument keys, not one string")
        if len(keys) > most:
            raise ValidationError(f"{path}: {len(keys)} instruments, Kite allows {most} per call")
        if not keys:
            return {}
        return self._get(QUOTE, path, lambda: method(list(keys)), dict)

    def _get(self, bucket: str, path: str, fetch: Callable[[], Any], expect: type[_T]) -> _T:
        return self._call(bucket, f"GET {path}", fetch, idempotent=True, expect=expect)

    def _order_call(self, operation: str, send: Callable[[], Any], rules: Sequence[Rule]) -> str:
        return self._call(ORDERS, operation, send, idempotent=False, expect=str, rules=rules)

    def _call(
        self,
        bucket: str,
        operation: str,
        send: Callable[[], Any],
        *,
        idempotent: bool,
        expect: type[_T],
        rules: Sequence[Rule] | None = None,
    ) -> _T:
        account_id = self.account.account_id
        probe = self._breaker.check(account_id)
        try:
            self._limiter.acquire(
                rate_key(self.account.api_key, bucket),
                rules if rules is not None else self._rules[bucket],
                max_wait=self._max_wait,
            )
        except TickerTasksError:
            if probe:
                self._breaker.cancel_probe(account_id)
            raise
        try:
            result = send()
        except (self._kite_error, requests.RequestException) as exc:
            error = classify(exc, request_sent=True, idempotent=idempotent, operation=operation)
            self._report(operation, outage=is_outage(error))
            raise error from exc
        self._report(operation, outage=False)
        if not isinstance(result, expect):
            message = f"{operation}: expected {expect.__name__}, got {type(result).__name__}"
            if idempotent:
                raise BrokerUnavailable(message)
            raise AmbiguousError(message)
        return result

    def _report(self, operation: str, *, outage: bool) -> None:
        """Tell the breaker how the call went; best effort once the broker was called.

        A Redis failure here must not replace the call's own outcome: turning a placed order
        into a retryable ``ServiceUnavailable`` would invite a duplicate order.
        """
        account_id = self.account.account_id
        try:
            if outage:
                self._breaker.record_failure(account_id)
            else:
                self._breaker.record_success(account_id)
        except ServiceUnavailable as exc:
            logger.warning("%s: circuit breaker not updated for %s: %s", operation, account_id, exc)


class KiteClients:
    """One :class:`KiteRestClient` per account for this process, sharing limiter and breaker.

    Args:
        settings: The process settings.
        redis_client: The Redis behind the global rate limiter and the circuit breaker.
    """

    def __init__(self, settings: Settings, redis_client: redis.Redis) -> None:
        self._settings = settings
        self.limiter = RateLimiter(redis_client)
        self.breaker = CircuitBreaker(redis_client, settings)
        self._clients: dict[str, KiteRestClient] = {}

    def get(self, account: KiteAccount) -> KiteRestClient:
        """The client of ``account``; rebuilt when its api_key or access token changed."""
        client = self._clients.get(account.account_id)
        if client is not None and client.account == account:
            return client
        if client is not None:
            client.close()
        client = KiteRestClient(
            account, settings=self._settings, limiter=self.limiter, breaker=self.breaker
        )
        self._clients[account.account_id] = client
        return client

    def accounts(self) -> Mapping[str, KiteAccount]:
        """The accounts that have a cached client, by account_id."""
        return {account_id: c.account for account_id, c in self._clients.items()}

    def close(self) -> None:
        """Close every cached client."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()


def _kite_time(value: datetime | date | str) -> str:
    """Kite's ``YYYY-MM-DD HH:MM:SS`` in IST (aware datetimes converted, dates at midnight)."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(KITE_TZ)
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.strftime("%Y-%m-%d 00:00:00")
    return value
