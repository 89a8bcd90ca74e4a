"""Frames of one ticker connection become :class:`~schemas.ticks.TickBatch` messages.

A :class:`Batcher` collects the binary frames of one connection as they arrive and hands a
batch to ``on_flush`` when it holds ``max_frames`` frames or when its first frame is
``max_delay_s`` old, whichever comes first. It only moves bytes: no frame is parsed here (the
hot path's rule: the streamer moves frames, the workers decode whole batches).

Each batch gets a fresh ``batch_id`` (uuid4) and the connection's next sequence number. The
first sequence number is the wall clock in microseconds when the batcher is built, then +1 per
batch, so a restarted streamer continues above every number it used before (it would have to
send more than a million batches per second to catch up with the clock) and consumers can
deduplicate on ``(connection, seq)`` across restarts.

The delay timer is one ``loop.call_later`` handle per pending batch, on the running loop: no
task and no thread.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from schemas.ticks import Source, TickBatch

FlushCallback = Callable[[TickBatch], object]


def clock_seq() -> int:
    """A first sequence number above every one used before: wall clock in microseconds."""
    return time.time_ns() // 1_000


class Batcher:
    """Batches the frames of one connection by size and age.

    Args:
        max_frames: Frames in a batch at most (Settings ``streamer_batch_max_frames``).
        max_delay_s: Age of the oldest frame at which a batch is sent anyway
            (``streamer_batch_max_delay_s``).
        on_flush: Called with every batch, in sequence order (e.g. ``Delivery.submit``);
            it must not block.
        account_id: Account holding the connection.
        connection: Stable connection id, e.g. ``"ACCOUNT:0"``.
        source: ``stream``, ``replay`` or ``mock``.
        first_seq: First sequence number; default :func:`clock_seq`.
    """

    def __init__(
        self,
        max_frames: int,
        max_delay_s: float,
        on_flush: FlushCallback,
        *,
        account_id: str,
        connection: str,
        source: Source = "stream",
        first_seq: int | None = None,
    ) -> None:
        if max_frames < 1 or max_delay_s <= 0:
            raise ValueError("max_frames must be >= 1 and max_delay_s > 0")
        self.max_frames = max_frames
        self.max_delay_s = max_delay_s
        self.account_id = account_id
        self.connection = connection
        self.source: Source = source
        self._on_flush = on_flush
        self._next_seq = clock_seq() if first_seq is None else first_seq
        self._frames: list[bytes] = []
        self._times: list[float] = []
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def next_seq(self) -> int:
        """Sequence number of the next batch."""
        return self._next_seq

    @property
    def pending(self) -> int:
        """Frames waiting for the next flush."""
        return len(self._frames)

    def add(self, frame: bytes, received_at: float) -> None:
        """Add one frame received at ``received_at`` (epoch seconds).

        Must run on the event loop (the first frame of a batch arms the delay timer).

        Raises:
            RuntimeError: The batcher is closed.
        """
        if self._closed:
            raise RuntimeError(f"batcher of {self.connection} is closed")
        self._frames.append(frame)
        self._times.append(received_at)
        if len(self._frames) >= self.max_frames:
            self.flush()
        elif self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.max_delay_s, self._on_timer)

    def flush(self) -> TickBatch | None:
        """Hand the pending frames to ``on_flush`` now; the batch, or None when empty."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._frames:
            return None
        batch = TickBatch(
            batch_id=uuid.uuid4().hex,
            source=self.source,
            account_id=self.account_id,
            connection=self.connection,
            seq=self._next_seq,
            received_at=self._times,
            frames=self._frames,
        )
        self._next_seq += 1
        self._frames = []
        self._times = []
        self._on_flush(batch)
        return batch

    def close(self) -> TickBatch | None:
        """Flush what is pending and refuse further frames; the last batch, if any."""
        batch = self.flush()
        self._closed = True
        return batch

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()
