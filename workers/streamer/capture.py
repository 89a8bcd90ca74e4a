"""Raw-frame capture: every binary frame of a connection, with its receive time, on disk.

Optional (``TICKER_STREAMER_CAPTURE_DIR``). One append-only file per connection per trading
day (the date in Asia/Kolkata of the receive time)::

    {dir}/{YYYY-MM-DD}/{account}_{connection}.frames

``{connection}`` drops a leading ``"{account}:"`` (``ACC1:0`` gives ``ACC1_0.frames``);
characters other than letters, digits, ``.``, ``_`` and ``-`` become ``-``.

File format, big-endian:

- header: magic ``b"TTFRAMES"``, ``uint16`` version (:data:`VERSION` = 1), ``uint16`` length
  of the metadata, metadata as UTF-8 JSON ``{"account_id": ..., "connection": ...}``;
- then records: ``float64`` receive time (epoch seconds), ``uint32`` frame length, frame bytes.

Writes go through a 64 KiB buffer (:meth:`CaptureWriter.flush` pushes it to the OS): a crash
of the process loses at most that buffer, and a torn last record is cut when the file is
opened again. A disk error disables the writer (logged once, counted in
:attr:`CaptureWriter.errors`): capture never stops the feed. ``ticker-tasks replay FILE``
sends a file's frames through the ``ticks`` queue again (:mod:`workers.replay`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final
from zoneinfo import ZoneInfo

from ticker_tasks.errors import ValidationError

log = logging.getLogger(__name__)

MAGIC: Final = b"TTFRAMES"
VERSION: Final = 1
SUFFIX: Final = ".frames"
IST: Final = ZoneInfo("Asia/Kolkata")
BUFFER_BYTES: Final = 64 * 1024
_PREFIX: Final = struct.Struct(">HH")
RECORD: Final = struct.Struct(">dI")
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]")


class CaptureFormatError(ValidationError):
    """A file is not a frame capture of a supported version (or of another connection)."""


@dataclass(frozen=True)
class CapturedFrame:
    """One frame as received."""

    received_at: float
    frame: bytes


def trading_day(epoch: float) -> dt.date:
    """The date in Asia/Kolkata of ``epoch``."""
    return dt.datetime.fromtimestamp(epoch, IST).date()


def _day_bounds(day: dt.date) -> tuple[float, float]:
    start = dt.datetime.combine(day, dt.time(), IST)
    return start.timestamp(), (start + dt.timedelta(days=1)).timestamp()


def capture_path(directory: str | Path, account_id: str, connection: str, day: dt.date) -> Path:
    """Where the frames of ``connection`` received on ``day`` are captured."""
    label = connection.removeprefix(f"{account_id}:")
    name = f"{_UNSAFE.sub('-', account_id)}_{_UNSAFE.sub('-', label)}{SUFFIX}"
    return Path(directory) / day.isoformat() / name


def _header(account_id: str, connection: str) -> bytes:
    meta = json.dumps({"account_id": account_id, "connection": connection}).encode()
    return MAGIC + _PREFIX.pack(VERSION, len(meta)) + meta


def _read_header(handle: BinaryIO, path: Path) -> tuple[str, str, int]:
    """(account_id, connection, header length) of an open capture file."""
    prefix = handle.read(len(MAGIC) + _PREFIX.size)
    if len(prefix) != len(MAGIC) + _PREFIX.size or not prefix.startswith(MAGIC):
        raise CaptureFormatError(f"{path}: not a frame capture file")
    version, meta_length = _PREFIX.unpack_from(prefix, len(MAGIC))
    if version != VERSION:
        raise CaptureFormatError(f"{path}: capture version {version}, expected {VERSION}")
    try:
        meta = json.loads(handle.read(meta_length))
        return str(meta["account_id"]), str(meta["connection"]), len(prefix) + meta_length
    except (ValueError, KeyError, TypeError) as exc:
        raise CaptureFormatError(f"{path}: unreadable capture header: {exc}") from exc


class CaptureReader:
    """Reads a capture file: its header, then its frames in order.

    A torn last record (the writer died mid-record) ends the iteration and sets
    :attr:`truncated`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.truncated = False
        with open(self.path, "rb") as handle:
            self.account_id, self.connection, self._data_offset = _read_header(handle, self.path)

    def __iter__(self) -> Iterator[CapturedFrame]:
        with open(self.path, "rb") as handle:
            handle.seek(self._data_offset)
            while True:
                head = handle.read(RECORD.size)
                if not head:
                    return
                if len(head) < RECORD.size:
                    self.truncated = True
                    return
                received_at, length = RECORD.unpack(head)
                frame = handle.read(length)
                if len(frame) < length:
                    self.truncated = True
                    return
                yield CapturedFrame(received_at, frame)


def _valid_end(path: Path, data_offset: int) -> int:
    """Offset just after the last complete record of ``path``."""
    end = data_offset
    size = path.stat().st_size
    with open(path, "rb") as handle:
        handle.seek(data_offset)
        while True:
            head = handle.read(RECORD.size)
            if len(head) < RECORD.size:
                return end
            _, length = RECORD.unpack(head)
            if end + RECORD.size + length > size:
                return end
            end += RECORD.size + length
            handle.seek(end)


class CaptureWriter:
    """Appends the frames of one connection to its capture file of the day.

    Args:
        directory: Capture directory (``TICKER_STREAMER_CAPTURE_DIR``).
        account_id: Account holding the connection.
        connection: Stable connection id.
    """

    def __init__(self, directory: str | Path, account_id: str, connection: str) -> None:
        self.directory = Path(directory)
        self.account_id = account_id
        self.connection = connection
        self.errors = 0
        self.path: Path | None = None
        self._handle: BinaryIO | None = None
        self._day_start = 0.0
        self._day_end = 0.0
        self._disabled = False

    def write(self, received_at: float, frame: bytes) -> None:
        """Append one frame; rolls over to the next day's file at midnight IST."""
        if self._disabled:
            return
        try:
            if not self._day_start <= received_at < self._day_end:
                self._open(trading_day(received_at))
            assert self._handle is not None
            self._handle.write(RECORD.pack(received_at, len(frame)))
            self._handle.write(frame)
        except (OSError, CaptureFormatError) as exc:
            self._fail(exc)

    def flush(self) -> None:
        """Push buffered records to the OS."""
        if self._handle is not None:
            try:
                self._handle.flush()
            except OSError as exc:
                self._fail(exc)

    def close(self) -> None:
        """Flush and close the current file."""
        handle, self._handle = self._handle, None
        self._day_start = self._day_end = 0.0
        if handle is not None:
            try:
                handle.close()
            except OSError as exc:
                self._fail(exc)

    def _open(self, day: dt.date) -> None:
        self.close()
        path = capture_path(self.directory, self.account_id, self.connection, day)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > 0:
            with open(path, "rb") as handle:
                account_id, connection, data_offset = _read_header(handle, path)
            if (account_id, connection) != (self.account_id, self.connection):
                raise CaptureFormatError(f"{path} belongs to {account_id} {connection}")
            end = _valid_end(path, data_offset)
            if end != path.stat().st_size:
                log.warning("capture: cut a torn record at the end of %s", path)
                with open(path, "r+b") as handle:
                    handle.truncate(end)
            self._handle = open(path, "ab", buffering=BUFFER_BYTES)  # noqa: SIM115
        else:
            self._handle = open(path, "wb", buffering=BUFFER_BYTES)  # noqa: SIM115
            self._handle.write(_header(self.account_id, self.connection))
        self.path = path
        self._day_start, self._day_end = _day_bounds(day)

    def _fail(self, exc: OSError | CaptureFormatError) -> None:
        self.errors += 1
        self._disabled = True
        log.error("capture of %s disabled: %s", self.connection, exc)
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.close()
            except OSError:
                log.debug("capture: closing %s failed too", self.path)
