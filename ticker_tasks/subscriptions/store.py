"""The desired subscriptions, in the database, and the notification that they changed.

A subscription is one instrument (added by ``EXCHANGE:TRADINGSYMBOL`` or by token, resolved
through the registry) or an option chain (underlying + expiry + strikes around ATM), with a
ticker mode. Adding an existing one is idempotent: it updates the mode (and, for a chain, the
number of strikes) and re-activates it. An instrument subscription's identity is its
``instrument_id``; a chain's is ``(underlying, expiry)``.

Functions take a :class:`~sqlalchemy.orm.Session` and flush; the caller commits, **then** calls
:func:`notify_changed`, which bumps ``ticker_tasks:subscriptions:version`` (INCR) and publishes
the new version on :data:`SUBSCRIPTIONS_CHANNEL`, so streamers re-plan within a second (and
the periodic reconcile catches a lost message by comparing versions).

Runtime state that has no column: the current ATM strike of each chain subscription (for the
hysteresis of :func:`~ticker_tasks.subscriptions.plan.recenter`) lives in the Redis hash
:data:`ATM_KEY`, field ``subscription_id`` -> strike; :func:`load_atm` / :func:`save_atm` read
and replace it around :func:`desired_tokens`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ticker_tasks.db.models import Instrument, Subscription
from ticker_tasks.errors import NotFound, ValidationError
from ticker_tasks.market.registry import InstrumentTable
from ticker_tasks.subscriptions.plan import (
    ChainSpec,
    check_mode,
    expand_chain,
    merge_mode,
    roll_expiry,
)

SUBSCRIPTIONS_CHANNEL = "ticker_tasks:subscriptions:changed"
VERSION_KEY = "ticker_tasks:subscriptions:version"
ATM_KEY = "ticker_tasks:subscriptions:atm"
DEFAULT_MODE = "quote"

log = logging.getLogger(__name__)

_NOTIFY = """
local version = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], version)
return version
"""


@dataclass(frozen=True)
class SubscriptionView:
    """A subscription as shown to users (``instrument_token`` is the current holder's)."""

    subscription_id: int
    mode: str
    active: bool
    instrument_id: int | None = None
    instrument_token: int | None = None
    key: str | None = None
    underlying: str | None = None
    expiry: dt.date | None = None
    strikes_around_atm: int | None = None

    @property
    def target(self) -> str:
        """``NSE:INFY`` or ``NIFTY 2026-11-26 ±10``."""
        if self.instrument_id is not None:
            return self.key or f"instrument {self.instrument_id}"
        return f"{self.underlying} {self.expiry} ±{self.strikes_around_atm or 0}"


def _view(row: Subscription, instrument: Instrument | None) -> SubscriptionView:
    return SubscriptionView(
        subscription_id=row.subscription_id,
        mode=row.mode,
        active=row.active,
        instrument_id=row.instrument_id,
        instrument_token=instrument.instrument_token if instrument is not None else None,
        key=f"{instrument.exchange}:{instrument.tradingsymbol}" if instrument else None,
        underlying=row.underlying,
        expiry=row.expiry,
        strikes_around_atm=row.strikes_around_atm,
    )


def add_instrument(
    session: Session, table: InstrumentTable, ref: str | int, mode: str = DEFAULT_MODE
) -> SubscriptionView:
    """Subscribe one instrument, by ``EXCHANGE:TRADINGSYMBOL`` or by token.

    Raises:
        NotFound: The registry does not know the instrument.
        ValidationError: Bad mode or reference, or an expired contract.
    """
    check_mode(mode)
    info = table.resolve(ref)
    if not info.active:
        raise ValidationError(f"{info.key} has expired")
    instrument = session.get(Instrument, info.instrument_id)
    if instrument is None:
        raise NotFound(f"{info.key} is in the registry but not in the database")
    row = session.scalars(
        select(Subscription)
        .where(Subscription.instrument_id == info.instrument_id)
        .order_by(Subscription.subscription_id)
    ).first()
    if row is None:
        row = Subscription(instrument_id=info.instrument_id, mode=mode, active=True)
        session.add(row)
    row.mode, row.active = mode, True
    session.flush()
    return _view(row, instrument)


def add_chain(
    session: Session,
    table: InstrumentTable,
    underlying: str,
    expiry: dt.date,
    strikes_around_atm: int,
    mode: str = DEFAULT_MODE,
) -> SubscriptionView:
    """Subscribe an option chain: ATM ± ``strikes_around_atm`` strikes and the future.

    Raises:
        NotFound: The registry lists no option of ``underlying`` expiring on ``expiry``.
        ValidationError: Bad mode or a negative number of strikes.
    """
    check_mode(mode)
    if strikes_around_atm < 0:
        raise ValidationError(f"strikes_around_atm must not be negative: {strikes_around_atm}")
    expiries = table.expiries(underlying)
    if expiry not in expiries:
        listed = ", ".join(e.isoformat() for e in expiries) or "none"
        raise NotFound(f"no {underlying} options expire on {expiry} (listed: {listed})")
    row = _chain_row(session, underlying, expiry)
    if row is None:
        row = Subscription(underlying=underlying, expiry=expiry, active=True, mode=mode)
        session.add(row)
    row.mode, row.active, row.strikes_around_atm = mode, True, strikes_around_atm
    session.flush()
    return _view(row, None)


def _chain_row(session: Session, underlying: str, expiry: dt.date) -> Subscription | None:
    return session.scalars(
        select(Subscription)
        .where(
            Subscription.instrument_id.is_(None),
            Subscription.underlying == underlying,
            Subscription.expiry == expiry,
        )
        .order_by(Subscription.subscription_id)
    ).first()


def remove(session: Session, subscription_id: int) -> int:
    """Delete one subscription by id; returns how many rows went (0 or 1)."""
    query = delete(Subscription).where(Subscription.subscription_id == subscription_id)
    return _deleted(session.execute(query))


def remove_instrument(session: Session, table: InstrumentTable, ref: str | int) -> int:
    """Delete the subscription of an instrument; returns how many rows went."""
    info = table.resolve(ref)
    query = delete(Subscription).where(Subscription.instrument_id == info.instrument_id)
    return _deleted(session.execute(query))


def remove_chain(session: Session, underlying: str, expiry: dt.date) -> int:
    """Delete the subscription of a chain; returns how many rows went."""
    query = delete(Subscription).where(
        Subscription.instrument_id.is_(None),
        Subscription.underlying == underlying,
        Subscription.expiry == expiry,
    )
    return _deleted(session.execute(query))


def _deleted(result: Any) -> int:
    return int(result.rowcount or 0)


def list_subscriptions(session: Session) -> list[SubscriptionView]:
    """Every subscription, by id."""
    query = (
        select(Subscription, Instrument)
        .outerjoin(Instrument, Subscription.instrument_id == Instrument.instrument_id)
        .order_by(Subscription.subscription_id)
    )
    return [_view(row, instrument) for row, instrument in session.execute(query)]


def underlyings(session: Session) -> list[str]:
    """Underlyings of the active chain subscriptions (whose prices :func:`desired_tokens` needs)."""
    query = (
        select(Subscription.underlying)
        .where(Subscription.active, Subscription.underlying.is_not(None))
        .distinct()
    )
    return sorted(u for u in session.scalars(query) if u is not None)


def desired_tokens(
    session: Session,
    table: InstrumentTable,
    prices: Mapping[str, float],
    *,
    atm: MutableMapping[int, float] | None = None,
    hysteresis_strikes: float = 0.5,
    today: dt.date | None = None,
) -> dict[int, str]:
    """The desired set ``{instrument_token: mode}`` of every active subscription.

    Args:
        session: Database session.
        table: The instrument registry (chains and current token holders).
        prices: Price of each underlying (by its Kite ``name``) for the chains.
        atm: Current ATM strike per chain subscription id (see :func:`load_atm`); read for the
            hysteresis and updated in place (ids of removed chains are dropped). None: centre
            on the price every time.
        hysteresis_strikes: See :func:`~ticker_tasks.subscriptions.plan.recenter`.
        today: Trading date used to roll expired chains; None disables rolling.

    A token wanted by several subscriptions gets the richest mode. An expired instrument, or a
    chain without price nor known ATM, contributes nothing (logged).
    """
    desired: dict[int, str] = {}
    chains: set[int] = set()

    def want(token: int, mode: str) -> None:
        desired[token] = merge_mode(desired.get(token), mode)

    rows = session.execute(
        select(Subscription, Instrument)
        .outerjoin(Instrument, Subscription.instrument_id == Instrument.instrument_id)
        .where(Subscription.active)
        .order_by(Subscription.subscription_id)
    )
    for row, instrument in rows:
        if instrument is not None:
            if instrument.active:
                want(instrument.instrument_token, row.mode)
            else:
                log.warning(
                    "subscription %s: %s:%s has expired",
                    row.subscription_id,
                    instrument.exchange,
                    instrument.tradingsymbol,
                )
            continue
        if row.underlying is None or row.expiry is None:
            continue
        chains.add(row.subscription_id)
        spec = ChainSpec(row.underlying, row.expiry, row.strikes_around_atm or 0, row.mode)
        current = atm.get(row.subscription_id) if atm is not None else None
        expansion = expand_chain(
            table,
            spec,
            prices.get(row.underlying),
            current_atm_strike=current,
            hysteresis_strikes=hysteresis_strikes,
            today=today,
        )
        if expansion.atm_strike is None:
            log.warning("subscription %s: no price nor strikes for %s", row.subscription_id, spec)
        elif atm is not None:
            atm[row.subscription_id] = expansion.atm_strike
        for token, mode in expansion.tokens.items():
            want(token, mode)
    if atm is not None:
        for gone in [k for k in atm if k not in chains]:
            del atm[gone]
    return desired


def roll_expired(session: Session, table: InstrumentTable, today: dt.date) -> list[int]:
    """Move chain subscriptions whose expiry is past to the next expiry; returns their ids.

    A chain that rolls onto an expiry already subscribed is merged into that subscription
    (the larger strike count, the richer mode) and deleted.
    """
    rolled: list[int] = []
    query = select(Subscription).where(
        Subscription.instrument_id.is_(None), Subscription.expiry < today
    )
    for row in session.scalars(query.order_by(Subscription.subscription_id)).all():
        if row.underlying is None or row.expiry is None:
            continue
        following = roll_expiry(table, row.underlying, row.expiry, today)
        if following is None or following == row.expiry:
            continue
        existing = _chain_row(session, row.underlying, following)
        if existing is not None and existing.subscription_id != row.subscription_id:
            existing.strikes_around_atm = max(
                existing.strikes_around_atm or 0, row.strikes_around_atm or 0
            )
            existing.mode = merge_mode(existing.mode, row.mode)
            existing.active = existing.active or row.active
            session.delete(row)
        else:
            row.expiry = following
        rolled.append(row.subscription_id)
        session.flush()
    return rolled


# --- Redis: notification and ATM state -------------------------------------------------------
def notify_changed(client: redis.Redis) -> int:
    """Bump the subscriptions version and publish it; returns the new version."""
    script = client.register_script(_NOTIFY)
    return int(script(keys=[VERSION_KEY], args=[SUBSCRIPTIONS_CHANNEL]))


def current_version(client: redis.Redis) -> int:
    """The subscriptions version (0 before the first change)."""
    raw: Any = client.get(VERSION_KEY)
    return int(raw) if raw is not None else 0


def load_atm(client: redis.Redis) -> dict[int, float]:
    """Current ATM strike of each chain subscription id."""
    raw: Any = client.hgetall(ATM_KEY)
    return {int(k): float(v) for k, v in raw.items()}


def save_atm(client: redis.Redis, atm: Mapping[int, float]) -> None:
    """Replace the stored ATM strikes (ids missing from ``atm`` are forgotten)."""
    pipe = client.pipeline(transaction=True)
    pipe.delete(ATM_KEY)
    if atm:
        pipe.hset(ATM_KEY, mapping={str(k): repr(float(v)) for k, v in atm.items()})
    pipe.execute()
