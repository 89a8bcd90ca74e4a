"""Where tick batches wait while the broker cannot take them: memory first, then disk.

:class:`BoundedBuffer` is a FIFO of items with a byte budget. :class:`Journal` is an
append-only FIFO of byte records on disk, in segment files, with a total byte budget; it
survives a restart of the process (records not yet taken are read again, oldest first).

Journal layout (one directory per streamer process)::

    {directory}/000000000001.seg   segment: b"TTJRNL01" + records
    {directory}/000000000002.seg
    {directory}/cursor             "segment offset" of the next record to read (clean close)
    {directory}/lock               flock held while open: a second process refuses to start

A record is ``uint32 length`` + ``uint32 crc32(payload)`` (big-endian) + ``payload``. Opening
the journal checks every record: a torn or corrupt tail (the process died in mid-write) is cut
off and counted in :attr:`Journal.corrupt_bytes`, never replayed.

Durability (fsync policy): every append is written to the OS (``flush``) before
:meth:`Journal.append` returns, so a crash of the process loses nothing; ``fsync`` runs when a
segment is full and on :meth:`Journal.close`, so a power loss can lose the tail of the current
segment. An fsync per record would cost milliseconds on the streamer's event loop.

Delivery is at least once: the read position is saved on a clean close only, so after a crash
the records of the first segment that were already sent are sent again. Consumers count each
batch once per ``(connection, seq)``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, Generic, TypeVar

from ticker_tasks.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

SEGMENT_MAGIC: Final = b"TTJRNL01"
RECORD_HEADER: Final = struct.Struct(">II")
DEFAULT_SEGMENT_BYTES: Final = 8 * 1024 * 1024
CURSOR_FILE: Final = "cursor"
LOCK_FILE: Final = "lock"
_SUFFIX: Final = ".seg"


class BoundedBuffer(Generic[T]):
    """A FIFO holding at most ``max_bytes`` (as declared by the caller per item)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._items: deque[tuple[T, int]] = deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size_bytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def fits(self, size: int) -> bool:
        """Whether an item of ``size`` bytes can be pushed now."""
        return self._bytes + size <= self.max_bytes

    def push(self, item: T, size: int) -> None:
        """Append ``item`` at the tail.

        Raises:
            OverflowError: It does not fit (check :meth:`fits` first).
        """
        if not self.fits(size):
            raise OverflowError(f"{size} bytes do not fit ({self._bytes}/{self.max_bytes} used)")
        self._items.append((item, size))
        self._bytes += size

    def peek(self) -> T | None:
        """The oldest item, left in place; None when empty."""
        return self._items[0][0] if self._items else None

    def pop(self) -> tuple[T, int]:
        """Remove and return the oldest item and its size.

        Raises:
            IndexError: The buffer is empty.
        """
        item, size = self._items.popleft()
        self._bytes -= size
        return item, size


@dataclass
class _Segment:
    index: int
    path: Path
    size: int
    records: int


class Journal:
    """A bounded FIFO of byte records on disk, in order, across restarts.

    Args:
        directory: Directory of the segment files (created when missing).
        max_bytes: Largest total size of the segment files; :meth:`append` refuses beyond it.
        segment_bytes: Size at which a new segment file is started.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        max_bytes: int,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        if max_bytes <= 0 or segment_bytes <= len(SEGMENT_MAGIC):
            raise ValueError("max_bytes and segment_bytes must be positive")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.corrupt_bytes = 0
        self.write_errors = 0
        self._segments: deque[_Segment] = deque()
        self._read_offset = len(SEGMENT_MAGIC)
        self._reader: BinaryIO | None = None
        self._writer: BinaryIO | None = None
        self._peeked: bytes | None = None
        self._last_index = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = self._take_lock()
        try:
            self._recover()
        except OSError:
            self._lock.close()
            raise

    # ------------------------------------------------------------------ state

    def __len__(self) -> int:
        """Records waiting to be read."""
        return sum(segment.records for segment in self._segments)

    @property
    def size_bytes(self) -> int:
        """Disk used by the segment files (what ``max_bytes`` bounds)."""
        return sum(segment.size for segment in self._segments)

    @property
    def free_bytes(self) -> int:
        """Bytes :meth:`append` can still take (records cost 8 bytes more than their payload)."""
        return max(0, self.max_bytes - self.size_bytes)

    # ------------------------------------------------------------------ writing

    def append(self, payload: bytes) -> bool:
        """Write one record at the tail; False when it would exceed ``max_bytes`` or the disk
        failed (counted in :attr:`write_errors`, logged)."""
        size = RECORD_HEADER.size + len(payload)
        tail = self._segments[-1] if self._segments else None
        needs_segment = (
            tail is None or self._writer is None or tail.size + size > self.segment_bytes
        )
        extra = len(SEGMENT_MAGIC) if needs_segment else 0
        if self.size_bytes + size + extra > self.max_bytes:
            return False
        try:
            if needs_segment:
                tail = self._start_segment()
            assert tail is not None
            self._write_record(tail, payload)
        except OSError as exc:
            self.write_errors += 1
            log.warning("journal write failed in %s: %s", self.directory, exc)
            self._close_writer(sync=False)
            return False
        return True

    def _write_record(self, tail: _Segment, payload: bytes) -> None:
        assert self._writer is not None
        header = RECORD_HEADER.pack(len(payload), zlib.crc32(payload))
        try:
            self._writer.write(header)
            self._writer.write(payload)
            self._writer.flush()
        except OSError:
            # Cut a partly written record so later records stay readable.
            self._writer.truncate(tail.size)
            raise
        tail.size += len(header) + len(payload)
        tail.records += 1

    def _start_segment(self) -> _Segment:
        self._close_writer(sync=True)
        index = (self._segments[-1].index if self._segments else self._last_index) + 1
        path = self.directory / f"{index:012d}{_SUFFIX}"
        writer = open(path, "wb")  # noqa: SIM115  (kept open across appends)
        writer.write(SEGMENT_MAGIC)
        writer.flush()
        segment = _Segment(index=index, path=path, size=len(SEGMENT_MAGIC), records=0)
        self._segments.append(segment)
        self._writer = writer
        return segment

    def _close_writer(self, *, sync: bool) -> None:
        if self._writer is None:
            return
        try:
            if sync:
                self._writer.flush()
                os.fsync(self._writer.fileno())
        finally:
            self._writer.close()
            self._writer = None

    # ------------------------------------------------------------------ reading

    def peek(self) -> bytes | None:
        """The oldest record, left in place; None when the journal is empty.

        A record that cannot be read back (disk error, file changed under us) loses the rest
        of its segment: counted in :attr:`corrupt_bytes`, logged, skipped.
        """
        while self._peeked is None:
            if not self._segments:
                return None
            head = self._segments[0]
            if head.records == 0:
                if len(self._segments) == 1 and self._writer is not None:
                    return None
                self._drop_head()
                continue
            try:
                self._peeked = self._read_head(head)
            except OSError as exc:
                self.corrupt_bytes += max(0, head.size - self._read_offset)
                log.warning("journal: skipping the rest of %s: %s", head.path, exc)
                head.records = 0
        return self._peeked

    def _read_head(self, head: _Segment) -> bytes:
        if self._reader is None:
            self._reader = open(head.path, "rb")  # noqa: SIM115  (kept open across reads)
        self._reader.seek(self._read_offset)
        header = self._reader.read(RECORD_HEADER.size)
        if len(header) != RECORD_HEADER.size:
            raise OSError(f"record header at offset {self._read_offset} is missing")
        length, crc = RECORD_HEADER.unpack(header)
        payload = self._reader.read(length)
        if len(payload) != length or zlib.crc32(payload) != crc:
            raise OSError(f"record at offset {self._read_offset} changed on disk")
        return payload

    def pop(self) -> None:
        """Remove the oldest record (after :meth:`peek` returned it).

        Raises:
            IndexError: Nothing was peeked.
        """
        if self._peeked is None:
            raise IndexError("pop() without a peeked record")
        head = self._segments[0]
        self._read_offset += RECORD_HEADER.size + len(self._peeked)
        self._peeked = None
        head.records -= 1
        if head.records == 0:
            self._drop_head()

    def _drop_head(self) -> None:
        """Delete the fully read head segment (with the writer, when it is also the tail)."""
        head = self._segments.popleft()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if not self._segments:
            self._close_writer(sync=False)
        self._last_index = max(self._last_index, head.index)
        head.path.unlink(missing_ok=True)
        self._read_offset = len(SEGMENT_MAGIC)

    # ------------------------------------------------------------------ open / close

    def _take_lock(self) -> BinaryIO:
        """Hold an exclusive lock on the directory while open: one process per journal."""
        handle = open(self.directory / LOCK_FILE, "ab")  # noqa: SIM115  (held while open)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ConfigError(
                f"journal directory {self.directory} is in use by another process: give each "
                "streamer its own TICKER_STREAMER_JOURNAL_DIR"
            ) from None
        return handle

    def close(self) -> None:
        """fsync and close the files; save the read position for the next open."""
        try:
            self._close_writer(sync=True)
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            cursor = self.directory / CURSOR_FILE
            if self._segments:
                tmp = cursor.with_suffix(".tmp")
                tmp.write_text(f"{self._segments[0].index} {self._read_offset}\n")
                os.replace(tmp, cursor)
            else:
                cursor.unlink(missing_ok=True)
        finally:
            self._lock.close()  # releases the flock

    def _recover(self) -> None:
        """Load the segments left by a previous process, oldest first, and its read position."""
        paths = sorted(self.directory.glob(f"*{_SUFFIX}"))
        for path in paths:
            try:
                index = int(path.stem)
            except ValueError:
                continue
            self._last_index = max(self._last_index, index)
            segment = self._scan(index, path)
            if segment is not None:
                self._segments.append(segment)
        self._apply_cursor()

    def _scan(self, index: int, path: Path) -> _Segment | None:
        """Count a segment's valid records; cut a torn or corrupt tail."""
        data = path.read_bytes()
        if not data.startswith(SEGMENT_MAGIC):
            log.warning("journal: %s is not a journal segment; ignored", path)
            return None
        offset, records = len(SEGMENT_MAGIC), 0
        while offset + RECORD_HEADER.size <= len(data):
            length, crc = RECORD_HEADER.unpack_from(data, offset)
            end = offset + RECORD_HEADER.size + length
            if end > len(data) or zlib.crc32(data[offset + RECORD_HEADER.size : end]) != crc:
                break
            offset, records = end, records + 1
        if offset != len(data):
            self.corrupt_bytes += len(data) - offset
            log.warning("journal: cut %d bytes of a torn record in %s", len(data) - offset, path)
            with open(path, "r+b") as handle:
                handle.truncate(offset)
        return _Segment(index=index, path=path, size=offset, records=records)

    def _apply_cursor(self) -> None:
        """Skip the records a previous process read before it closed cleanly."""
        cursor = self.directory / CURSOR_FILE
        if not cursor.exists() or not self._segments:
            return
        try:
            index_text, offset_text = cursor.read_text().split()
            index, offset = int(index_text), int(offset_text)
        except ValueError:
            log.warning("journal: unreadable cursor file %s; replaying from the start", cursor)
            return
        head = self._segments[0]
        if index != head.index or not len(SEGMENT_MAGIC) <= offset <= head.size:
            return
        data = head.path.read_bytes()
        position, skipped = len(SEGMENT_MAGIC), 0
        while position < offset:
            (length, _crc) = RECORD_HEADER.unpack_from(data, position)
            position += RECORD_HEADER.size + length
            skipped += 1
        if position != offset:  # not a record boundary: do not trust it
            return
        self._read_offset = offset
        head.records -= skipped
