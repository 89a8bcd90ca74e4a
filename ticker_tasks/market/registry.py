"""The instrument registry: every process's view of the instrument master.

The master lives in the database; after each refresh it is published to Redis as one
versioned snapshot (columns as numpy arrays). A process keeps the snapshot in memory and
checks the version number at most every ``check_interval_s`` seconds, so a refresh reaches
every process without a restart and hot-path lookups cost no database round trip.

Kite reuses an ``instrument_token`` after its contract expires: a token maps to the active
instrument holding it now; a symbol lookup also finds expired (inactive) contracts.
"""

from __future__ import annotations

import datetime as dt
import io
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from ticker_tasks.db.models import NO_EXPIRY, Instrument
from ticker_tasks.errors import NotFound, ValidationError

VERSION_KEY = "ticker_tasks:registry:version"
SNAPSHOT_KEY = "ticker_tasks:registry:snapshot:{version}"
#: Older snapshots stay readable for a while so a process mid-load never misses one.
SNAPSHOT_TTL_S = 7 * 86_400

_INT_COLUMNS = ("instrument_id", "instrument_token", "lot_size", "freeze_quantity")
_FLOAT_COLUMNS = ("strike", "tick_size")
_TEXT_COLUMNS = ("exchange", "tradingsymbol", "name", "segment", "instrument_type")


@dataclass(frozen=True)
class InstrumentInfo:
    """One instrument as the registry knows it."""

    instrument_id: int
    instrument_token: int
    exchange: str
    tradingsymbol: str
    name: str
    segment: str
    instrument_type: str
    expiry: dt.date | None
    strike: float
    tick_size: float
    lot_size: int
    freeze_quantity: int | None
    active: bool

    @property
    def key(self) -> str:
        """``EXCHANGE:TRADINGSYMBOL``, the form Kite's quote endpoints take."""
        return f"{self.exchange}:{self.tradingsymbol}"


@dataclass(frozen=True)
class OptionChain:
    """Options of one underlying and expiry, strikes ascending, with the matching future."""

    underlying: str
    expiry: dt.date
    strikes: np.ndarray
    call_tokens: np.ndarray
    put_tokens: np.ndarray
    future_token: int | None

    def around_atm(self, price: float, strikes_each_side: int) -> OptionChain:
        """The ATM strike (nearest to ``price``) and ``strikes_each_side`` on each side."""
        if len(self.strikes) == 0:
            return self
        atm = int(np.abs(self.strikes - price).argmin())
        lo, hi = max(0, atm - strikes_each_side), atm + strikes_each_side + 1
        return OptionChain(
            underlying=self.underlying,
            expiry=self.expiry,
            strikes=self.strikes[lo:hi],
            call_tokens=self.call_tokens[lo:hi],
            put_tokens=self.put_tokens[lo:hi],
            future_token=self.future_token,
        )

    def tokens(self) -> np.ndarray:
        """Every option token of the chain (calls and puts that exist; 0 means missing)."""
        both = np.concatenate([self.call_tokens, self.put_tokens])
        return both[both > 0]


class InstrumentTable:
    """An immutable, column-oriented snapshot of the master with vectorized lookups."""

    def __init__(self, columns: dict[str, np.ndarray], version: int) -> None:
        self.version = version
        self._c = columns
        self._n = len(columns["instrument_id"])
        active = columns["active"]
        tokens = columns["instrument_token"]
        # Token -> row of the active holder (sorted for searchsorted lookups).
        active_rows = np.flatnonzero(active)
        order = np.argsort(tokens[active_rows], kind="stable")
        self._token_sorted = tokens[active_rows][order]
        self._token_rows = active_rows[order]
        # Symbol -> row: active rows win over inactive ones, later expiries over earlier.
        self._by_symbol: dict[str, int] = {}
        ranking = np.lexsort((columns["expiry_ordinal"], active))
        for row in ranking.tolist():
            key = f"{columns['exchange'][row]}:{columns['tradingsymbol'][row]}"
            self._by_symbol[key] = row

    def __len__(self) -> int:
        return self._n

    # --- single lookups ---------------------------------------------------------------------
    def _info(self, row: int) -> InstrumentInfo:
        c = self._c
        ordinal = int(c["expiry_ordinal"][row])
        expiry = None if ordinal == NO_EXPIRY.toordinal() else dt.date.fromordinal(ordinal)
        freeze = int(c["freeze_quantity"][row])
        return InstrumentInfo(
            instrument_id=int(c["instrument_id"][row]),
            instrument_token=int(c["instrument_token"][row]),
            exchange=str(c["exchange"][row]),
            tradingsymbol=str(c["tradingsymbol"][row]),
            name=str(c["name"][row]),
            segment=str(c["segment"][row]),
            instrument_type=str(c["instrument_type"][row]),
            expiry=expiry,
            strike=float(c["strike"][row]),
            tick_size=float(c["tick_size"][row]),
            lot_size=int(c["lot_size"][row]),
            freeze_quantity=freeze if freeze > 0 else None,
            active=bool(c["active"][row]),
        )

    def by_token(self, instrument_token: int) -> InstrumentInfo | None:
        """The active instrument holding ``instrument_token`` now, or None."""
        rows = self.rows_for_tokens(np.asarray([instrument_token], dtype=np.int64))
        return None if rows[0] < 0 else self._info(int(rows[0]))

    def by_symbol(self, key: str) -> InstrumentInfo | None:
        """Look up ``EXCHANGE:TRADINGSYMBOL`` (active first, else the latest expired one)."""
        row = self._by_symbol.get(key.strip().upper())
        return None if row is None else self._info(row)

    def resolve(self, ref: str | int) -> InstrumentInfo:
        """A token (int or digits) or ``EXCHANGE:TRADINGSYMBOL``; NotFound when unknown."""
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            found = self.by_token(int(ref))
        elif isinstance(ref, str) and ":" in ref:
            found = self.by_symbol(ref)
        else:
            raise ValidationError(f"not a token nor EXCHANGE:TRADINGSYMBOL: {ref!r}")
        if found is None:
            raise NotFound(f"unknown instrument {ref!r}")
        return found

    # --- vectorized lookups (hot path) ------------------------------------------------------
    def rows_for_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """Row index of each token's active holder; -1 where the token is unknown."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if len(self._token_sorted) == 0:
            return np.full(len(tokens), -1, dtype=np.int64)
        pos = np.searchsorted(self._token_sorted, tokens)
        pos = np.minimum(pos, len(self._token_sorted) - 1)
        found = self._token_sorted[pos] == tokens
        return np.where(found, self._token_rows[pos], -1).astype(np.int64)

    def known_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """Boolean mask: which tokens an active instrument holds."""
        return self.rows_for_tokens(tokens) >= 0

    def column(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Values of one column at ``rows`` (e.g. ``instrument_id`` or ``tick_size``)."""
        values: np.ndarray = self._c[name][rows]
        return values

    # --- option chains ----------------------------------------------------------------------
    def expiries(self, underlying: str) -> list[dt.date]:
        """Active option expiries of an underlying, ascending."""
        c = self._c
        mask = (c["name"] == underlying) & c["active"] & np.isin(c["instrument_type"], OPTIONS)
        return [dt.date.fromordinal(int(o)) for o in np.unique(c["expiry_ordinal"][mask])]

    def chain(self, underlying: str, expiry: dt.date) -> OptionChain:
        """The active options of ``underlying`` expiring on ``expiry``, and its future."""
        c = self._c
        base = (c["name"] == underlying) & c["active"]
        same_expiry = c["expiry_ordinal"] == expiry.toordinal()
        calls = base & same_expiry & (c["instrument_type"] == "CE")
        puts = base & same_expiry & (c["instrument_type"] == "PE")
        strikes = np.unique(np.concatenate([c["strike"][calls], c["strike"][puts]]))
        call_tokens = _tokens_at(strikes, c["strike"][calls], c["instrument_token"][calls])
        put_tokens = _tokens_at(strikes, c["strike"][puts], c["instrument_token"][puts])
        return OptionChain(
            underlying=underlying,
            expiry=expiry,
            strikes=strikes,
            call_tokens=call_tokens,
            put_tokens=put_tokens,
            future_token=self._future_for(underlying, expiry),
        )

    def _future_for(self, underlying: str, expiry: dt.date) -> int | None:
        """The future of the same expiry, else the nearest later one (weekly options)."""
        c = self._c
        futures = (c["name"] == underlying) & c["active"] & (c["instrument_type"] == "FUT")
        ordinals = c["expiry_ordinal"][futures]
        later = ordinals >= expiry.toordinal()
        if not later.any():
            return None
        rows = np.flatnonzero(futures)[later]
        return int(c["instrument_token"][rows[np.argmin(ordinals[later])]])


OPTIONS = np.array(["CE", "PE"])


def _tokens_at(strikes: np.ndarray, have: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    out = np.zeros(len(strikes), dtype=np.int64)
    if len(have):
        out[np.searchsorted(strikes, have)] = tokens
    return out


# --- building and publishing -----------------------------------------------------------------
def columns_from_instruments(instruments: Iterable[Instrument]) -> dict[str, np.ndarray]:
    """Column arrays of a snapshot from ORM rows."""
    rows = list(instruments)
    columns: dict[str, np.ndarray] = {
        "instrument_id": np.array([r.instrument_id for r in rows], dtype=np.int64),
        "instrument_token": np.array([r.instrument_token for r in rows], dtype=np.int64),
        "lot_size": np.array([r.lot_size for r in rows], dtype=np.int64),
        "freeze_quantity": np.array([r.freeze_quantity or 0 for r in rows], dtype=np.int64),
        "strike": np.array([float(r.strike) for r in rows], dtype=np.float64),
        "tick_size": np.array([float(r.tick_size) for r in rows], dtype=np.float64),
        "expiry_ordinal": np.array([r.expiry.toordinal() for r in rows], dtype=np.int64),
        "active": np.array([r.active for r in rows], dtype=bool),
    }
    for name in _TEXT_COLUMNS:
        columns[name] = np.array([getattr(r, name) for r in rows], dtype=np.str_)
    return columns


def _encode(columns: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, allow_pickle=False, **columns)
    return buffer.getvalue()


def _decode(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def publish_snapshot(client: redis.Redis, session: Session) -> int:
    """Publish the master from the database as a new snapshot version; returns the version."""
    instruments = session.scalars(select(Instrument).order_by(Instrument.instrument_id)).all()
    blob = _encode(columns_from_instruments(instruments))
    version = int(client.incr(VERSION_KEY))
    client.set(SNAPSHOT_KEY.format(version=version), blob, ex=SNAPSHOT_TTL_S)
    return version


class RegistryCache:
    """A process's copy of the registry, refreshed when the published version changes."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        check_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._check_interval_s = check_interval_s
        self._clock = clock
        self._table: InstrumentTable | None = None
        self._checked_at = float("-inf")

    def current(self) -> InstrumentTable:
        """The newest snapshot (a Redis round trip at most once per check interval)."""
        now = self._clock()
        if self._table is None or now - self._checked_at >= self._check_interval_s:
            self._checked_at = now
            self._refresh()
        if self._table is None:
            raise NotFound("the instrument registry is empty: run ticker-tasks instruments refresh")
        return self._table

    def _refresh(self) -> None:
        raw: Any = self._client.get(VERSION_KEY)
        if raw is None:
            return
        version = int(raw)
        if self._table is not None and self._table.version == version:
            return
        blob: Any = self._client.get(SNAPSHOT_KEY.format(version=version))
        if blob is None:
            return
        self._table = InstrumentTable(_decode(bytes(blob)), version)


def table_from_instruments(instruments: Sequence[Instrument], version: int = 0) -> InstrumentTable:
    """A snapshot built directly from rows (tools and tests without Redis)."""
    return InstrumentTable(columns_from_instruments(instruments), version)
