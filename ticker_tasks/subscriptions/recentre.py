"""Re-centre option-chain subscriptions on the market and roll expired ones (periodic job).

One run (:func:`recentre_subscriptions`, called by the task
``ticker_tasks.subscriptions.recentre`` every minute of the session):

1. **Prices with one request.** The underlyings of the active chain subscriptions are priced
   with a single Kite ``ltp`` call for all of them (the quote endpoints allow 1 request per
   second per api_key; the client's shared rate limiter enforces it). The price keys come from
   :func:`price_keys`, below.
2. **Roll.** Chains whose expiry is past move to the underlying's next listed expiry
   (:func:`~ticker_tasks.subscriptions.store.roll_expired`).
3. **Re-centre.** The desired tokens are expanded around the ATM with hysteresis
   (:func:`~ticker_tasks.subscriptions.store.desired_tokens`, i.e.
   :func:`~ticker_tasks.subscriptions.plan.expand_chain` /
   :func:`~ticker_tasks.subscriptions.plan.recenter`); the new ATM strikes are stored with
   :func:`~ticker_tasks.subscriptions.store.save_atm`.
4. **Notify only on change.** The desired set as the streamers compute it from the stored
   state (before this run) is compared with the new one; only when they differ is
   :func:`~ticker_tasks.subscriptions.store.notify_changed` called, so a quiet market costs the
   streamers nothing.

**Underlying -> price instrument.** Kite names an option's underlying by its F&O ``name``
(``NIFTY``), which is not a tradingsymbol. The price is read from, in this order:

* the index of :data:`INDEX_KEYS` (``NIFTY`` -> ``NSE:NIFTY 50``, ``BANKNIFTY`` ->
  ``NSE:NIFTY BANK``, ``FINNIFTY`` -> ``NSE:NIFTY FIN SERVICE``, ...), when the registry
  lists it;
* else the NSE cash instrument of the same symbol (stock options: ``INFY`` -> ``NSE:INFY``),
  when the registry lists it;
* else, and also whenever the answer lacks the spot key, the underlying's nearest future (the
  earliest active future expiring today or later). A future trades at a premium (carry) to
  spot, which the strike hysteresis absorbs; it is a fallback, not the preferred source.

Both the spot and the future key of every underlying travel in the one ``ltp`` request.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ticker_tasks import accounts
from ticker_tasks.crypto import CredentialCipher
from ticker_tasks.errors import AuthError
from ticker_tasks.market.calendar import IST
from ticker_tasks.market.registry import InstrumentTable, RegistryCache
from ticker_tasks.runtime import Runtime
from ticker_tasks.subscriptions import store

log = logging.getLogger(__name__)

#: F&O underlying name -> ``EXCHANGE:TRADINGSYMBOL`` of its index (Kite's symbols).
INDEX_KEYS: Mapping[str, str] = {
    "NIFTY": "NSE:NIFTY 50",
    "BANKNIFTY": "NSE:NIFTY BANK",
    "FINNIFTY": "NSE:NIFTY FIN SERVICE",
    "MIDCPNIFTY": "NSE:NIFTY MID SELECT",
    "NIFTYNXT50": "NSE:NIFTY NEXT 50",
    "SENSEX": "BSE:SENSEX",
    "BANKEX": "BSE:BANKEX",
}

PriceFetcher = Callable[[Sequence[str]], Mapping[str, float]]
"""Last prices of ``EXCHANGE:TRADINGSYMBOL`` keys (unknown keys absent); one Kite call."""


@dataclass(frozen=True)
class PriceSource:
    """Where an underlying's price comes from.

    Attributes:
        underlying: The F&O ``name`` (``NIFTY``).
        spot_key: Its index or cash instrument, None when the registry lists none.
        future_key: Its nearest active future, None when none is listed.
    """

    underlying: str
    spot_key: str | None
    future_key: str | None

    @property
    def keys(self) -> list[str]:
        """The keys to request, spot first."""
        return [k for k in (self.spot_key, self.future_key) if k is not None]

    def price(self, quotes: Mapping[str, float]) -> float | None:
        """The spot price when quoted, else the future's, else None."""
        for key in self.keys:
            value = quotes.get(key)
            if value is not None and value > 0:
                return float(value)
        return None


def price_source(table: InstrumentTable, underlying: str, today: dt.date) -> PriceSource:
    """The price keys of ``underlying`` (see the module notes for the order)."""
    spot: str | None = None
    for candidate in (INDEX_KEYS.get(underlying), f"NSE:{underlying}"):
        if candidate is None:
            continue
        info = table.by_symbol(candidate)
        if info is not None and info.active:
            spot = info.key
            break
    future: str | None = None
    token = table.chain(underlying, today).future_token
    if token is not None:
        holder = table.by_token(token)
        future = holder.key if holder is not None else None
    return PriceSource(underlying, spot, future)


def price_keys(
    table: InstrumentTable, names: Sequence[str], today: dt.date
) -> dict[str, PriceSource]:
    """:func:`price_source` of every underlying in ``names``."""
    return {name: price_source(table, name, today) for name in names}


def kite_ltp_fetcher(runtime: Runtime, account_id: str | None = None) -> PriceFetcher:
    """A :data:`PriceFetcher` calling Kite's ``ltp`` with ``account_id`` (default: the first
    usable account), through the process's rate-limited client.

    Raises:
        AuthError: When called and no enabled account has an access token.
    """

    def fetch(keys: Sequence[str]) -> Mapping[str, float]:
        cipher = CredentialCipher.from_settings(runtime.settings)
        with runtime.sessions() as session:
            chosen = account_id or accounts.default_account_id(session)
            account = accounts.kite_account(session, cipher, chosen)
        answer = runtime.kite_clients.get(account).ltp(list(keys))
        prices: dict[str, float] = {}
        for key, value in answer.items():
            if isinstance(value, Mapping) and value.get("last_price") is not None:
                prices[str(key)] = float(value["last_price"])
        return prices

    return fetch


@dataclass(frozen=True)
class RecentreOutcome:
    """What one run did.

    Attributes:
        prices: Price used per underlying (missing: no price, the chain kept its ATM).
        rolled: Ids of chain subscriptions rolled to the next expiry (merged ones included).
        recentred: Ids of chain subscriptions whose ATM strike moved (or was first set).
        atm: ATM strike per chain subscription id after the run.
        tokens: Size of the desired token set after the run.
        changed: Whether the desired token set changed (and the streamers were notified).
        version: The subscriptions version published, None when nothing changed.
        quote_requests: Kite ``ltp`` requests made (0 or 1).
    """

    prices: dict[str, float]
    rolled: list[int]
    recentred: list[int]
    atm: dict[int, float]
    tokens: int
    changed: bool
    version: int | None
    quote_requests: int
    missing_prices: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON for task results."""
        return {
            "prices": dict(self.prices),
            "rolled": list(self.rolled),
            "recentred": list(self.recentred),
            "atm": {str(k): v for k, v in self.atm.items()},
            "tokens": self.tokens,
            "changed": self.changed,
            "version": self.version,
            "quote_requests": self.quote_requests,
            "missing_prices": list(self.missing_prices),
        }


def fetch_prices(
    sources: Mapping[str, PriceSource], fetcher: PriceFetcher
) -> tuple[dict[str, float], int]:
    """Prices of every underlying with at most one call of ``fetcher``.

    Returns:
        ``({underlying: price}, calls made)``; underlyings without a quoted key are absent.
    """
    keys = list(dict.fromkeys(k for source in sources.values() for k in source.keys))
    if not keys:
        return {}, 0
    quotes = fetcher(keys)
    prices: dict[str, float] = {}
    for name, source in sources.items():
        price = source.price(quotes)
        if price is not None:
            prices[name] = price
    return prices, 1


def recentre_subscriptions(
    runtime: Runtime,
    *,
    today: dt.date | None = None,
    fetcher: PriceFetcher | None = None,
    table: InstrumentTable | None = None,
) -> RecentreOutcome:
    """Price the underlyings, roll expired chains, re-centre, notify on change.

    Args:
        runtime: Database sessions, Redis, Kite clients and settings.
        today: The trading date (default: today in IST).
        fetcher: Prices source (default: Kite ``ltp`` with the first usable account).
        table: The instrument registry (default: the published one).

    Returns:
        What the run did.

    Raises:
        NotFound: The registry is empty.
        RetryableError: Kite, Redis or the database is transiently unavailable (the task
            retries).
    """
    day = today or dt.datetime.now(IST).date()
    registry = table or RegistryCache(runtime.redis, check_interval_s=0).current()
    with runtime.sessions() as session:
        names = store.underlyings(session)
    sources = price_keys(registry, names, day)
    prices: dict[str, float] = {}
    calls = 0
    if sources:
        try:
            prices, calls = fetch_prices(sources, fetcher or kite_ltp_fetcher(runtime))
        except AuthError as exc:
            # Rolling and the stored centres still apply; the chains keep their ATM.
            log.warning("subscriptions re-centre without prices: %s", exc)
    missing = sorted(n for n in names if n not in prices)
    if missing:
        log.warning("no price for %s: their chains keep their ATM strike", ", ".join(missing))

    previous_atm = store.load_atm(runtime.redis)
    atm = dict(previous_atm)
    with runtime.sessions.begin() as session:
        # What the streamers derive from the stored state now (no price: the stored centres).
        before = store.desired_tokens(session, registry, {}, atm=dict(previous_atm))
        rolled = store.roll_expired(session, registry, day)
        after = store.desired_tokens(
            session,
            registry,
            prices,
            atm=atm,
            hysteresis_strikes=runtime.settings.subscription_atm_hysteresis_strikes,
            today=day,
        )
    store.save_atm(runtime.redis, atm)
    recentred = sorted(k for k, v in atm.items() if previous_atm.get(k) != v)
    changed = before != after
    version = store.notify_changed(runtime.redis) if changed else None
    outcome = RecentreOutcome(
        prices=prices,
        rolled=rolled,
        recentred=recentred,
        atm=dict(sorted(atm.items())),
        tokens=len(after),
        changed=changed,
        version=version,
        quote_requests=calls,
        missing_prices=missing,
    )
    if changed or rolled:
        log.info("subscriptions re-centred: %s", outcome.as_dict())
    return outcome
