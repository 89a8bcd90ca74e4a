"""Per-api_key REST rate limits over sliding windows, and request statistics.

Every request is counted per (api_key, route class) in a sliding one-second window: a
request is refused (HTTP 429) when the window (the last 1.0 s) already holds as many
*accepted* requests as the limit allows. Order placements are also capped per sliding minute
and per IST day. The statistics keep, per api_key and route, the request timestamps, and per
api_key and route class the largest number of requests seen in any one-second window (all
arrivals, and accepted ones).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Final

from ticker_tasks.simulator.config import RateLimits

ROUTE_CLASSES: Final = ("quote", "historical", "orders", "general")
TIMESTAMPS_KEPT: Final = 10_000


def route_class(method: str, path: str) -> str:
    """Rate-limit class of a route (``quote``, ``historical``, ``orders`` or ``general``)."""
    if path.startswith("/quote"):
        return "quote"
    if path.startswith("/instruments/historical/"):
        return "historical"
    if path.startswith("/orders/") and method in ("POST", "PUT", "DELETE"):
        return "orders"
    return "general"


@dataclass(slots=True)
class _Window:
    """Timestamps (monotonic) of the last second, and the largest count seen."""

    times: deque[float] = field(default_factory=deque)
    peak: int = 0

    def push(self, now: float) -> int:
        self.trim(now, 1.0)
        self.times.append(now)
        self.peak = max(self.peak, len(self.times))
        return len(self.times)

    def trim(self, now: float, span: float) -> None:
        while self.times and self.times[0] <= now - span:
            self.times.popleft()


class RateLimiter:
    """Sliding-window limiter and request statistics.

    Args:
        limits: The limits.
    """

    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits
        self.reset()

    def reset(self) -> None:
        """Forget every window and statistic."""
        self._accepted: dict[tuple[str, str], _Window] = defaultdict(_Window)
        self._arrivals: dict[tuple[str, str], _Window] = defaultdict(_Window)
        self._minute: dict[str, deque[float]] = defaultdict(deque)
        self._day: dict[str, tuple[int, int]] = {}
        self._limited: Counter[tuple[str, str]] = Counter()
        self._requests: dict[tuple[str, str], deque[float]] = defaultdict(
            lambda: deque(maxlen=TIMESTAMPS_KEPT)
        )
        self._counts: Counter[tuple[str, str]] = Counter()
        self._statuses: Counter[tuple[str, str, int]] = Counter()

    def record(self, api_key: str, route: str, status: int, wall: float) -> None:
        """Count a finished request (any outcome) for the statistics."""
        self._requests[(api_key, route)].append(wall)
        self._counts[(api_key, route)] += 1
        self._statuses[(api_key, route, status)] += 1

    def admit(self, api_key: str, klass: str, placement: bool, now: float, day: int) -> bool:
        """Count an arrival; return False (and count a 429) when over a limit."""
        self._arrivals[(api_key, klass)].push(now)
        window = self._accepted[(api_key, klass)]
        window.trim(now, 1.0)
        allowed = len(window.times) + 1 <= self.limits.per_second(klass)
        if allowed and placement:
            allowed = self._admit_order(api_key, now, day)
        if not allowed:
            self._limited[(api_key, klass)] += 1
            return False
        window.push(now)
        return True

    def _admit_order(self, api_key: str, now: float, day: int) -> bool:
        minute = self._minute[api_key]
        while minute and minute[0] <= now - 60.0:
            minute.popleft()
        day_of_count, count = self._day.get(api_key, (day, 0))
        if day_of_count != day:
            count = 0
        if len(minute) >= self.limits.orders_per_min or count >= self.limits.orders_per_day:
            return False
        minute.append(now)
        self._day[api_key] = (day, count + 1)
        return True

    def stats(self) -> dict[str, Any]:
        """JSON-friendly statistics (see the simulator README)."""
        requests: dict[str, dict[str, Any]] = defaultdict(dict)
        for (api_key, route), times in self._requests.items():
            statuses = {
                str(status): n
                for (k, r, status), n in self._statuses.items()
                if (k, r) == (api_key, route)
            }
            requests[api_key][route] = {
                "count": self._counts[(api_key, route)],
                "statuses": statuses,
                "timestamps": list(times),
            }
        peaks: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
        for (api_key, klass), window in self._arrivals.items():
            accepted = self._accepted.get((api_key, klass))
            peaks[api_key][klass] = {
                "max_requests_in_1s": window.peak,
                "max_accepted_in_1s": accepted.peak if accepted else 0,
                "limit_per_s": int(self.limits.per_second(klass)),
            }
        limited: dict[str, dict[str, int]] = defaultdict(dict)
        for (api_key, klass), n in self._limited.items():
            limited[api_key][klass] = n
        return {
            "requests": dict(requests),
            "max_per_second": dict(peaks),
            "rate_limited": dict(limited),
            "orders_today": {k: v[1] for k, v in self._day.items()},
        }


def monotonic() -> float:
    """The limiter's clock."""
    return time.monotonic()
