"""``ticker-tasks replay FILE [--speed X]``: captured frames through the ``ticks`` queue again.

The frames of a capture file (:mod:`workers.streamer.capture`) are sent byte for byte as
:class:`~schemas.ticks.TickBatch` messages with ``source="replay"``, keeping each frame's
original receive time in ``received_at``. They are batched like the streamer batches them: a
batch closes at ``TICKER_STREAMER_BATCH_MAX_FRAMES`` frames or when the next frame arrived
more than ``TICKER_STREAMER_BATCH_MAX_DELAY_S`` after the batch's first one (receive times
from the file). Each batch is sent at its last frame's offset from the file's first frame,
divided by ``speed``; ``speed`` None or 0 sends as fast as the broker takes them.

The batches carry the connection id ``"{connection}/replay"`` and fresh sequence numbers
(seeded from the clock), so a replay never collides with the live connection's batches in
deduplication, and each replay run is counted as new data.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from schemas.ticks import TickBatch
from ticker_tasks.errors import ServiceUnavailable, ValidationError
from workers.streamer.batcher import clock_seq
from workers.streamer.capture import CapturedFrame, CaptureReader
from workers.streamer.sender import KombuSender

if TYPE_CHECKING:
    from celery import Celery

    from ticker_tasks.settings import Settings

REPLAY_SUFFIX = "/replay"
DEFAULT_MAX_FRAMES = 200
DEFAULT_MAX_DELAY_S = 0.05


@dataclass(frozen=True)
class ReplayResult:
    """What a replay sent."""

    connection: str
    batches: int
    frames: int
    frame_bytes: int
    truncated: bool


def plan_batches(
    frames: Iterable[CapturedFrame], *, max_frames: int, max_delay_s: float
) -> Iterator[list[CapturedFrame]]:
    """Group frames as the streamer's batcher would have, from their receive times."""
    batch: list[CapturedFrame] = []
    for frame in frames:
        if batch and frame.received_at - batch[0].received_at > max_delay_s:
            yield batch
            batch = []
        batch.append(frame)
        if len(batch) >= max_frames:
            yield batch
            batch = []
    if batch:
        yield batch


def replay(
    path: str | Path,
    app: Celery,
    speed: float | None,
    *,
    max_frames: int = DEFAULT_MAX_FRAMES,
    max_delay_s: float = DEFAULT_MAX_DELAY_S,
    publish_timeout_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplayResult:
    """Send the frames of a capture file through the ``ticks`` queue again.

    Args:
        path: Capture file.
        app: Celery app of the service (queues and routes from ``celeryconfig``).
        speed: Replay speed (2.0 = twice as fast as captured); None or 0: no waiting.
        max_frames: Frames per batch at most.
        max_delay_s: Largest receive-time spread within a batch.
        publish_timeout_s: Connect and socket timeout of the broker connection.
        sleep: Waits between batches (tests pass a fake).

    Raises:
        CaptureFormatError: The file is not a supported capture.
        OSError: The file cannot be read.
        ServiceUnavailable: The broker failed; the batches before were sent.
    """
    reader = CaptureReader(path)
    connection = reader.connection + REPLAY_SUFFIX
    sender = KombuSender(app, timeout_s=publish_timeout_s)
    seq = clock_seq()
    batches = frames = frame_bytes = 0
    started = time.monotonic()
    first_at: float | None = None
    try:
        for group in plan_batches(reader, max_frames=max_frames, max_delay_s=max_delay_s):
            first_at = group[0].received_at if first_at is None else first_at
            if speed:
                due = started + (group[-1].received_at - first_at) / speed
                wait = due - time.monotonic()
                if wait > 0:
                    sleep(wait)
            batch = TickBatch.model_validate(
                {
                    "batch_id": uuid.uuid4().hex,
                    "source": "replay",
                    "account_id": reader.account_id,
                    "connection": connection,
                    "seq": seq + batches,
                    "received_at": [item.received_at for item in group],
                    "frames": [item.frame for item in group],
                }
            )
            sender.publish(batch.to_message())
            batches += 1
            frames += len(group)
            frame_bytes += batch.frame_bytes
    finally:
        sender.close()
    return ReplayResult(connection, batches, frames, frame_bytes, reader.truncated)


def replay_command(path: str, speed: float | None, settings: Settings) -> int:
    """``ticker-tasks replay FILE [--speed X]``: exit status 0 when every frame was sent.

    Prints one summary line; 1 when the broker failed mid-way, 2 for an unreadable file.
    """
    from ticker_tasks.app import app

    if speed is not None and speed < 0:
        print("replay: --speed must be positive (0 or absent: as fast as possible)")
        return 2
    try:
        result = replay(
            path,
            app,
            speed,
            max_frames=settings.streamer_batch_max_frames,
            max_delay_s=settings.streamer_batch_max_delay_s,
            publish_timeout_s=settings.broker_connection_timeout_s,
        )
    except (OSError, ValidationError) as exc:
        print(f"replay: {exc}")
        return 2
    except ServiceUnavailable as exc:
        print(f"replay: stopped, {exc}")
        return 1
    print(
        f"replayed {result.frames} frames ({result.frame_bytes} bytes) in {result.batches} "
        f"batches as connection {result.connection}"
        + (" (the file ends with a torn record)" if result.truncated else "")
    )
    return 0
