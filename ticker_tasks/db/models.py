"""Tables of the service.

Kite reuses an ``instrument_token`` after its contract expires, so an instrument's identity is
the surrogate ``instrument_id``, unique on (exchange, tradingsymbol, expiry); the token is a
column that the registry maps to the instrument holding it now. Instruments without expiry
store :data:`NO_EXPIRY`, so the natural key has no NULL in it on any database.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from ticker_tasks.db.base import Base

#: Expiry stored for instruments that never expire (equities, indices).
NO_EXPIRY = dt.date(9999, 12, 31)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Instrument(Base):
    """One tradable (or index) contract, kept forever; ``active`` is false once it vanished."""

    __tablename__ = "instruments"
    __table_args__ = (
        UniqueConstraint("exchange", "tradingsymbol", "expiry"),
        Index("ix_instruments_instrument_token", "instrument_token"),
        Index("ix_instruments_underlying_expiry", "name", "expiry"),
    )

    instrument_id: Mapped[int] = mapped_column(primary_key=True)
    instrument_token: Mapped[int]
    exchange_token: Mapped[int]
    exchange: Mapped[str] = mapped_column(String(16))
    tradingsymbol: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128), default="")
    segment: Mapped[str] = mapped_column(String(16))
    instrument_type: Mapped[str] = mapped_column(String(8))
    expiry: Mapped[dt.date] = mapped_column(default=NO_EXPIRY)
    strike: Mapped[Decimal] = mapped_column(default=Decimal(0))
    tick_size: Mapped[Decimal]
    lot_size: Mapped[int]
    freeze_quantity: Mapped[int | None]
    active: Mapped[bool] = mapped_column(default=True)
    first_seen: Mapped[dt.datetime] = mapped_column(default=_now)
    last_seen: Mapped[dt.datetime] = mapped_column(default=_now)


class Account(Base):
    """A Kite account; credential columns hold Fernet ciphertext only."""

    __tablename__ = "accounts"

    account_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    api_key: Mapped[str] = mapped_column(String(64), unique=True)
    api_secret_encrypted: Mapped[bytes]
    access_token_encrypted: Mapped[bytes | None]
    enabled: Mapped[bool] = mapped_column(default=True)
    token_status: Mapped[str] = mapped_column(String(16), default="missing")
    token_checked_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(default=_now, onupdate=_now)


class Subscription(Base):
    """A desired market-data subscription: one instrument, or a chain around ATM."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        CheckConstraint("mode IN ('ltp', 'quote', 'full')", name="mode"),
        CheckConstraint(
            "(instrument_id IS NOT NULL) OR (underlying IS NOT NULL AND expiry IS NOT NULL)",
            name="target",
        ),
    )

    subscription_id: Mapped[int] = mapped_column(primary_key=True)
    instrument_id: Mapped[int | None] = mapped_column(ForeignKey("instruments.instrument_id"))
    underlying: Mapped[str | None] = mapped_column(String(64))
    expiry: Mapped[dt.date | None]
    strikes_around_atm: Mapped[int | None]
    mode: Mapped[str] = mapped_column(String(8), default="quote")
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=_now)


class Order(Base):
    """An order as we asked for it and as the broker reports it."""

    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("account_id", "client_order_id"),
        Index("ix_orders_broker_order_id", "broker_order_id"),
    )

    order_id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.account_id"))
    client_order_id: Mapped[str] = mapped_column(String(64))
    tag: Mapped[str] = mapped_column(String(20))
    broker_order_id: Mapped[str | None] = mapped_column(String(32))
    instrument_id: Mapped[int | None] = mapped_column(ForeignKey("instruments.instrument_id"))
    exchange: Mapped[str] = mapped_column(String(16))
    tradingsymbol: Mapped[str] = mapped_column(String(64))
    variety: Mapped[str] = mapped_column(String(16))
    transaction_type: Mapped[str] = mapped_column(String(4))
    order_type: Mapped[str] = mapped_column(String(8))
    product: Mapped[str] = mapped_column(String(8))
    validity: Mapped[str] = mapped_column(String(8), default="DAY")
    quantity: Mapped[int]
    price: Mapped[Decimal | None]
    trigger_price: Mapped[Decimal | None]
    status: Mapped[str] = mapped_column(String(32))
    status_message: Mapped[str | None] = mapped_column(String(512))
    filled_quantity: Mapped[int] = mapped_column(default=0)
    average_price: Mapped[Decimal | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(default=_now, onupdate=_now)


class OrderEvent(Base):
    """One state transition of an order (its history), from us or from the broker."""

    __tablename__ = "order_events"
    __table_args__ = (Index("ix_order_events_order_id_at", "order_id", "at"),)

    event_id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.order_id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(16))
    at: Mapped[dt.datetime] = mapped_column(default=_now)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Candle(Base):
    """An OHLCV bar; one per (instrument, interval, start time), whatever its source."""

    __tablename__ = "candles"
    __table_args__ = (
        CheckConstraint("low <= high", name="low_le_high"),
        CheckConstraint(
            "quality IN ('complete', 'gap', 'mock', 'replayed', 'backfilled')", name="quality"
        ),
    )

    instrument_id: Mapped[int] = mapped_column(
        ForeignKey("instruments.instrument_id"), primary_key=True
    )
    interval: Mapped[str] = mapped_column(String(16), primary_key=True)
    ts: Mapped[dt.datetime] = mapped_column(primary_key=True)
    open: Mapped[float]
    high: Mapped[float]
    low: Mapped[float]
    close: Mapped[float]
    volume: Mapped[int]
    oi: Mapped[int | None]
    source: Mapped[str] = mapped_column(String(16))
    quality: Mapped[str] = mapped_column(String(16))
    gap_seconds: Mapped[int] = mapped_column(default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(default=_now, onupdate=_now)


class BackfillJob(Base):
    """A backfill request and its outcome."""

    __tablename__ = "backfill_jobs"

    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    request: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    requests_total: Mapped[int] = mapped_column(default=0)
    requests_done: Mapped[int] = mapped_column(default=0)
    candles_written: Mapped[int] = mapped_column(default=0)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=_now)
    finished_at: Mapped[dt.datetime | None]


class FetchedRange(Base):
    """A time range of one instrument and interval that was fetched from Kite already."""

    __tablename__ = "fetched_ranges"
    __table_args__ = (
        UniqueConstraint("instrument_id", "interval", "range_start"),
        CheckConstraint("range_start < range_end", name="ordered"),
    )

    fetched_range_id: Mapped[int] = mapped_column(primary_key=True)
    instrument_id: Mapped[int] = mapped_column(ForeignKey("instruments.instrument_id"))
    interval: Mapped[str] = mapped_column(String(16))
    range_start: Mapped[dt.datetime]
    range_end: Mapped[dt.datetime]
    job_id: Mapped[str | None] = mapped_column(ForeignKey("backfill_jobs.job_id"))
    fetched_at: Mapped[dt.datetime] = mapped_column(default=_now)
