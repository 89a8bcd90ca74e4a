"""Subscription planning: which token goes on which account and ticker connection (pure).

:func:`plan_subscriptions` turns the desired set ``{instrument_token: mode}`` into a
:class:`Plan` ``{(account_id, connection_index): {instrument_token: mode}}``; the streamer
applies ``plan.diff(previous)`` as ``subscribe`` / ``unsubscribe`` / ``mode`` messages. No I/O.

Choices:

* **Capacity.** A connection holds at most ``tokens_per_connection`` tokens *including* its
  canaries; an account opens at most ``max_connections`` connections (Kite: 3000 and 3).
* **Canaries.** Every connection carries every canary token (normally one index token such as
  NIFTY 50, 256265), so the streamer's watchdog sees each socket tick. Canaries are the only
  tokens allowed on several connections; each costs one slot per connection. Their mode is
  ``ltp`` (the smallest packet: a canary only proves the socket is alive) unless the token is
  also desired, in which case its desired mode applies on every connection.
* **Minimal churn.** A token of the previous plan stays on its connection while that
  connection still exists (its account is still given and its index is within
  ``max_connections``); if a connection's capacity shrank, its tokens beyond the new room move
  (the last ones in the previous plan's order). Only new and displaced tokens are placed: into
  already-open connections first, always the one with the most free room (water-filling), and
  only when every open connection is full into a new one — on the account with the fewest open
  connections (spreading accounts across streamers), its lowest free index.
* **Unplaced.** Tokens that do not fit anywhere are returned in :attr:`Plan.unplaced` (the
  highest tokens, deterministically), never dropped silently.
* **Determinism.** The same inputs give the same plan: accounts are taken in ``account_id``
  order, new tokens in ascending token order, ties by connection key.
* **Modes.** A mode change of a placed token is a ``mode`` message, never unsubscribe +
  subscribe. Where several subscriptions want one token, the richest mode wins
  (``full`` > ``quote`` > ``ltp``; see :func:`merge_mode`).
* **Connections.** A connection exists in the plan when it carries a non-canary token (or a
  desired canary needs one connection); an emptied connection disappears and its diff
  unsubscribes everything, which the streamer may carry out by closing the socket.

Cost is O(n) dictionary work in the number of tokens plus O(c log c) in the number of
connections: 27,000 tokens plan in a few milliseconds.

Option-chain subscriptions (underlying + expiry + strikes around ATM) follow the market:

* :func:`expand_chain` gives the ATM strike and ``strikes_around_atm`` strikes on each side,
  calls and puts, plus the chain's future (same expiry, else the nearest later one).
* :func:`recenter` moves the ATM only once the price is more than ``hysteresis_strikes``
  strikes beyond the midpoint between the current ATM and its neighbour (0.5 by default: the
  price must be a whole strike away), so a price oscillating around a midpoint never flaps the
  subscriptions. The new ATM is the listed strike nearest the price.
* :func:`roll_expiry`: once the expiry is past (``today > expiry``; the expiry day itself still
  trades), the underlying's next listed option expiry on or after ``today``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ticker_tasks.errors import ValidationError
from ticker_tasks.market.registry import InstrumentTable

#: Ticker modes, poorest first.
MODES: tuple[str, ...] = ("ltp", "quote", "full")
#: Mode of a canary token that no subscription asks for.
CANARY_MODE = "ltp"

ConnectionKey = tuple[str, int]
"""``(account_id, connection_index)`` of one ticker connection."""


def check_mode(mode: str) -> str:
    """Return ``mode`` when it is a ticker mode; raise :class:`ValidationError` otherwise."""
    if mode not in MODES:
        raise ValidationError(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}")
    return mode


def merge_mode(a: str | None, b: str) -> str:
    """The richer of two modes (``full`` > ``quote`` > ``ltp``); ``a`` may be None."""
    if a is None:
        return b
    return a if MODES.index(a) >= MODES.index(b) else b


@dataclass(frozen=True)
class AccountCapacity:
    """One account the planner may use, with its ticker limits (Kite's caps by default).

    Attributes:
        account_id: The account.
        max_connections: Ticker connections the account may open.
        tokens_per_connection: Tokens one connection may carry, canaries included.
    """

    account_id: str
    max_connections: int = 3
    tokens_per_connection: int = 3000

    def __post_init__(self) -> None:
        if self.max_connections < 0 or self.tokens_per_connection < 0:
            raise ValidationError(f"negative capacity for account {self.account_id!r}")


@dataclass(frozen=True)
class ConnectionDiff:
    """Messages that turn one connection's previous subscriptions into the planned ones.

    Attributes:
        subscribe: Tokens to subscribe, with the mode to set right after.
        unsubscribe: Tokens to unsubscribe.
        mode_changes: Tokens that stay subscribed but change mode.
    """

    subscribe: Mapping[int, str] = field(default_factory=dict)
    unsubscribe: frozenset[int] = frozenset()
    mode_changes: Mapping[int, str] = field(default_factory=dict)

    def is_empty(self) -> bool:
        """Whether nothing has to be sent."""
        return not (self.subscribe or self.unsubscribe or self.mode_changes)


@dataclass(frozen=True)
class Plan:
    """Where every desired token is subscribed.

    Attributes:
        connections: ``{(account_id, connection_index): {instrument_token: mode}}``, canaries
            included; sorted by key.
        unplaced: Desired tokens that fit nowhere, with their modes.
        canaries: The canary tokens present on every connection.
    """

    connections: Mapping[ConnectionKey, Mapping[int, str]]
    unplaced: Mapping[int, str] = field(default_factory=dict)
    canaries: tuple[int, ...] = ()

    def diff(self, previous: Plan | None) -> dict[ConnectionKey, ConnectionDiff]:
        """What to send, per connection, to go from ``previous`` to this plan.

        Connections without changes are left out; a connection gone from this plan gets an
        unsubscribe of everything it had.
        """
        before = previous.connections if previous is not None else {}
        diffs: dict[ConnectionKey, ConnectionDiff] = {}
        for key in sorted(set(before) | set(self.connections)):
            old = before.get(key, {})
            new = self.connections.get(key, {})
            change = ConnectionDiff(
                subscribe={t: m for t, m in new.items() if t not in old},
                unsubscribe=frozenset(t for t in old if t not in new),
                mode_changes={t: m for t, m in new.items() if t in old and old[t] != m},
            )
            if not change.is_empty():
                diffs[key] = change
        return diffs

    def for_account(self, account_id: str) -> dict[int, Mapping[int, str]]:
        """``{connection_index: {instrument_token: mode}}`` of one account."""
        return {i: tokens for (a, i), tokens in self.connections.items() if a == account_id}

    def placed(self) -> dict[int, ConnectionKey]:
        """The connection of every placed non-canary token."""
        canaries = set(self.canaries)
        return {
            token: key
            for key, tokens in self.connections.items()
            for token in tokens
            if token not in canaries
        }

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly form (e.g. to keep the last plan in Redis); see :meth:`from_json`."""
        return {
            "connections": [
                [account, index, {str(t): m for t, m in tokens.items()}]
                for (account, index), tokens in self.connections.items()
            ],
            "unplaced": {str(t): m for t, m in self.unplaced.items()},
            "canaries": list(self.canaries),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        """The plan :meth:`to_json` described."""
        connections = {
            (str(account), int(index)): {int(t): str(m) for t, m in tokens.items()}
            for account, index, tokens in data.get("connections", [])
        }
        return _frozen_plan(
            connections,
            {int(t): str(m) for t, m in data.get("unplaced", {}).items()},
            tuple(int(t) for t in data.get("canaries", [])),
        )


def _frozen_plan(
    connections: Mapping[ConnectionKey, Mapping[int, str]],
    unplaced: Mapping[int, str],
    canaries: tuple[int, ...],
) -> Plan:
    return Plan(
        connections=MappingProxyType(
            {key: MappingProxyType(dict(connections[key])) for key in sorted(connections)}
        ),
        unplaced=MappingProxyType(dict(sorted(unplaced.items()))),
        canaries=canaries,
    )


def water_fill(rooms: Sequence[int], n: int) -> list[int]:
    """How many of ``n`` tokens each connection takes, one at a time into the emptiest.

    Equivalent to giving each token to the connection with the most free room (ties: lowest
    position) but computed in O(c log c). Never exceeds a room; the total is ``min(n,
    sum(rooms))``.
    """
    rooms = [max(0, r) for r in rooms]
    if n >= sum(rooms):
        return list(rooms)
    if n <= 0:
        return [0] * len(rooms)

    def taken(level: int) -> int:
        return sum(r - level for r in rooms if r > level)

    # The lowest level L with taken(L) <= n: everything above L is filled.
    lo, hi = 0, max(rooms)
    while lo < hi:
        mid = (lo + hi) // 2
        if taken(mid) <= n:
            hi = mid
        else:
            lo = mid + 1
    level = lo
    counts = [max(0, r - level) for r in rooms]
    left = n - sum(counts)
    for i, room in enumerate(rooms):
        if left == 0:
            break
        if room >= level > 0:
            counts[i] += 1
            left -= 1
    return counts


def plan_subscriptions(
    desired: Mapping[int, str],
    accounts: Iterable[AccountCapacity],
    *,
    canaries: Sequence[int] = (),
    previous: Plan | None = None,
    canary_mode: str = CANARY_MODE,
) -> Plan:
    """Assign ``desired`` tokens to accounts and connections (see the module notes).

    Args:
        desired: ``{instrument_token: mode}`` wanted by the subscriptions.
        accounts: Accounts that may stream, with their capacities.
        canaries: Tokens subscribed on every connection, each costing a slot.
        previous: The plan in force; tokens stay where it put them when they can.
        canary_mode: Mode of canaries that no subscription asks for.

    Returns:
        The new plan; tokens that fit nowhere are in ``unplaced``.

    Raises:
        ValidationError: On an unknown mode or an account given twice.
    """
    check_mode(canary_mode)
    for mode in set(desired.values()):
        check_mode(mode)
    canary_tokens = tuple(dict.fromkeys(int(t) for t in canaries))
    canary_modes = {t: desired.get(t, canary_mode) for t in canary_tokens}
    wanted = {int(t): m for t, m in desired.items() if t not in canary_modes}

    by_id: dict[str, AccountCapacity] = {}
    for account in accounts:
        if account.account_id in by_id:
            raise ValidationError(f"account {account.account_id!r} given twice")
        by_id[account.account_id] = account
    ordered = [by_id[a] for a in sorted(by_id)]
    room_of = {a.account_id: max(0, a.tokens_per_connection - len(canary_tokens)) for a in ordered}

    def usable(key: ConnectionKey) -> bool:
        account = by_id.get(key[0])
        return account is not None and 0 <= key[1] < account.max_connections

    # 1. Keep what the previous plan placed, on connections that still exist.
    kept: dict[ConnectionKey, dict[int, str]] = {}
    seen: set[int] = set()
    if previous is not None:
        for key in sorted(previous.connections):
            if not usable(key):
                continue
            tokens: dict[int, str] = {}
            room = room_of[key[0]]
            for token in previous.connections[key]:
                if token in wanted and token not in seen and len(tokens) < room:
                    tokens[token] = wanted[token]
                    seen.add(token)
            kept[key] = tokens

    # 2. Place the rest: open connections first (most room first), then new ones.
    pending = sorted(t for t in wanted if t not in seen)
    open_keys = sorted(kept)
    counts = water_fill([room_of[k[0]] - len(kept[k]) for k in open_keys], len(pending))
    cursor = 0
    for key, count in zip(open_keys, counts, strict=True):
        kept[key].update((t, wanted[t]) for t in pending[cursor : cursor + count])
        cursor += count
    while cursor < len(pending):
        opened = _next_connection(ordered, kept, room_of)
        if opened is None:
            break
        chunk = pending[cursor : cursor + room_of[opened[0]]]
        kept[opened] = {t: wanted[t] for t in chunk}
        cursor += len(chunk)
    unplaced = {t: wanted[t] for t in pending[cursor:]}

    # 3. Canaries on every connection that carries something.
    connections = {key: tokens for key, tokens in kept.items() if tokens}
    if not connections and set(canary_modes) & set(desired):
        # Only desired canaries: one connection carries them (a previous one if any).
        fits = {a.account_id: int(a.tokens_per_connection >= len(canary_tokens)) for a in ordered}
        first = min(kept) if kept else _next_connection(ordered, {}, fits)
        if first is not None:
            connections[first] = {}
    for key in connections:
        connections[key] = {**canary_modes, **connections[key]}
    return _frozen_plan(connections, unplaced, canary_tokens)


def _next_connection(
    accounts: Sequence[AccountCapacity],
    used: Mapping[ConnectionKey, Mapping[int, str]],
    room_of: Mapping[str, int],
) -> ConnectionKey | None:
    """The connection to open next: on the account with fewest open ones, lowest free index."""
    best: tuple[int, int, ConnectionKey] | None = None
    for position, account in enumerate(accounts):
        if room_of[account.account_id] <= 0:
            continue
        indices = {i for (a, i) in used if a == account.account_id}
        free = [i for i in range(account.max_connections) if i not in indices]
        if not free:
            continue
        candidate = (len(indices), position, (account.account_id, free[0]))
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    return None if best is None else best[2]


# --- option chains around ATM ---------------------------------------------------------------
@dataclass(frozen=True)
class ChainSpec:
    """A subscription to an option chain around ATM.

    Attributes:
        underlying: Kite's ``name`` of the underlying (``NIFTY``).
        expiry: The options' expiry.
        strikes_around_atm: Strikes on each side of the ATM strike.
        mode: Ticker mode of every token of the chain.
    """

    underlying: str
    expiry: dt.date
    strikes_around_atm: int
    mode: str = "quote"


@dataclass(frozen=True)
class ChainExpansion:
    """What a chain subscription stands for now.

    Attributes:
        expiry: The expiry used (rolled when the subscription's one is past).
        atm_strike: The centre strike (keep it for the next call's hysteresis), None when the
            chain has no strike.
        tokens: ``{instrument_token: mode}`` of the options around ATM and the future.
    """

    expiry: dt.date
    atm_strike: float | None
    tokens: dict[int, str]


def recenter(
    current_atm_strike: float | None,
    price: float,
    strike_step: float,
    hysteresis_strikes: float,
) -> float:
    """The ATM strike to use: the current one unless the price moved far enough.

    The ATM moves when ``|price - current| > strike_step * (0.5 + hysteresis_strikes)``, i.e.
    past the midpoint to the next strike by more than the hysteresis; it then moves by whole
    strikes to the strike nearest the price. Without a current strike, the nearest one.
    """
    if strike_step <= 0 or hysteresis_strikes < 0:
        raise ValidationError("strike_step must be positive and hysteresis_strikes not negative")
    if current_atm_strike is None:
        return _round_half_away(price / strike_step) * strike_step
    distance = price - current_atm_strike
    if abs(distance) <= strike_step * (0.5 + hysteresis_strikes):
        return current_atm_strike
    return current_atm_strike + _round_half_away(distance / strike_step) * strike_step


def _round_half_away(x: float) -> int:
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def roll_expiry(
    table: InstrumentTable, underlying: str, expiry: dt.date, today: dt.date
) -> dt.date | None:
    """``expiry`` while it is not past; else the next listed expiry (None when there is none)."""
    if expiry >= today:
        return expiry
    return next((e for e in table.expiries(underlying) if e >= today), None)


def expand_chain(
    table: InstrumentTable,
    spec: ChainSpec,
    price: float | None,
    *,
    current_atm_strike: float | None = None,
    hysteresis_strikes: float = 0.5,
    today: dt.date | None = None,
) -> ChainExpansion:
    """Tokens of a chain subscription: rolled, re-centred with hysteresis, ATM ± N and future.

    Args:
        table: The instrument registry.
        spec: The subscription.
        price: The underlying's price; None keeps ``current_atm_strike`` (and gives nothing
            when there is none either).
        current_atm_strike: The centre used last time.
        hysteresis_strikes: See :func:`recenter`.
        today: The trading date for the roll; None disables rolling.
    """
    check_mode(spec.mode)
    expiry = spec.expiry
    if today is not None:
        expiry = roll_expiry(table, spec.underlying, spec.expiry, today) or spec.expiry
    chain = table.chain(spec.underlying, expiry)
    strikes = [float(s) for s in chain.strikes]
    if not strikes:
        return ChainExpansion(expiry, None, {})
    if current_atm_strike is not None:
        atm = _nearest(strikes, current_atm_strike)
        if price is not None:
            step = _step_towards(strikes, atm, price)
            if recenter(atm, price, step, hysteresis_strikes) != atm:
                atm = _nearest(strikes, price)
    elif price is not None:
        atm = _nearest(strikes, price)
    else:
        return ChainExpansion(expiry, None, {})
    around = chain.around_atm(atm, spec.strikes_around_atm)
    tokens = {int(t): spec.mode for t in around.tokens().tolist()}
    if chain.future_token is not None:
        tokens[chain.future_token] = spec.mode
    return ChainExpansion(expiry, atm, tokens)


def _nearest(strikes: Sequence[float], value: float) -> float:
    return min(strikes, key=lambda s: (abs(s - value), s))


def _step_towards(strikes: Sequence[float], atm: float, price: float) -> float:
    """Gap between ``atm`` and its neighbour on the price's side (the other side at an edge)."""
    i = strikes.index(atm)
    up = strikes[i + 1] - atm if i + 1 < len(strikes) else None
    down = atm - strikes[i - 1] if i > 0 else None
    preferred, other = (up, down) if price >= atm else (down, up)
    step = preferred if preferred is not None else other
    return step if step is not None else 1.0
