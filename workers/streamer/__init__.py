"""The streamer: Kite ticker frames to the ``ticks`` queue (asyncio, no threads).

Pipeline of one streamer process, each piece usable and testable alone:

- :class:`~workers.streamer.batcher.Batcher` (one per connection): frames to
  :class:`~schemas.ticks.TickBatch` by size and age, with batch ids and sequence numbers.
- :class:`~workers.streamer.delivery.Delivery` (one per process): batches to the broker in
  order through one reused producer (:class:`~workers.streamer.sender.KombuSender`); memory
  buffer then on-disk :class:`~workers.streamer.journal.Journal` while the broker is away.
- :class:`~workers.streamer.capture.CaptureWriter` (optional, one per connection): raw frames
  to a file per connection per day, replayed with ``ticker-tasks replay``.
"""

from workers.streamer.batcher import Batcher
from workers.streamer.capture import CaptureReader, CaptureWriter, capture_path
from workers.streamer.delivery import Delivery
from workers.streamer.journal import BoundedBuffer, Journal
from workers.streamer.sender import KombuSender
from workers.streamer.stats import DeliveryCollector, DeliveryStats

__all__ = [
    "Batcher",
    "BoundedBuffer",
    "CaptureReader",
    "CaptureWriter",
    "Delivery",
    "DeliveryCollector",
    "DeliveryStats",
    "Journal",
    "KombuSender",
    "capture_path",
]
