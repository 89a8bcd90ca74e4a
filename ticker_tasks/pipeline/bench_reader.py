"""An independent reader of the published tick stream for ``ticker-tasks bench pipeline``.

Every published row names one tick sent by the simulator by ``(connection, seq,
packet_index)``: the batch's connection and sequence number and the row's index in its decoded
batch. :class:`PublishedTally` counts rows by that tuple: a tuple seen again is a duplicate,
and ``offered - unique`` ticks were lost (rejected rows are not published, so they count as
lost too). :func:`count_published` applies it to whole messages (pure; unit-tested).

:class:`StreamReader` follows :data:`~ticker_tasks.pipeline.publish.STREAM_KEY` with
``XREAD BLOCK`` (a short timeout, so the read time is the publish time within a few
milliseconds), trims what it has read (``XTRIM MINID``, the stream is the bench's own) and
records each row's latency: read time minus the row's ``received_at`` (frame received by the
streamer). It parses only the few top-level fields it needs (:func:`parse_header`): a whole
message holds every column of every row, and decoding them all would cost the reader more CPU
than the pipeline under test spends publishing them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import redis

from ticker_tasks.pipeline.publish import STREAM_KEY

#: Messages taken per XREAD.
READ_COUNT: Final = 200
_DECODER: Final = json.JSONDecoder()
_FIELDS: Final = ("connection", "seq", "received_at", "packet_index")

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Header:
    """The fields of a published message the bench needs."""

    connection: str
    seq: int
    received_at: list[float]
    packet_index: list[int]


def parse_header(raw: bytes | str) -> Header:
    """Decode only ``connection``, ``seq``, ``received_at`` and ``packet_index`` of a message.

    Each field is found by its ``"name":`` prefix, which is unique in a message: no column is
    named like these fields and no value is a string holding one.

    Raises:
        ValueError: A field is missing or malformed.
    """
    text = raw.decode() if isinstance(raw, bytes) else raw
    values: dict[str, Any] = {}
    for name in _FIELDS:
        start = text.find(f'"{name}":')
        if start < 0:
            raise ValueError(f"published message without {name!r}")
        at = start + len(name) + 3
        while text[at : at + 1].isspace():
            at += 1
        values[name], _ = _DECODER.raw_decode(text, at)
    if len(values["received_at"]) != len(values["packet_index"]):
        raise ValueError("received_at and packet_index differ in length")
    return Header(
        connection=str(values["connection"]),
        seq=int(values["seq"]),
        received_at=values["received_at"],
        packet_index=values["packet_index"],
    )


@dataclass(frozen=True)
class Counts:
    """Published ticks against offered ones.

    Attributes:
        offered: Ticks the simulator sent.
        published: Rows read from the stream (duplicates included).
        unique: Distinct ``(connection, seq, packet_index)`` tuples.
        duplicated: Rows whose tuple was read before.
        lost: ``offered - unique`` (never below 0).
    """

    offered: int
    published: int
    unique: int
    duplicated: int
    lost: int


class PublishedTally:
    """Running count of published rows by ``(connection, seq, packet_index)``.

    Per batch it keeps one boolean array indexed by packet index (a few kB per batch), not a
    Python tuple per tick.
    """

    def __init__(self) -> None:
        self._batches: dict[tuple[str, int], npt.NDArray[np.bool_]] = {}
        self.published = 0
        self.duplicated = 0

    def add(self, connection: str, seq: int, packet_index: Iterable[int]) -> int:
        """Count one message's rows; returns how many of them were duplicates."""
        index = np.fromiter(packet_index, dtype=np.int64)
        if index.size and int(index.min()) < 0:
            raise ValueError("negative packet index")
        distinct = np.unique(index)
        repeated = int(index.size - distinct.size)
        key = (connection, int(seq))
        seen = self._batches.get(key)
        size = int(distinct[-1]) + 1 if distinct.size else 0
        if seen is None or seen.size < size:
            grown = np.zeros(max(size, 0 if seen is None else seen.size), dtype=np.bool_)
            if seen is not None:
                grown[: seen.size] = seen
            seen = grown
            self._batches[key] = seen
        repeated += int(np.count_nonzero(seen[distinct]))
        seen[distinct] = True
        self.published += int(index.size)
        self.duplicated += repeated
        return repeated

    @property
    def unique(self) -> int:
        """Distinct ticks counted."""
        return self.published - self.duplicated

    def counts(self, offered: int) -> Counts:
        """The counts against ``offered`` ticks."""
        return Counts(
            offered=offered,
            published=self.published,
            unique=self.unique,
            duplicated=self.duplicated,
            lost=max(offered - self.unique, 0),
        )


def count_published(messages: Iterable[Mapping[str, Any]], offered: int) -> Counts:
    """Count published messages (decoded JSON) against ``offered`` ticks (pure)."""
    tally = PublishedTally()
    for message in messages:
        tally.add(str(message["connection"]), int(message["seq"]), message["packet_index"])
    return tally.counts(offered)


def percentile_ms(latencies_s: FloatArray, q: float) -> float | None:
    """The ``q``-th percentile of latencies in seconds, in milliseconds (None when empty)."""
    if latencies_s.size == 0:
        return None
    return round(float(np.percentile(latencies_s, q)) * 1000.0, 1)


class StreamReader:
    """Follows the published tick stream from its start; counts rows and latencies.

    Args:
        client: Redis client on the bench's database.
        accounts: The bench's account ids: a message of another connection is counted in
            :attr:`foreign` only (someone else wrote to the database).
        window_start: Rows received before this epoch time count for loss and duplicates
            but not in :attr:`window_rows` nor in the latencies (warm-up); set it later with
            :meth:`start_window`.
    """

    def __init__(
        self, client: redis.Redis, accounts: Iterable[str], window_start: float = float("inf")
    ) -> None:
        self._client = client
        self._prefixes = tuple(f"{account}:" for account in accounts)
        self.foreign = 0
        self._last_id = "0-0"
        self.tally = PublishedTally()
        self.window_start = window_start
        self.window_rows = 0
        self.messages = 0
        self.last_read_at: float | None = None
        self._latencies: list[FloatArray] = []

    def start_window(self, at: float) -> None:
        """Count rows received from ``at`` on in the window (latency, throughput, CPU)."""
        self.window_start = at

    def poll(self, block_ms: int) -> int:
        """Read what was published (waiting up to ``block_ms``); the number of rows read.

        Raises:
            redis.RedisError: Redis is unreachable.
            ValueError: A message is not a tick message.
        """
        reply: list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] = self._client.xread(
            {STREAM_KEY: self._last_id}, count=READ_COUNT, block=block_ms
        )  # type: ignore[assignment]
        read_at = time.time()
        rows = 0
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                rows += self._count(fields[b"m"], read_at)
                self._last_id = entry_id.decode()
        if rows or reply:
            self.last_read_at = read_at
            self._client.xtrim(STREAM_KEY, minid=self._last_id)
        return rows

    def _count(self, raw: bytes, read_at: float) -> int:
        header = parse_header(raw)
        if not header.connection.startswith(self._prefixes):
            self.foreign += 1
            return 0
        self.tally.add(header.connection, header.seq, header.packet_index)
        received = np.asarray(header.received_at, dtype=np.float64)
        in_window = received[received >= self.window_start]
        if in_window.size:
            self._latencies.append(read_at - in_window)
            self.window_rows += int(in_window.size)
        self.messages += 1
        return int(received.size)

    def latencies_s(self) -> FloatArray:
        """Latency (read time minus receive time) of every row in the window, seconds."""
        if not self._latencies:
            return np.zeros(0, dtype=np.float64)
        return np.concatenate(self._latencies)
