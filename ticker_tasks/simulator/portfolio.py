"""Fills, trades, positions and margins of every account (all intraday: no overnight book)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ticker_tasks.simulator.clock import ist_string


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution of an order."""

    trade_id: str
    order_id: str
    exchange_order_id: str
    api_key: str
    row: int
    exchange: str
    tradingsymbol: str
    instrument_token: int
    product: str
    transaction_type: str
    quantity: int
    price: float
    epoch: int

    def as_trade(self) -> dict[str, Any]:
        """Kite's trade object."""
        stamp = ist_string(self.epoch)
        return {
            "trade_id": self.trade_id,
            "order_id": self.order_id,
            "exchange": self.exchange,
            "tradingsymbol": self.tradingsymbol,
            "instrument_token": self.instrument_token,
            "product": self.product,
            "average_price": self.price,
            "quantity": self.quantity,
            "exchange_order_id": self.exchange_order_id,
            "transaction_type": self.transaction_type,
            "fill_timestamp": stamp,
            "order_timestamp": stamp[11:],
            "exchange_timestamp": stamp,
        }


@dataclass(slots=True)
class _Position:
    exchange: str
    tradingsymbol: str
    instrument_token: int
    product: str
    row: int
    buy_quantity: int = 0
    buy_value: float = 0.0
    sell_quantity: int = 0
    sell_value: float = 0.0


@dataclass(slots=True)
class Portfolio:
    """Fills and the positions they build, per account."""

    fills: list[Fill] = field(default_factory=list)
    _positions: dict[tuple[str, int, str], _Position] = field(default_factory=dict)

    def add(self, fill: Fill) -> None:
        """Record a fill and update the position."""
        self.fills.append(fill)
        key = (fill.api_key, fill.row, fill.product)
        position = self._positions.get(key)
        if position is None:
            position = _Position(
                fill.exchange, fill.tradingsymbol, fill.instrument_token, fill.product, fill.row
            )
            self._positions[key] = position
        value = fill.quantity * fill.price
        if fill.transaction_type == "BUY":
            position.buy_quantity += fill.quantity
            position.buy_value += value
        else:
            position.sell_quantity += fill.quantity
            position.sell_value += value

    def trades(self, api_key: str, order_id: str | None = None) -> list[dict[str, Any]]:
        """Trades of an account (optionally of one order), oldest first."""
        return [
            f.as_trade()
            for f in self.fills
            if f.api_key == api_key and (order_id is None or f.order_id == order_id)
        ]

    def rows(self, api_key: str) -> list[int]:
        """Universe rows of the account's positions."""
        return [p.row for (key, _, _), p in self._positions.items() if key == api_key]

    def positions(
        self, api_key: str, last: dict[int, float], close: dict[int, float]
    ) -> dict[str, list[dict[str, Any]]]:
        """``{"net": [...], "day": [...]}`` valued at ``last`` prices (rupees by row)."""
        net: list[dict[str, Any]] = []
        for (key, _, _), p in self._positions.items():
            if key == api_key:
                net.append(_position_dict(p, last.get(p.row, 0.0), close.get(p.row, 0.0)))
        return {"net": net, "day": [dict(d) for d in net]}


def _position_dict(p: _Position, last: float, close: float) -> dict[str, Any]:
    quantity = p.buy_quantity - p.sell_quantity
    buy_price = p.buy_value / p.buy_quantity if p.buy_quantity else 0.0
    sell_price = p.sell_value / p.sell_quantity if p.sell_quantity else 0.0
    if quantity > 0:
        average = buy_price
    elif quantity < 0:
        average = sell_price
    else:
        average = 0.0
    closed = min(p.buy_quantity, p.sell_quantity)
    realised = closed * (sell_price - buy_price) if closed else 0.0
    pnl = (p.sell_value - p.buy_value) + quantity * last
    return {
        "tradingsymbol": p.tradingsymbol,
        "exchange": p.exchange,
        "instrument_token": p.instrument_token,
        "product": p.product,
        "quantity": quantity,
        "overnight_quantity": 0,
        "multiplier": 1,
        "average_price": round(average, 4),
        "close_price": close,
        "last_price": last,
        "value": round(p.sell_value - p.buy_value, 4),
        "pnl": round(pnl, 4),
        "m2m": round(pnl, 4),
        "unrealised": round(pnl - realised, 4),
        "realised": round(realised, 4),
        "buy_quantity": p.buy_quantity,
        "buy_price": round(buy_price, 4),
        "buy_value": round(p.buy_value, 4),
        "buy_m2m": round(p.buy_value, 4),
        "sell_quantity": p.sell_quantity,
        "sell_price": round(sell_price, 4),
        "sell_value": round(p.sell_value, 4),
        "sell_m2m": round(p.sell_value, 4),
        "day_buy_quantity": p.buy_quantity,
        "day_buy_price": round(buy_price, 4),
        "day_buy_value": round(p.buy_value, 4),
        "day_sell_quantity": p.sell_quantity,
        "day_sell_price": round(sell_price, 4),
        "day_sell_value": round(p.sell_value, 4),
    }
