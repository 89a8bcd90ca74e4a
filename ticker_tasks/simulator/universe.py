"""The instrument universe: indices, stocks, futures and weekly + monthly option chains.

Instruments are stored as numpy columns (one row per contract) so the market model works on
all of them at once. Tokens follow Kite: ``instrument_token = (exchange_token << 8) | segment``.
Rows are never deleted: an expired contract is marked inactive (it leaves the dump and its
token stops resolving); a reused token points at the newest row holding it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ticker_tasks.simulator import rng
from ticker_tasks.simulator.catalog import (
    SEGMENT_INDICES,
    SEGMENT_NFO,
    UNDERLYINGS,
    Underlying,
)
from ticker_tasks.simulator.clock import (
    SESSION_CLOSE_MIN,
    day_of_date,
    day_start_minute,
)
from ticker_tasks.simulator.contracts import (
    KIND_EQ,
    KIND_FUT,
    KIND_INDEX,
    KIND_OPT,
    NEVER,
    TICK,
    ContractSpec,
    derivative_symbol,
    liquidity_profile,
)
from ticker_tasks.simulator.options import MINUTES_PER_YEAR

CSV_HEADER: Final = (
    "instrument_token,exchange_token,tradingsymbol,name,last_price,expiry,strike,"
    "tick_size,lot_size,instrument_type,segment,exchange"
)
_FIRST_NFO_TOKEN: Final = 35000

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


class UnknownInstrument(KeyError):
    """A token or tradingsymbol that the universe does not (or no longer) list."""


_DTYPES: Final[dict[str, type[np.generic]]] = {
    "token": np.int64,
    "exchange_token": np.int64,
    "segment": np.int64,
    "kind": np.int64,
    "path": np.int64,
    "strike": np.float64,
    "is_call": np.bool_,
    "expiry_min": np.int64,
    "listing_min": np.int64,
    "lot": np.int64,
    "freeze": np.int64,
    "base": np.uint64,
    "liquidity": np.float64,
    "p_idle": np.float64,
    "noise": np.float64,
    "ext_max": np.int64,
    "extra": np.float64,
    "oi_lots": np.float64,
    "active": np.bool_,
}


@dataclass(slots=True)
class Universe:
    """Column store of every contract ever listed in this run.

    Attributes:
        seed_key: Root key of the run's seed.
        build_day: IST day number the universe was built for.
        atm: Underlying level used to centre the strikes, per path.
        version: Bumped on every listing change (subscribers re-resolve their tokens).
    """

    seed_key: npt.NDArray[np.uint64]
    build_day: int
    atm: F64
    tradingsymbol: list[str] = field(default_factory=list)
    expiry_date: list[date | None] = field(default_factory=list)
    version: int = 0
    _lists: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in _DTYPES})
    _arrays: dict[str, npt.NDArray[np.generic]] = field(default_factory=dict)
    _by_token: dict[int, int] = field(default_factory=dict)
    _by_symbol: dict[tuple[str, str], int] = field(default_factory=dict)
    _next_exchange_token: int = _FIRST_NFO_TOKEN

    # ----------------------------------------------------------------- columns

    def col(self, name: str) -> npt.NDArray[np.generic]:
        """One column as a numpy array (cached until the next listing change)."""
        array = self._arrays.get(name)
        if array is None:
            array = np.asarray(self._lists[name], dtype=_DTYPES[name])
            self._arrays[name] = array
        return array

    def ints(self, name: str) -> I64:
        """An int64 column (``token``, ``kind``, ``path``, ``expiry_min``, ``lot``, ...)."""
        return self.col(name).astype(np.int64, copy=False)

    def floats(self, name: str) -> F64:
        """A float64 column (``strike``, ``liquidity``, ``p_idle``, ...)."""
        return self.col(name).astype(np.float64, copy=False)

    def bools(self, name: str) -> npt.NDArray[np.bool_]:
        """A bool column (``is_call``, ``active``)."""
        return self.col(name).astype(np.bool_, copy=False)

    def int_at(self, name: str, row: int) -> int:
        """One integer cell."""
        return int(self._lists[name][row])

    def float_at(self, name: str, row: int) -> float:
        """One float cell."""
        return float(self._lists[name][row])

    def bool_at(self, name: str, row: int) -> bool:
        """One bool cell."""
        return bool(self._lists[name][row])

    @property
    def size(self) -> int:
        """Rows (including expired ones)."""
        return len(self.tradingsymbol)

    @property
    def active(self) -> npt.NDArray[np.bool_]:
        """Whether each row is listed."""
        return self.bools("active")

    @property
    def base(self) -> npt.NDArray[np.uint64]:
        """Random key of each row."""
        return self.col("base").astype(np.uint64, copy=False)

    def active_count(self) -> int:
        """Number of listed contracts."""
        return len(self._by_token)

    # ----------------------------------------------------------------- lookups

    def index_of_token(self, token: int) -> int:
        """Row of the listed contract holding ``token``.

        Raises:
            UnknownInstrument: No listed contract has that token.
        """
        try:
            return self._by_token[token]
        except KeyError:
            raise UnknownInstrument(token) from None

    def index_of_symbol(self, exchange: str, tradingsymbol: str) -> int:
        """Row of the listed contract ``exchange:tradingsymbol``.

        Raises:
            UnknownInstrument: Not listed.
        """
        try:
            return self._by_symbol[(exchange, tradingsymbol)]
        except KeyError:
            raise UnknownInstrument(f"{exchange}:{tradingsymbol}") from None

    def indices_of_tokens(self, tokens: list[int]) -> tuple[I64, list[int]]:
        """Rows of the listed tokens among ``tokens`` and the tokens that resolved."""
        rows: list[int] = []
        found: list[int] = []
        for token in tokens:
            row = self._by_token.get(token)
            if row is not None:
                rows.append(row)
                found.append(token)
        return np.asarray(rows, dtype=np.int64), found

    def has_symbol(self, exchange: str, tradingsymbol: str) -> bool:
        """Whether ``exchange:tradingsymbol`` is listed."""
        return (exchange, tradingsymbol) in self._by_symbol

    def symbol_of(self, spec: ContractSpec) -> str:
        """Tradingsymbol a contract spec would get."""
        under = UNDERLYINGS[spec.path]
        if spec.kind in (KIND_INDEX, KIND_EQ):
            return under.tradingsymbol
        return derivative_symbol(under, spec)

    def exchange_of(self, row: int) -> str:
        """``NSE`` or ``NFO``."""
        return "NFO" if self.int_at("segment", row) == SEGMENT_NFO else "NSE"

    def underlying(self, row: int) -> Underlying:
        """The underlying of a row."""
        return UNDERLYINGS[self.int_at("path", row)]

    def instrument_type(self, row: int) -> str:
        """``EQ``, ``FUT``, ``CE`` or ``PE`` (indices are listed as ``EQ`` like Kite)."""
        kind = self.int_at("kind", row)
        if kind == KIND_FUT:
            return "FUT"
        if kind == KIND_OPT:
            return "CE" if self.bool_at("is_call", row) else "PE"
        return "EQ"

    def segment_name(self, row: int) -> str:
        """Segment column of the dump."""
        kind = self.int_at("kind", row)
        return ("INDICES", "NSE", "NFO-FUT", "NFO-OPT")[kind]

    def display_name(self, row: int) -> str:
        """``name`` column of the dump."""
        under = self.underlying(row)
        kind = self.int_at("kind", row)
        return under.display_name if kind in (KIND_INDEX, KIND_EQ) else under.symbol

    def row_dict(self, row: int) -> dict[str, object]:
        """One instrument as a JSON-friendly dict (dump columns plus state flags)."""
        expiry = self.expiry_date[row]
        kind = self.int_at("kind", row)
        return {
            "instrument_token": self.int_at("token", row),
            "exchange_token": self.int_at("exchange_token", row),
            "tradingsymbol": self.tradingsymbol[row],
            "name": self.display_name(row),
            "expiry": expiry.isoformat() if expiry else "",
            "strike": self.float_at("strike", row),
            "tick_size": 0.0 if kind == KIND_INDEX else TICK,
            "lot_size": 0 if kind == KIND_INDEX else self.int_at("lot", row),
            "instrument_type": self.instrument_type(row),
            "segment": self.segment_name(row),
            "exchange": self.exchange_of(row),
            "freeze_quantity": self.int_at("freeze", row),
            "active": self.bool_at("active", row),
        }

    # ----------------------------------------------------------------- dump

    def csv_dump(self, exchange: str | None = None) -> str:
        """The instrument dump (CRLF lines, Kite's header), listed contracts only.

        Numeric columns are never empty (``0.0`` for no strike, no tick size, no price).
        """
        lines = [CSV_HEADER]
        for row in sorted(self._by_token.values()):
            if exchange is not None and self.exchange_of(row) != exchange:
                continue
            kind = self.int_at("kind", row)
            expiry = self.expiry_date[row]
            lines.append(
                ",".join(
                    (
                        str(self.int_at("token", row)),
                        str(self.int_at("exchange_token", row)),
                        self.tradingsymbol[row],
                        _csv_field(self.display_name(row)),
                        "0.0",
                        expiry.isoformat() if expiry else "",
                        repr(self.float_at("strike", row)),
                        "0.0" if kind == KIND_INDEX else repr(TICK),
                        "0" if kind == KIND_INDEX else str(self.int_at("lot", row)),
                        self.instrument_type(row),
                        self.segment_name(row),
                        self.exchange_of(row),
                    )
                )
            )
        return "\r\n".join(lines) + "\r\n"

    # ----------------------------------------------------------------- mutation

    def expire(self, token: int) -> int:
        """Delist the contract holding ``token``; return its row.

        Raises:
            UnknownInstrument: Not listed.
        """
        row = self.index_of_token(token)
        self._lists["active"][row] = False
        self._arrays.pop("active", None)
        del self._by_token[token]
        self._by_symbol.pop((self.exchange_of(row), self.tradingsymbol[row]), None)
        self.version += 1
        return row

    def expire_due(self, minute: int) -> list[int]:
        """Delist every contract whose expiry is at or before ``minute``; return the tokens."""
        due = np.flatnonzero(self.active & (self.ints("expiry_min") <= minute))
        tokens = [self.int_at("token", row) for row in due.tolist()]
        for token in tokens:
            self.expire(token)
        return tokens

    def add(self, spec: ContractSpec) -> int:
        """List a new contract (reusing ``spec.token`` if given); return its row.

        Raises:
            ValueError: The token or tradingsymbol is held by a listed contract.
        """
        under = UNDERLYINGS[spec.path]
        if spec.kind in (KIND_INDEX, KIND_EQ):
            exchange_token = under.exchange_token
            segment = under.segment
            symbol = under.tradingsymbol
        else:
            if spec.token is None:
                exchange_token = self._next_exchange_token
                self._next_exchange_token += 1
            else:
                exchange_token = spec.token >> 8
            segment = SEGMENT_NFO
            symbol = derivative_symbol(under, spec)
        token = (exchange_token << 8) | segment
        exchange = "NFO" if segment == SEGMENT_NFO else "NSE"
        if token in self._by_token or (exchange, symbol) in self._by_symbol:
            raise ValueError(f"{token} / {exchange}:{symbol} is already listed")
        row = self.size
        values = _row_values(self, spec, under, token, exchange_token, segment, symbol)
        for name, value in values.items():
            self._lists[name].append(value)
        self._arrays.clear()
        self.tradingsymbol.append(symbol)
        self.expiry_date.append(spec.expiry)
        self._by_token[token] = row
        self._by_symbol[(exchange, symbol)] = row
        self.version += 1
        return row


def _csv_field(text: str) -> str:
    return f'"{text}"' if "," in text else text


def _row_values(
    universe: Universe,
    spec: ContractSpec,
    under: Underlying,
    token: int,
    exchange_token: int,
    segment: int,
    symbol: str,
) -> dict[str, object]:
    """Column values of a new row, including its liquidity profile."""
    expiry_min = NEVER
    listing_min = -NEVER
    if spec.expiry is not None:
        expiry_min = day_start_minute(day_of_date(spec.expiry)) + SESSION_CLOSE_MIN
        days = 95 if spec.monthly else 35
        listing_min = expiry_min - days * 1440
    base = rng.label_key(
        universe.seed_key, token, symbol, spec.expiry.isoformat() if spec.expiry else ""
    )
    profile = liquidity_profile(universe.build_day, float(universe.atm[spec.path]), spec, under)
    lot = 1 if spec.kind in (KIND_INDEX, KIND_EQ) else under.lot_size
    freeze = 500_000 if spec.kind == KIND_EQ else under.freeze_qty
    return {
        "token": token,
        "exchange_token": exchange_token,
        "segment": segment,
        "kind": spec.kind,
        "path": spec.path,
        "strike": float(spec.strike),
        "is_call": bool(spec.is_call),
        "expiry_min": expiry_min,
        "listing_min": listing_min,
        "lot": lot,
        "freeze": freeze,
        "base": int(base[0]),
        "liquidity": profile.share,
        "p_idle": profile.p_idle,
        "noise": profile.noise,
        "ext_max": profile.ext_max,
        "extra": profile.extra,
        "oi_lots": profile.oi_lots,
        "active": True,
    }


def is_index_row(universe: Universe, rows: I64) -> npt.NDArray[np.bool_]:
    """Whether rows are indices (segment 9)."""
    return np.asarray(universe.ints("segment")[rows] == SEGMENT_INDICES, dtype=np.bool_)


def years_to_expiry(expiry_min: I64, minutes: I64) -> F64:
    """Time to expiry in years (>= 0)."""
    years = np.maximum(expiry_min - minutes, 0).astype(np.float64) / MINUTES_PER_YEAR
    return np.asarray(years, dtype=np.float64)
