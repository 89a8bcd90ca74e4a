"""Delivery counters of a streamer process, and their Prometheus export.

The streamer exports its live metrics itself (``prometheus_client``), not through Redis: during
a broker outage the Redis data store may be down too, and the drops are what must be seen.
Register a :class:`DeliveryCollector` on the process's own ``CollectorRegistry``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX: Final = "ticker_tasks_streamer_"

#: Help text of each counter (monotonic) of :class:`DeliveryStats`.
COUNTERS: Final = {
    "batches_sent": "Tick batches the broker accepted.",
    "frames_sent": "Frames in the tick batches the broker accepted.",
    "batches_journaled": "Tick batches moved to the on-disk journal.",
    "batches_dropped": "Tick batches dropped: memory buffer and journal full.",
    "frames_dropped": "Frames in the dropped tick batches.",
    "batches_failed": "Tick batches that could not be encoded or read back (dropped).",
    "outages": "Broker outages seen by the sender.",
}
#: Help text of each gauge (current value) of :class:`DeliveryStats`.
GAUGES: Final = {
    "broker_up": "1 while the broker takes batches, 0 during an outage.",
    "buffer_batches": "Tick batches waiting in memory.",
    "buffer_bytes": "Bytes of the tick batches waiting in memory.",
    "journal_batches": "Tick batches waiting in the on-disk journal.",
    "journal_bytes": "Disk used by the journal.",
}


@dataclass
class DeliveryStats:
    """Counters and gauges of one :class:`~workers.streamer.delivery.Delivery`."""

    batches_sent: int = 0
    frames_sent: int = 0
    batches_journaled: int = 0
    batches_dropped: int = 0
    frames_dropped: int = 0
    batches_failed: int = 0
    outages: int = 0
    broker_up: bool = True
    buffer_batches: int = 0
    buffer_bytes: int = 0
    journal_batches: int = 0
    journal_bytes: int = 0


class DeliveryCollector(Collector):
    """Exports the current :class:`DeliveryStats` at every scrape.

    Args:
        stats: Returns the current stats (e.g. ``lambda: delivery.stats``).
    """

    def __init__(self, stats: Callable[[], DeliveryStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        """One family per field of :class:`DeliveryStats`."""
        stats = self._stats()
        for field in fields(stats):
            value = float(getattr(stats, field.name))
            if field.name in COUNTERS:
                yield CounterMetricFamily(PREFIX + field.name, COUNTERS[field.name], value=value)
            else:
                yield GaugeMetricFamily(PREFIX + field.name, GAUGES[field.name], value=value)
