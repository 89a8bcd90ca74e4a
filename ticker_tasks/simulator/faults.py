"""Injected REST faults: 429 and 5xx bursts, delayed order responses.

WebSocket faults (drop, silence, malformed frames) act on live connections and are applied by
:mod:`ticker_tasks.simulator.ws`; token expiry by :mod:`ticker_tasks.simulator.auth`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

REST_STATUSES: Final = {
    429: ("NetworkException", "Too many requests"),
    500: ("GeneralException", "Something went wrong. Please try again."),
    502: ("DataException", "Bad gateway: could not understand the OMS response."),
    503: ("NetworkException", "Service unavailable: could not reach the OMS."),
    504: ("NetworkException", "Gateway timed out."),
}


class FaultSpecError(ValueError):
    """A fault request is malformed."""


@dataclass(slots=True)
class RestFault:
    """The next ``remaining`` matching REST requests fail with ``status``.

    Attributes:
        status: 429 or a 5xx status.
        remaining: Requests still to fail.
        route_class: ``quote``/``historical``/``orders``/``general`` or None for every route.
        api_key: Only this api_key, or None for all.
        body: ``json`` (Kite envelope) or ``html`` (a gateway page: DataException client-side).
    """

    status: int
    remaining: int
    route_class: str | None = None
    api_key: str | None = None
    body: str = "json"

    def matches(self, api_key: str, klass: str) -> bool:
        """Whether the fault applies to a request."""
        return (self.route_class in (None, "all", klass)) and self.api_key in (None, api_key)


@dataclass(slots=True)
class OrderDelay:
    """The next ``remaining`` order placements are executed but answered after ``seconds``."""

    seconds: float
    remaining: int = 1
    api_key: str | None = None


class Faults:
    """Pending REST faults."""

    def __init__(self) -> None:
        self.rest: list[RestFault] = []
        self.order_delays: list[OrderDelay] = []

    def add_rest(self, spec: dict[str, Any]) -> RestFault:
        """Add a 429 / 5xx burst from a control-API body.

        Raises:
            FaultSpecError: Bad status, count, body or route class.
        """
        status = int(spec.get("status", 429))
        if status not in REST_STATUSES:
            raise FaultSpecError(f"status must be one of {sorted(REST_STATUSES)}")
        count = int(spec.get("count", 1))
        body = str(spec.get("body", "json"))
        klass = spec.get("route_class")
        if count < 1 or body not in ("json", "html"):
            raise FaultSpecError("count must be >= 1 and body json or html")
        if klass not in (None, "all", "quote", "historical", "orders", "general"):
            raise FaultSpecError("route_class must be quote, historical, orders, general or all")
        fault = RestFault(status, count, klass, spec.get("api_key"), body)
        self.rest.append(fault)
        return fault

    def add_order_delay(self, spec: dict[str, Any]) -> OrderDelay:
        """Delay the response of the next order placement(s)."""
        delay = OrderDelay(float(spec.get("seconds", 10.0)), int(spec.get("count", 1)),
                           spec.get("api_key"))  # fmt: skip
        if delay.seconds <= 0 or delay.remaining < 1:
            raise FaultSpecError("seconds must be > 0 and count >= 1")
        self.order_delays.append(delay)
        return delay

    def take_rest(self, api_key: str, klass: str) -> RestFault | None:
        """Consume one matching REST fault, if any."""
        for fault in self.rest:
            if fault.matches(api_key, klass):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.rest.remove(fault)
                return fault
        return None

    def take_order_delay(self, api_key: str) -> float | None:
        """Consume one order-response delay for ``api_key``, if any."""
        for delay in self.order_delays:
            if delay.api_key in (None, api_key):
                delay.remaining -= 1
                if delay.remaining <= 0:
                    self.order_delays.remove(delay)
                return delay.seconds
        return None

    def clear(self) -> None:
        """Drop every pending REST fault."""
        self.rest.clear()
        self.order_delays.clear()

    def describe(self) -> dict[str, Any]:
        """Pending faults as JSON."""
        return {
            "rest": [asdict(f) for f in self.rest],
            "order_delays": [asdict(d) for d in self.order_delays],
        }
