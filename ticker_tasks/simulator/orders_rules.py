"""Validation of order placement and modification, answered with Kite's exception types.

Parameter problems are ``InputException`` (HTTP 400): unknown instrument, a quantity that is
not a multiple of the lot size or above the freeze quantity, a price that is not a multiple of
the 0.05 tick or outside the allowed band, missing or unknown enumerations. Everything else
(order state, unknown order id) is an ``OrderException``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ticker_tasks.simulator.contracts import KIND_FUT, KIND_INDEX, KIND_OPT, TICK, TICKS_PER_RUPEE
from ticker_tasks.simulator.universe import Universe

VARIETIES: Final = frozenset({"regular", "amo", "co", "iceberg", "auction"})
ORDER_TYPES: Final = frozenset({"MARKET", "LIMIT", "SL", "SL-M"})
PRODUCTS: Final = frozenset({"CNC", "NRML", "MIS", "MTF", "CO"})
VALIDITIES: Final = frozenset({"DAY", "IOC", "TTL"})
TRANSACTION_TYPES: Final = frozenset({"BUY", "SELL"})
MAX_TAG_LENGTH: Final = 20


class OrderError(Exception):
    """An order request Kite refuses.

    Attributes:
        error_type: Kite's exception name (``InputException``, ``OrderException``, ...).
        message: Kite-style message.
        status: HTTP status of the error response.
    """

    def __init__(self, error_type: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class Request:
    """A validated placement."""

    transaction_type: str
    order_type: str
    product: str
    validity: str
    validity_ttl: int | None
    quantity: int
    disclosed_quantity: int
    price: float
    trigger_price: float
    market_protection: float
    tag: str | None


def _invalid(field: str) -> OrderError:
    return OrderError("InputException", f"Invalid `{field}`.")


def _choice(form: Mapping[str, str], name: str, allowed: frozenset[str], default: str = "") -> str:
    value = form.get(name, default).strip()
    if not value:
        raise OrderError("InputException", f"Missing `{name}`.")
    if value not in allowed:
        raise _invalid(name)
    return value


def _number(form: Mapping[str, str], name: str, default: float = 0.0) -> float:
    raw = form.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise _invalid(name) from None
    if not math.isfinite(value) or value < 0:
        raise _invalid(name)
    return value


def _integer(form: Mapping[str, str], name: str, default: int = 0) -> int:
    value = _number(form, name, float(default))
    if not value.is_integer():
        raise _invalid(name)
    return int(value)


def price_band(universe: Universe, row: int, close: int, band_pct: float) -> tuple[float, float]:
    """Allowed LIMIT price range (rupees): +-band around the previous close for cash and
    futures; for options from one tick to ``max(3 x close, close + 50)``."""
    reference = close / TICKS_PER_RUPEE
    if universe.int_at("kind", row) == KIND_OPT:
        return TICK, round(max(3.0 * reference, reference + 50.0), 2)
    lower = math.floor(reference * (1 - band_pct / 100.0) * TICKS_PER_RUPEE) / TICKS_PER_RUPEE
    upper = math.ceil(reference * (1 + band_pct / 100.0) * TICKS_PER_RUPEE) / TICKS_PER_RUPEE
    return max(lower, TICK), upper


def _check_price(value: float, name: str) -> None:
    ticks = value * TICKS_PER_RUPEE
    if abs(ticks - round(ticks)) > 1e-6:
        raise OrderError(
            "InputException",
            f"Tick size for this script is {TICK:.2f}. Kindly enter {name} in the multiple of "
            "tick size for this script",
        )


def _check_quantity(universe: Universe, row: int, quantity: int) -> None:
    lot = universe.int_at("lot", row)
    if quantity <= 0:
        raise _invalid("quantity")
    if quantity % lot:
        raise OrderError("InputException", f"Quantity should be a multiple of lot size ({lot}).")
    freeze = universe.int_at("freeze", row)
    if quantity > freeze:
        raise OrderError(
            "InputException",
            f"Quantity ({quantity}) exceeds the freeze limit of {freeze}. Slice the order.",
        )


def _check_prices(
    universe: Universe,
    row: int,
    order_type: str,
    price: float,
    trigger: float,
    close: int,
    band_pct: float,
) -> None:
    if order_type in ("LIMIT", "SL"):
        if price <= 0:
            raise OrderError("InputException", "Invalid `price`.")
        _check_price(price, "price")
        lower, upper = price_band(universe, row, close, band_pct)
        if not lower <= price <= upper:
            raise OrderError(
                "InputException",
                f"Price {price:g} is outside the allowed range of {lower:g} - {upper:g}.",
            )
    if order_type in ("SL", "SL-M"):
        if trigger <= 0:
            raise OrderError("InputException", "Invalid `trigger_price`.")
        _check_price(trigger, "trigger price")


def validate_new(
    universe: Universe,
    row: int,
    variety: str,
    form: Mapping[str, str],
    last: int,
    close: int,
    band_pct: float,
    market_open: bool,
) -> Request:
    """Validate a placement form.

    Raises:
        OrderError: An InputException describing the first problem.
    """
    del last
    if variety not in VARIETIES:
        raise _invalid("variety")
    if universe.int_at("kind", row) == KIND_INDEX:
        raise OrderError("InputException", "Instrument is not tradable (index).")
    if variety != "amo" and not market_open:
        raise OrderError(
            "InputException",
            "Markets are closed right now. Use GTT for placing long standing orders instead.",
        )
    transaction_type = _choice(form, "transaction_type", TRANSACTION_TYPES)
    order_type = _choice(form, "order_type", ORDER_TYPES)
    product = _choice(form, "product", PRODUCTS)
    validity = _choice(form, "validity", VALIDITIES, "DAY")
    quantity = _integer(form, "quantity")
    _check_quantity(universe, row, quantity)
    price = _number(form, "price") if order_type in ("LIMIT", "SL") else 0.0
    trigger = _number(form, "trigger_price") if order_type in ("SL", "SL-M") else 0.0
    _check_prices(universe, row, order_type, price, trigger, close, band_pct)
    tag = form.get("tag") or None
    if tag is not None and len(tag) > MAX_TAG_LENGTH:
        raise OrderError("InputException", "Tag length should not exceed 20 characters.")
    ttl = _integer(form, "validity_ttl") if validity == "TTL" else None
    return Request(
        transaction_type=transaction_type,
        order_type=order_type,
        product=product,
        validity=validity,
        validity_ttl=ttl,
        quantity=quantity,
        disclosed_quantity=_integer(form, "disclosed_quantity"),
        price=price,
        trigger_price=trigger,
        market_protection=_number(form, "market_protection"),
        tag=tag,
    )


def validate_modify(
    universe: Universe,
    row: int,
    current: Mapping[str, Any],
    form: Mapping[str, str],
    last: int,
    close: int,
    band_pct: float,
) -> dict[str, Any]:
    """Validate a modification form; return the changed order fields.

    Raises:
        OrderError: An InputException describing the first problem.
    """
    del last
    changes: dict[str, Any] = {}
    order_type = form.get("order_type") or str(current["order_type"])
    if order_type not in ORDER_TYPES:
        raise _invalid("order_type")
    changes["order_type"] = order_type
    if form.get("quantity"):
        quantity = _integer(form, "quantity")
        _check_quantity(universe, row, quantity)
        if quantity < int(current["filled_quantity"]):
            raise _invalid("quantity")
        changes["quantity"] = quantity
    if form.get("validity"):
        changes["validity"] = _choice(form, "validity", VALIDITIES)
    if form.get("disclosed_quantity"):
        changes["disclosed_quantity"] = _integer(form, "disclosed_quantity")
    price = _number(form, "price", float(current["price"]))
    trigger = _number(form, "trigger_price", float(current["trigger_price"]))
    if order_type in ("MARKET", "SL-M"):
        price = 0.0
    if order_type in ("MARKET", "LIMIT"):
        trigger = 0.0
    _check_prices(universe, row, order_type, price, trigger, close, band_pct)
    changes["price"] = price
    changes["trigger_price"] = trigger
    return changes


def required_margin(
    universe: Universe, row: int, order: Mapping[str, Any], price_ticks: int
) -> float:
    """Margin an order blocks at a price: the cash value for CNC and option buys, 20% of it for
    MIS cash, 15% of it for futures and 15% of the strike value for option sales."""
    quantity = int(order["pending_quantity"])
    value = quantity * price_ticks / TICKS_PER_RUPEE
    kind = universe.int_at("kind", row)
    if kind == KIND_FUT:
        return 0.15 * value
    if kind == KIND_OPT:
        if order["transaction_type"] == "BUY":
            return value
        return 0.15 * quantity * universe.float_at("strike", row)
    return value if order["product"] == "CNC" else 0.2 * value
