"""Metrics shared by every process, kept in Redis and exported for Prometheus.

Celery pool children come and go, so in-process counters would be lost with them: tasks add
to counters and set gauges in one Redis hash each (one round trip), and ``ticker-tasks
metrics`` serves them in the Prometheus text format. Long-running processes (the streamer)
export their own live metrics with ``prometheus_client`` directly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

COUNTERS_KEY = "ticker_tasks:metrics:counters"
GAUGES_KEY = "ticker_tasks:metrics:gauges"
PREFIX = "ticker_tasks_"


def _field(name: str, labels: Mapping[str, str]) -> str:
    encoded = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return f"{name}|{encoded}"


def _parse(field: str) -> tuple[str, dict[str, str]]:
    name, _, encoded = field.partition("|")
    labels = dict(pair.split("=", 1) for pair in encoded.split(",") if pair)
    return name, labels


class Metrics:
    """Counters and gauges in Redis, labelled like Prometheus metrics."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def incr(self, name: str, amount: int = 1, **labels: str) -> None:
        """Add ``amount`` to a counter."""
        self._client.hincrby(COUNTERS_KEY, _field(name, labels), amount)

    def set_gauge(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        self._client.hset(GAUGES_KEY, _field(name, labels), value)

    def counter(self, name: str, **labels: str) -> int:
        """The current value of a counter (0 when never counted)."""
        raw = self._client.hget(COUNTERS_KEY, _field(name, labels))
        return int(raw) if raw is not None else 0

    def gauge(self, name: str, **labels: str) -> float | None:
        """The current value of a gauge, or None."""
        raw = self._client.hget(GAUGES_KEY, _field(name, labels))
        return float(raw) if raw is not None else None


class RedisCollector(Collector):
    """A Prometheus collector reading the shared counters and gauges."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def collect(self) -> Iterator[Metric]:
        """Yield one family per metric name."""
        yield from self._families(COUNTERS_KEY, counter=True)
        yield from self._families(GAUGES_KEY, counter=False)

    def _families(self, key: str, *, counter: bool) -> Iterator[Metric]:
        raw: dict[bytes, bytes] = self._client.hgetall(key)  # type: ignore[assignment]
        grouped: dict[str, list[tuple[dict[str, str], float]]] = {}
        for field, raw_value in raw.items():
            name, labels = _parse(field.decode())
            grouped.setdefault(name, []).append((labels, float(raw_value)))
        for name, samples in sorted(grouped.items()):
            label_names = sorted({k for labels, _ in samples for k in labels})
            family: CounterMetricFamily | GaugeMetricFamily
            if counter:
                family = CounterMetricFamily(PREFIX + name, name, labels=label_names)
            else:
                family = GaugeMetricFamily(PREFIX + name, name, labels=label_names)
            for labels, value in samples:
                family.add_metric([labels.get(k, "") for k in label_names], value)
            yield family
