"""Tick batches to the ``ticks`` queue, in order, through broker outages.

:class:`Delivery` takes batches from the batchers (:meth:`Delivery.submit`, never blocks) and
one sender coroutine (:meth:`Delivery.run`) publishes them, oldest first, with one reused
producer (:class:`KombuSender`). While the broker cannot take them:

1. batches wait in memory (:class:`~workers.streamer.journal.BoundedBuffer`,
   ``TICKER_STREAMER_BUFFER_MAX_BYTES``);
2. when memory is full the **oldest** move to the on-disk
   :class:`~workers.streamer.journal.Journal` (``TICKER_STREAMER_JOURNAL_DIR``, bounded by
   ``TICKER_STREAMER_JOURNAL_MAX_BYTES``);
3. when the journal is full too, the **newest** batch is dropped: counted in
   :attr:`DeliveryStats.frames_dropped` / ``batches_dropped`` (exported as
   ``ticker_tasks_streamer_frames_dropped`` by :class:`~workers.streamer.stats.DeliveryCollector`)
   and logged (first drop of an outage, then at most every :data:`DROP_LOG_INTERVAL_S`).
   Consumers see the gap in ``seq``.

The journal always holds batches older than the memory buffer, so sending the journal first,
then the buffer, then new batches keeps every connection's batches in order. A reconnect
probe runs with exponential backoff and jitter from :data:`FIRST_BACKOFF_S` up to
``TICKER_STREAMER_RECONNECT_MAX_S``: an asyncio connect that sends ``PING`` (Redis) or the
protocol header (AMQP) and waits for any answer, so a dead or hung broker never blocks the
event loop during an outage. Every wait has a timeout (``asyncio.timeout``, never
``asyncio.wait_for``: see :mod:`workers.streamer.tasks`).

Publishing is synchronous, on the event loop, with a short socket timeout
(``TICKER_STREAMER_PUBLISH_TIMEOUT_S``): no thread. Measured here (Redis broker on localhost,
Celery 5.7, kombu 5.7): ~0.6 ms per publish of a 1-frame batch, ~0.9 ms for 200 frames of
400 bytes; batches of 200 full-mode frames of 3.7 KB (745 KB each) take ~6.6 ms, i.e.
~30,000 frames/s (110 MB/s) through Batcher and Delivery on one core, far above what the
connections of one streamer receive (Kite sends about one frame per connection per second).
A failed publish holds the loop at most the timeout (connection refused: ~10 ms; a broker
that accepts but never answers: the full timeout), and after it the loop publishes nothing
until the asynchronous probe succeeds. A publish that timed out may still have reached the
broker; it is sent again (at-least-once) and consumers count a batch once per
``(connection, seq)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import TYPE_CHECKING, Any, Final, Protocol

import msgpack  # type: ignore[import-untyped]

from schemas.ticks import TickBatch
from ticker_tasks.errors import PermanentError, ServiceUnavailable
from workers.streamer.journal import BoundedBuffer, Journal
from workers.streamer.sender import KombuSender, ProbeTarget
from workers.streamer.stats import DeliveryStats

if TYPE_CHECKING:
    from celery import Celery

    from ticker_tasks.settings import Settings

log = logging.getLogger(__name__)

FIRST_BACKOFF_S: Final = 0.1
DROP_LOG_INTERVAL_S: Final = 10.0
#: How long the idle sender waits for new work before looking again.
IDLE_WAIT_S: Final = 1.0
#: Bytes counted per batch besides its frames (times, ids, envelope).
BATCH_OVERHEAD: Final = 256


class Sender(Protocol):
    """Publishes one message; :class:`KombuSender` is the real one."""

    def publish(self, message: dict[str, Any]) -> None:
        """Send one ``process_batch`` message; ServiceUnavailable when the broker failed."""

    def probe_target(self) -> ProbeTarget | None:
        """Where the reconnect probe connects; None: no probe, the next publish tries."""

    def close(self) -> None:
        """Release the connection."""


def batch_size(batch: TickBatch) -> int:
    """Bytes a batch is accounted for in the memory buffer."""
    return batch.frame_bytes + 8 * len(batch.frames) + BATCH_OVERHEAD


def encode_record(batch: TickBatch) -> bytes:
    """A batch as a journal record: its message, msgpack (frames stay bytes)."""
    data: bytes = msgpack.packb(batch.to_message(), use_bin_type=True)
    return data


def decode_record(record: bytes) -> dict[str, Any]:
    """A journal record back to the task message."""
    message: dict[str, Any] = msgpack.unpackb(record, raw=False)
    return message


class Delivery:
    """Sends tick batches in order, buffering in memory then on disk while the broker is away.

    Args:
        sender: Publishes one message (one reused connection and producer).
        buffer: Memory buffer of batches not yet sent.
        journal: On-disk overflow of the buffer (opened: its records are sent first).
        reconnect_max_s: Longest wait between reconnect probes.
        probe_timeout_s: Timeout of one reconnect probe.
    """

    def __init__(
        self,
        sender: Sender,
        *,
        buffer: BoundedBuffer[TickBatch],
        journal: Journal,
        reconnect_max_s: float,
        probe_timeout_s: float,
    ) -> None:
        self._sender = sender
        self._buffer = buffer
        self._journal = journal
        self._reconnect_max_s = reconnect_max_s
        self._probe_timeout_s = probe_timeout_s
        self._stats = DeliveryStats()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._stop = asyncio.Event()
        self._down_since = 0.0
        self._last_drop_log = 0.0
        self._drops_logged = 0

    @classmethod
    def from_settings(cls, app: Celery, settings: Settings) -> Delivery:
        """The streamer's delivery: the app's broker, Settings' bounds and journal directory."""
        return cls(
            KombuSender(app, timeout_s=settings.streamer_publish_timeout_s),
            buffer=BoundedBuffer(settings.streamer_buffer_max_bytes),
            journal=Journal(
                settings.streamer_journal_dir, max_bytes=settings.streamer_journal_max_bytes
            ),
            reconnect_max_s=settings.streamer_reconnect_max_s,
            probe_timeout_s=settings.streamer_publish_timeout_s,
        )

    # ------------------------------------------------------------------ state

    @property
    def stats(self) -> DeliveryStats:
        """Counters, with the gauges refreshed."""
        self._stats.buffer_batches = len(self._buffer)
        self._stats.buffer_bytes = self._buffer.size_bytes
        self._stats.journal_batches = len(self._journal)
        self._stats.journal_bytes = self._journal.size_bytes
        return self._stats

    @property
    def pending(self) -> int:
        """Batches not sent yet (memory and journal)."""
        return len(self._buffer) + len(self._journal)

    # ------------------------------------------------------------------ intake

    def submit(self, batch: TickBatch) -> bool:
        """Queue a batch behind every earlier one; never blocks. False when it was dropped."""
        size = batch_size(batch)
        # Make room by moving the oldest batches to the journal (it holds only older ones).
        while not self._buffer.fits(size) and len(self._buffer):
            oldest = self._buffer.peek()
            assert oldest is not None
            # The size check first spares encoding a batch the full journal cannot take.
            full = self._journal.free_bytes < oldest.frame_bytes
            if full or not self._journal.append(encode_record(oldest)):
                self._drop(batch)  # the journal is full too: the newest batch goes
                return False
            self._buffer.pop()
            self._stats.batches_journaled += 1
        if self._buffer.fits(size):
            self._buffer.push(batch, size)
        elif self._journal.append(encode_record(batch)):  # larger than the whole buffer
            self._stats.batches_journaled += 1
        else:
            self._drop(batch)
            return False
        self._idle.clear()
        self._wakeup.set()
        return True

    def _drop(self, batch: TickBatch) -> None:
        self._stats.batches_dropped += 1
        self._stats.frames_dropped += len(batch.frames)
        now = time.monotonic()
        if self._drops_logged == 0 or now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            log.error(
                "tick batches dropped: memory and journal full (%d batches, %d frames dropped "
                "so far; latest %s seq %d)",
                self._stats.batches_dropped,
                self._stats.frames_dropped,
                batch.connection,
                batch.seq,
            )
            self._last_drop_log = now
            self._drops_logged += 1

    # ------------------------------------------------------------------ sending

    async def run(self) -> None:
        """Send batches until :meth:`stop`; survives any number of broker outages."""
        while not self._stop.is_set():
            if not self._stats.broker_up:
                await self._reconnect()
                continue
            if not self._send_one():
                if self.pending == 0:
                    self._idle.set()
                self._wakeup.clear()
                await self._wait(self._wakeup, IDLE_WAIT_S)
                continue
            # Let the connections read their sockets between two publishes.
            await asyncio.sleep(0)

    def _send_one(self) -> bool:
        """Publish the oldest batch; False when there was nothing to send or it failed."""
        record = self._journal.peek()
        if record is not None:
            try:
                message = decode_record(record)
            except ValueError as exc:  # msgpack's errors; the record passed its CRC check
                self._stats.batches_failed += 1
                log.error("unreadable journal record dropped: %s", exc)
                self._journal.pop()
                return True
        else:
            head = self._buffer.peek()
            if head is None:
                return False
            message = head.to_message()
        try:
            self._sender.publish(message)
        except ServiceUnavailable as exc:
            self._went_down(exc)
            return False
        except PermanentError as exc:
            self._stats.batches_failed += 1
            log.error("tick batch %s could not be sent, dropped: %s", message.get("seq"), exc)
        else:
            self._stats.batches_sent += 1
            self._stats.frames_sent += len(message["frames"])
        if record is not None:
            self._journal.pop()
        else:
            self._buffer.pop()
        return True

    def _went_down(self, exc: ServiceUnavailable) -> None:
        self._stats.broker_up = False
        self._stats.outages += 1
        self._down_since = time.monotonic()
        self._drops_logged = 0
        log.warning("broker unreachable, buffering tick batches: %s", exc)

    async def _reconnect(self) -> None:
        """Probe the broker with backoff until it answers (or :meth:`stop`)."""
        delay = FIRST_BACKOFF_S
        while not self._stop.is_set():
            await self._wait(self._stop, delay * (0.5 + random.random() / 2))
            if await self._probe():
                self._stats.broker_up = True
                stats = self.stats
                log.warning(
                    "broker back after %.1f s; sending %d journaled and %d buffered batches",
                    time.monotonic() - self._down_since,
                    stats.journal_batches,
                    stats.buffer_batches,
                )
                return
            delay = min(delay * 2, self._reconnect_max_s)

    async def _probe(self) -> bool:
        """Whether the broker answers, asked asynchronously: a dead or hung broker never
        blocks the event loop here (only the one publish that follows a good probe can)."""
        target = self._sender.probe_target()
        if target is None:
            return True
        timeout = self._probe_timeout_s
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(target.host, target.port)
        except (OSError, TimeoutError):
            return False
        try:
            if not target.hello:
                return True
            writer.write(target.hello)
            async with asyncio.timeout(timeout):
                await writer.drain()
            async with asyncio.timeout(timeout):
                return bool(await reader.read(1))
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(timeout):
                    await writer.wait_closed()

    @staticmethod
    async def _wait(event: asyncio.Event, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await event.wait()

    # ------------------------------------------------------------------ shutdown

    async def drain(self, timeout_s: float) -> bool:
        """Wait until everything submitted was sent; False when ``timeout_s`` passed first."""
        if self.pending == 0:
            return True
        self._idle.clear()
        self._wakeup.set()
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return self.pending == 0
        return True

    def stop(self) -> None:
        """Make :meth:`run` return after the publish in progress."""
        self._stop.set()
        self._wakeup.set()

    def close(self) -> None:
        """Move unsent batches from memory to the journal (sent after a restart), close all.

        Batches the journal cannot take are dropped and counted.
        """
        self.stop()
        while len(self._buffer):
            batch, _ = self._buffer.pop()
            if self._journal.append(encode_record(batch)):
                self._stats.batches_journaled += 1
            else:
                self._drop(batch)
        self._journal.close()
        self._sender.close()
