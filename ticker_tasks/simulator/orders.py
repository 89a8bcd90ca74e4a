"""The broker-side order book: validation, status transitions, fills against the model.

Orders fill against the simulated market: MARKET orders at once at the touch (best ask for a
BUY, best bid for a SELL); LIMIT orders at once when marketable, otherwise they stay OPEN and
fill at their limit price on the first trade of the instrument at or through it; SL / SL-M
orders wait in TRIGGER PENDING until a trade crosses the trigger. Every transition is recorded
(``order_history`` lists them oldest first) and pushed to :attr:`OrderBook.notify`.
"""

from __future__ import annotations

import hashlib
import itertools
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from ticker_tasks.simulator.clock import ist_string
from ticker_tasks.simulator.config import Account
from ticker_tasks.simulator.contracts import TICKS_PER_RUPEE
from ticker_tasks.simulator.orders_rules import (
    OrderError,
    Request,
    required_margin,
    validate_modify,
    validate_new,
)
from ticker_tasks.simulator.portfolio import Fill, Portfolio
from ticker_tasks.simulator.state import MarketState, SlotTrades
from ticker_tasks.simulator.universe import UnknownInstrument

TERMINAL: Final = frozenset({"COMPLETE", "CANCELLED", "REJECTED"})
#: States pushed to the account's ticker connections (transient ones are only in history).
NOTIFIED: Final = frozenset(
    {"OPEN", "TRIGGER PENDING", "AMO REQ RECEIVED", "COMPLETE", "CANCELLED", "REJECTED"}
)
MAX_MODIFICATIONS: Final = 25

Notify = Callable[[str, dict[str, Any]], None]

__all__ = ["MAX_MODIFICATIONS", "Order", "OrderBook", "OrderError"]


@dataclass(slots=True)
class Order:
    """One order and its history.

    Attributes:
        api_key: Owner.
        row: Universe row of the instrument.
        data: Current order fields (Kite's order object).
        history: Snapshots of ``data`` at every transition, oldest first.
        modifications: Accepted modifications.
    """

    api_key: str
    row: int
    data: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    modifications: int = 0

    @property
    def status(self) -> str:
        """Current status."""
        return str(self.data["status"])


class OrderBook:
    """Orders of every account.

    Args:
        state: Live market state (prices, book, current slot).
        accounts: Accounts by api_key (secrets sign the order updates).
        band_pct: LIMIT price band around the previous close for cash and futures.
        opening_balance: Cash of every account (the RMS rejects orders beyond it).
    """

    def __init__(
        self,
        state: MarketState,
        accounts: Mapping[str, Account],
        band_pct: float,
        opening_balance: float = 1_000_000.0,
    ) -> None:
        self.state = state
        self.accounts = accounts
        self.band_pct = band_pct
        self.opening_balance = opening_balance
        self.used: dict[str, float] = {}
        self.forced_rejects: list[list[Any]] = []
        self.orders: dict[str, Order] = {}
        self.portfolio = Portfolio()
        self.notify: Notify | None = None
        self._ids = itertools.count(1)
        self._trade_ids = itertools.count(1)
        self._working: dict[int, list[str]] = {}

    # ----------------------------------------------------------------- helpers

    def _now(self) -> int:
        return self.state.model.clock.slot_epoch(self.state.slot)

    def _touch(self, row: int) -> tuple[int, int, int]:
        """(last, best bid, best ask) in ticks for a row."""
        rows = np.array([row], dtype=np.int64)
        snap = self.state.snapshot(rows)
        book = self.state.depth(rows, snap.last)
        return int(snap.last[0]), int(book["bid_price"][0, 0]), int(book["ask_price"][0, 0])

    def _new_id(self) -> str:
        day = ist_string(self._now())[2:10].replace("-", "")
        return f"{day}{next(self._ids):09d}"

    def _record(self, order: Order, status: str, message: str | None = None) -> None:
        now = ist_string(self._now())
        order.data["status"] = status
        order.data["status_message"] = message
        order.data["status_message_raw"] = message
        order.data["exchange_update_timestamp"] = now
        if status not in ("PUT ORDER REQ RECEIVED", "VALIDATION PENDING", "AMO REQ RECEIVED"):
            order.data["exchange_timestamp"] = order.data["exchange_timestamp"] or now
            order.data["exchange_order_id"] = order.data["exchange_order_id"] or (
                f"1{order.data['order_id'][-15:]}"
            )
        order.history.append(dict(order.data))
        if status in NOTIFIED and self.notify is not None:
            self.notify(order.api_key, self.postback(order))

    def postback(self, order: Order) -> dict[str, Any]:
        """The postback / WebSocket order-update payload of an order."""
        account = self.accounts.get(order.api_key)
        secret = account.api_secret if account else ""
        payload = dict(order.data)
        payload.pop("tags", None)
        checksum = hashlib.sha256(
            f"{payload['order_id']}{payload['order_timestamp']}{secret}".encode()
        ).hexdigest()
        payload = {
            "user_id": payload["placed_by"],
            "unfilled_quantity": payload["pending_quantity"],
            "app_id": int(hashlib.sha256(order.api_key.encode()).hexdigest()[:5], 16),
            "checksum": checksum,
            **payload,
        }
        return payload

    # ----------------------------------------------------------------- API

    def place(self, api_key: str, variety: str, form: Mapping[str, str]) -> str:
        """Validate and place an order; return its id.

        Raises:
            OrderError: Validation failed (InputException) or the order cannot be placed.
        """
        universe = self.state.model.universe
        exchange, symbol = form.get("exchange", ""), form.get("tradingsymbol", "")
        try:
            row = universe.index_of_symbol(exchange, symbol)
        except UnknownInstrument:
            raise OrderError("InputException", "Invalid `tradingsymbol`.") from None
        last, _bid, _ask = self._touch(row)
        close = int(self.state.state.close[row])
        request = validate_new(
            universe, row, variety, form, last, close, self.band_pct, self._market_open()
        )
        order = self._create(api_key, row, variety, request)
        self._record(order, "PUT ORDER REQ RECEIVED")
        self._record(order, "VALIDATION PENDING")
        reason = self._rms_reject(order)
        if reason is not None:
            self._record(order, "REJECTED", reason)
            return str(order.data["order_id"])
        if variety == "amo" and not self._market_open():
            self._record(order, "AMO REQ RECEIVED")
            self._working.setdefault(row, []).append(order.data["order_id"])
            return str(order.data["order_id"])
        self._activate(order)
        return str(order.data["order_id"])

    def modify(self, api_key: str, variety: str, order_id: str, form: Mapping[str, str]) -> str:
        """Modify an open order; return its id.

        Raises:
            OrderError: Unknown order, order not open, too many modifications, bad values.
        """
        order = self._own(api_key, order_id)
        if order.status in TERMINAL:
            raise OrderError(
                "OrderException",
                f"Order cannot be modified as it is in {order.status.lower()} state.",
            )
        if order.modifications >= MAX_MODIFICATIONS:
            raise OrderError("OrderException", "Maximum allowed order modifications exceeded.")
        last, _bid, _ask = self._touch(order.row)
        close = int(self.state.state.close[order.row])
        changes = validate_modify(
            self.state.model.universe, order.row, order.data, form, last, close, self.band_pct
        )
        order.modifications += 1
        previous = order.status
        self._record(order, "MODIFY VALIDATION PENDING")
        self._record(order, "MODIFY PENDING")
        order.data.update(changes)
        order.data["pending_quantity"] = order.data["quantity"] - order.data["filled_quantity"]
        order.data["modified"] = True
        self._record(order, previous if previous != "OPEN PENDING" else "OPEN")
        self._try_fill(order, None)
        return order_id

    def cancel(self, api_key: str, variety: str, order_id: str) -> str:
        """Cancel an open order; return its id.

        Raises:
            OrderError: Unknown order or order already complete/cancelled/rejected.
        """
        order = self._own(api_key, order_id)
        if order.status in TERMINAL:
            raise OrderError(
                "OrderException",
                f"Order cannot be cancelled as it is in {order.status.lower()} state.",
            )
        self._record(order, "CANCEL PENDING")
        self._close(order, "CANCELLED")
        return order_id

    def for_account(self, api_key: str) -> list[dict[str, Any]]:
        """Orders of an account (current state), oldest first."""
        return [dict(o.data) for o in self.orders.values() if o.api_key == api_key]

    def history(self, api_key: str, order_id: str) -> list[dict[str, Any]]:
        """Every recorded state of an order, oldest first.

        Raises:
            OrderError: Unknown order.
        """
        return [dict(h) for h in self._own(api_key, order_id).history]

    def everything(self) -> dict[str, list[dict[str, Any]]]:
        """Every account's orders with their history (control API)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for order in self.orders.values():
            out.setdefault(order.api_key, []).append({**order.data, "history": order.history})
        return out

    # ----------------------------------------------------------------- risk checks

    def reject_next(self, count: int, api_key: str | None, message: str) -> None:
        """Make the RMS reject the next ``count`` placements (control API fault)."""
        self.forced_rejects.append([count, api_key, message])

    def available(self, api_key: str) -> float:
        """Cash not blocked by today's fills."""
        return self.opening_balance - self.used.get(api_key, 0.0)

    def _rms_reject(self, order: Order) -> str | None:
        for entry in self.forced_rejects:
            count, api_key, message = entry
            if api_key in (None, order.api_key):
                entry[0] = count - 1
                if entry[0] <= 0:
                    self.forced_rejects.remove(entry)
                return str(message)
        last, bid, ask = self._touch(order.row)
        limit = round(float(order.data["price"]) * TICKS_PER_RUPEE)
        reference = limit or (ask if order.data["transaction_type"] == "BUY" else (bid or last))
        required = required_margin(self.state.model.universe, order.row, order.data, reference)
        available = self.available(order.api_key)
        if required > available:
            return (
                f"Insufficient funds. Required margin is {required:.2f} but available margin "
                f"is {available:.2f}."
            )
        return None

    # ----------------------------------------------------------------- lifecycle

    def _market_open(self) -> bool:
        clock = self.state.model.clock
        minute = self.state.slot // self.state.slots
        return bool(clock.in_session(np.array([minute]))[0])

    def _own(self, api_key: str, order_id: str) -> Order:
        order = self.orders.get(order_id)
        if order is None or order.api_key != api_key:
            raise OrderError("OrderException", "Couldn't find that `order_id`.", status=404)
        return order

    def _create(self, api_key: str, row: int, variety: str, request: Request) -> Order:
        universe = self.state.model.universe
        account = self.accounts[api_key]
        order_id = self._new_id()
        data: dict[str, Any] = {
            "placed_by": account.user_id,
            "order_id": order_id,
            "exchange_order_id": None,
            "parent_order_id": None,
            "status": "PUT ORDER REQ RECEIVED",
            "status_message": None,
            "status_message_raw": None,
            "order_timestamp": ist_string(self._now()),
            "exchange_update_timestamp": None,
            "exchange_timestamp": None,
            "variety": variety,
            "modified": False,
            "exchange": universe.exchange_of(row),
            "tradingsymbol": universe.tradingsymbol[row],
            "instrument_token": universe.int_at("token", row),
            "order_type": request.order_type,
            "transaction_type": request.transaction_type,
            "validity": request.validity,
            "validity_ttl": request.validity_ttl,
            "product": request.product,
            "quantity": request.quantity,
            "disclosed_quantity": request.disclosed_quantity,
            "price": request.price,
            "trigger_price": request.trigger_price,
            "average_price": 0,
            "filled_quantity": 0,
            "pending_quantity": request.quantity,
            "cancelled_quantity": 0,
            "market_protection": request.market_protection,
            "meta": {},
            "tag": request.tag,
            "tags": [request.tag] if request.tag else [],
            "guid": f"{order_id[-6:]}X{uuid.uuid4().hex[:15]}",
        }
        order = Order(api_key, row, data)
        self.orders[order_id] = order
        return order

    def _activate(self, order: Order) -> None:
        """Move a validated order to the exchange: OPEN / TRIGGER PENDING, then try to fill."""
        self._record(order, "OPEN PENDING")
        if order.data["order_type"] in ("SL", "SL-M"):
            self._record(order, "TRIGGER PENDING")
        else:
            self._record(order, "OPEN")
        self._working.setdefault(order.row, []).append(order.data["order_id"])
        self.state.ensure(np.array([order.row], dtype=np.int64))
        self._try_fill(order, None)
        if order.status == "OPEN" and order.data["validity"] == "IOC":
            self._close(order, "CANCELLED")

    def _close(self, order: Order, status: str) -> None:
        if status == "CANCELLED":
            order.data["cancelled_quantity"] = order.data["pending_quantity"]
            order.data["pending_quantity"] = 0
        self._record(order, status)
        working = self._working.get(order.row, [])
        if order.data["order_id"] in working:
            working.remove(order.data["order_id"])

    def _try_fill(self, order: Order, trade_price: int | None) -> None:
        """Fill or trigger ``order`` at the touch (``trade_price`` None) or on a trade."""
        data = order.data
        buy = data["transaction_type"] == "BUY"
        last, bid, ask = self._touch(order.row)
        if order.status == "TRIGGER PENDING":
            reference = last if trade_price is None else trade_price
            trigger = round(float(data["trigger_price"]) * TICKS_PER_RUPEE)
            if (buy and reference < trigger) or (not buy and reference > trigger):
                return
            if data["order_type"] == "SL-M":
                self._fill(order, ask if buy else (bid or last))
                return
            self._record(order, "OPEN")
        if order.status != "OPEN":
            return
        if data["order_type"] in ("MARKET", "SL-M"):
            self._fill(order, ask if buy else (bid or last))
            return
        limit = round(float(data["price"]) * TICKS_PER_RUPEE)
        if trade_price is None:
            if buy and ask <= limit:
                self._fill(order, ask)
            elif not buy and bid and bid >= limit:
                self._fill(order, bid)
        elif (buy and trade_price <= limit) or (not buy and trade_price >= limit):
            self._fill(order, limit)

    def _fill(self, order: Order, price_ticks: int) -> None:
        data = order.data
        blocked = required_margin(self.state.model.universe, order.row, data, price_ticks)
        quantity = int(data["pending_quantity"])
        price = price_ticks / TICKS_PER_RUPEE
        now = self._now()
        data["filled_quantity"] = int(data["filled_quantity"]) + quantity
        data["pending_quantity"] = 0
        data["average_price"] = price
        trade_id = f"{next(self._trade_ids) + 10_000_000}"
        fill = Fill(
            trade_id=trade_id,
            order_id=data["order_id"],
            exchange_order_id=data["exchange_order_id"],
            api_key=order.api_key,
            row=order.row,
            exchange=data["exchange"],
            tradingsymbol=data["tradingsymbol"],
            instrument_token=data["instrument_token"],
            product=data["product"],
            transaction_type=data["transaction_type"],
            quantity=quantity,
            price=price,
            epoch=now,
        )
        self.portfolio.add(fill)
        self.used[order.api_key] = self.used.get(order.api_key, 0.0) + blocked
        self._close(order, "COMPLETE")

    def on_slot(self, trades: SlotTrades) -> None:
        """Check working orders against the trades of a slot (and release due AMOs)."""
        if not any(self._working.values()):
            return
        self.state.ensure(np.fromiter(self._working, dtype=np.int64))
        if self._market_open():
            for ids in list(self._working.values()):
                for order_id in list(ids):
                    order = self.orders[order_id]
                    if order.status == "AMO REQ RECEIVED":
                        ids.remove(order_id)
                        self._activate(order)
        hit = {
            int(r): int(p) for r, p in zip(trades.rows.tolist(), trades.price.tolist(), strict=True)
        }
        for row, ids in list(self._working.items()):
            price = hit.get(row)
            if price is None:
                continue
            for order_id in list(ids):
                order = self.orders[order_id]
                if order.status in ("OPEN", "TRIGGER PENDING"):
                    self._try_fill(order, price)
