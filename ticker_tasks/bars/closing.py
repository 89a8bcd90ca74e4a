"""Pure rules of a closed bar: its volume, its feed-gap seconds and its quality flag."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from schemas.feed import Outage
from ticker_tasks.bars.aggregate import SOURCE_BITS
from ticker_tasks.market.calendar import IST

BAR_SECONDS: Final = 60
#: Pre-open starts at 09:00 IST; the first minute bar of the NSE session starts at 09:15.
PRE_OPEN: Final = dt.time(9, 0)
SESSION_OPEN: Final = dt.time(9, 15)


def bar_volume(
    volume_max: int, volume_min: int, minute: int, previous: tuple[int, int] | None
) -> int:
    """Volume traded in the minute, from cumulative day volumes.

    Args:
        volume_max: Largest cumulative volume seen in the minute (0: no volume data).
        volume_min: Smallest non-zero cumulative volume seen in the minute.
        minute: The bar's start, epoch seconds.
        previous: ``(minute, volume_max)`` of the instrument's latest earlier bar, if known.

    With an earlier bar of the same IST day the volume is the difference of the cumulative
    volumes. Without one, a bar from 09:00 to 09:15 IST (pre-open and the session's first
    minute) takes the whole cumulative volume, and any other bar the volume between its first
    and last tick (a lower bound; the completeness check replaces the minute if REST
    disagrees).
    """
    if volume_max <= 0:
        return 0
    day = dt.datetime.fromtimestamp(minute, tz=IST)
    if previous is not None:
        prev_minute, prev_volume = previous
        if dt.datetime.fromtimestamp(prev_minute, tz=IST).date() == day.date():
            return max(volume_max - prev_volume, 0)
    if PRE_OPEN <= day.time() <= SESSION_OPEN:
        return volume_max
    return max(volume_max - volume_min, 0)


@dataclass(frozen=True)
class OutageWindows:
    """Outage intervals per instrument token (from the ``ticker_tasks:feed:outages`` stream)."""

    by_token: dict[int, list[tuple[float, float]]]

    @classmethod
    def from_outages(cls, outages: Iterable[Outage]) -> OutageWindows:
        by_token: dict[int, list[tuple[float, float]]] = {}
        for outage in outages:
            for token in outage.tokens:
                by_token.setdefault(token, []).append((outage.start, outage.end))
        return cls(by_token)

    def gap_seconds(self, token: int, minute: int) -> int:
        """Seconds of ``[minute, minute + 60)`` during which ``token``'s feed was down."""
        windows = self.by_token.get(token)
        if not windows:
            return 0
        return round(_covered(windows, minute, minute + BAR_SECONDS))


def _covered(windows: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """Length of the union of ``windows`` clipped to ``[start, end)``."""
    clipped = sorted((max(a, start), min(b, end)) for a, b in windows if b > start and a < end)
    total, reach = 0.0, start
    for a, b in clipped:
        a = max(a, reach)
        if b > a:
            total += b - a
            reach = b
    return total


def quality(sources: int, gap_seconds: int) -> str:
    """The quality flag of a stream bar.

    ``mock`` when any mock tick contributed (never mixed with real data in production), else
    ``gap`` when the feed was down for part of the minute, else ``replayed`` when any tick came
    from a capture replay, else ``complete``. (``backfilled`` is set by the completeness
    check when it replaces a minute from REST.)
    """
    if sources & SOURCE_BITS["mock"]:
        return "mock"
    if gap_seconds > 0:
        return "gap"
    if sources & SOURCE_BITS["replay"]:
        return "replayed"
    return "complete"
