"""Configuration of the Kite simulator: accounts, rate limits, market and stream knobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

DEFAULT_API_KEY: Final = "sim_api_key"
DEFAULT_ACCESS_TOKEN: Final = "sim_access_token"  # noqa: S105  (simulator default)


class ConfigurationError(ValueError):
    """A simulator option is invalid."""


@dataclass(frozen=True, slots=True)
class Account:
    """One broker account (one Kite Connect app) known to the simulator.

    Attributes:
        api_key: The app's api_key.
        access_token: The access token the simulator accepts (and hands out at login).
        api_secret: The app's secret, used for the login checksum and postback checksums.
        user_id: Kite user id reported in the profile and on orders.
    """

    api_key: str
    access_token: str
    api_secret: str
    user_id: str

    @classmethod
    def parse(cls, spec: str, number: int = 1) -> Account:
        """Build an account from ``KEY:TOKEN`` or ``KEY:TOKEN:SECRET``.

        Args:
            spec: The account specification.
            number: Position of the account on the command line (gives a distinct user id).

        Returns:
            The account; the secret defaults to ``secret-KEY``.

        Raises:
            ConfigurationError: The specification is malformed.
        """
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise ConfigurationError(f"account must be KEY:TOKEN or KEY:TOKEN:SECRET, got {spec!r}")
        secret = parts[2] if len(parts) == 3 else f"secret-{parts[0]}"
        return cls(parts[0], parts[1], secret, f"SM{number:04d}")


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Per-api_key REST limits enforced over a sliding one-second window.

    Attributes:
        quote_per_s: ``/quote``, ``/quote/ltp``, ``/quote/ohlc``.
        historical_per_s: ``/instruments/historical/...``.
        orders_per_s: Order placement, modification and cancellation.
        orders_per_min: Order placements per sliding minute.
        orders_per_day: Order placements per IST day.
        general_per_s: Every other route.
    """

    quote_per_s: float = 1.0
    historical_per_s: float = 3.0
    orders_per_s: float = 10.0
    orders_per_min: int = 400
    orders_per_day: int = 5000
    general_per_s: float = 10.0

    def per_second(self, route_class: str) -> float:
        """The per-second limit of a route class (``quote``/``historical``/``orders``/...)."""
        return {
            "quote": self.quote_per_s,
            "historical": self.historical_per_s,
            "orders": self.orders_per_s,
        }.get(route_class, self.general_per_s)


def _default_accounts() -> tuple[Account, ...]:
    return (Account(DEFAULT_API_KEY, DEFAULT_ACCESS_TOKEN, f"secret-{DEFAULT_API_KEY}", "SM0001"),)


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Everything that shapes one simulator run.

    Attributes:
        host: Interface to bind.
        rest_port: REST port (0 picks a free one).
        ws_port: Ticker port; ``None`` serves the ticker on the REST port, 0 picks a free one.
        seed: Seed of the market model; the same seed, start date and universe size give the
            same instruments and the same trade path.
        accounts: Accounts (api_key, access_token, api_secret).
        ticks_per_second: Trade-path slots per second, i.e. the most ticks one instrument can
            produce per second (60 x this must be a whole number between 1 and 600).
        universe_size: Minimum number of instruments to list.
        follow_calendar: Trade only 09:15-15:30 IST on weekdays (else every minute trades).
        every_slot: Send every subscribed instrument in every slot, traded or not (a quote
            refresh, as Kite sends on order-book changes): a connection then streams
            ``subscriptions x ticks_per_second`` ticks per second (load tests).
        rate_limits: REST rate limits.
        max_tokens_per_connection: Subscription cap of one ticker connection.
        max_connections_per_key: Concurrent ticker connections per api_key.
        heartbeat_interval_s: Idle time after which a 1-byte heartbeat is sent.
        snapshot_on_subscribe: Send the current state of newly subscribed tokens at once.
        mode_subscribes: ``mode`` for an unsubscribed token subscribes it.
        price_band_pct: Allowed LIMIT price band around the previous close (EQ and FUT).
        send_queue_frames: Frames buffered per connection before new frames are dropped.
        max_catch_up_slots: Slots the streamer replays after a stall before skipping ahead.
        opening_balance: Cash of every account (margins).
    """

    host: str = "127.0.0.1"
    rest_port: int = 0
    ws_port: int | None = None
    seed: int = 1
    accounts: tuple[Account, ...] = field(default_factory=_default_accounts)
    ticks_per_second: float = 1.0
    universe_size: int = 2000
    follow_calendar: bool = False
    every_slot: bool = False
    rate_limits: RateLimits = field(default_factory=RateLimits)
    max_tokens_per_connection: int = 3000
    max_connections_per_key: int = 3
    heartbeat_interval_s: float = 1.0
    snapshot_on_subscribe: bool = True
    mode_subscribes: bool = True
    price_band_pct: float = 20.0
    send_queue_frames: int = 600
    max_catch_up_slots: int = 120
    opening_balance: float = 1_000_000.0

    def __post_init__(self) -> None:
        slots = self.ticks_per_second * 60.0
        if not 1 <= round(slots) <= 600 or abs(slots - round(slots)) > 1e-9:
            raise ConfigurationError(
                "ticks_per_second x 60 must be a whole number between 1 and 600 "
                f"(got {self.ticks_per_second})"
            )
        if self.universe_size < 1 or self.universe_size > 200_000:
            raise ConfigurationError("universe_size must be between 1 and 200000")
        if not self.accounts:
            raise ConfigurationError("at least one account is required")
        keys = [a.api_key for a in self.accounts]
        if len(set(keys)) != len(keys):
            raise ConfigurationError("api_keys must be distinct")
        if self.heartbeat_interval_s <= 0:
            raise ConfigurationError("heartbeat_interval_s must be positive")

    @property
    def slots_per_minute(self) -> int:
        """Trade-path slots per minute (``60 x ticks_per_second``)."""
        return round(self.ticks_per_second * 60.0)

    @property
    def shared_port(self) -> bool:
        """Whether REST and the ticker share one port."""
        return self.ws_port is None
