"""One ticker socket: its subscriptions, outgoing queue, fault switches and counters."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from aiohttp import web

I64 = npt.NDArray[np.int64]
MODE_NAMES = ("ltp", "quote", "full")


@dataclass(slots=True)
class Connection:
    """One ticker socket and its subscriptions.

    Attributes:
        id: Connection id (``c1``, ``c2``, ...), used by the control API.
        api_key: Owner.
        ws: The aiohttp WebSocket.
        transport: The TCP transport (aborted by the drop fault).
        modes: Subscribed token -> mode code (1 ltp, 2 quote, 3 full), insertion ordered.
        queue: Outgoing messages ``(binary, payload, packets)``.
    """

    id: str
    api_key: str
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    queue: asyncio.Queue[tuple[bool, bytes | str, int]]
    modes: dict[int, int] = field(default_factory=dict)
    snapshot: set[int] = field(default_factory=set)
    opened_at: float = field(default_factory=time.time)
    closed_at: float | None = None
    close_reason: str = ""
    packets_sent: int = 0
    frames_sent: int = 0
    heartbeats_sent: int = 0
    texts_sent: int = 0
    frames_dropped: int = 0
    silent_until: float = 0.0
    truncate_frames: int = 0
    rows: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    row_modes: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    resolved_version: int = -1

    @property
    def silent(self) -> bool:
        """Whether the silence fault is active."""
        return time.monotonic() < self.silent_until

    def stats(self) -> dict[str, Any]:
        """JSON statistics of the connection."""
        counts = dict.fromkeys(MODE_NAMES, 0)
        for mode in self.modes.values():
            counts[MODE_NAMES[mode - 1]] += 1
        return {
            "api_key": self.api_key,
            "open": self.closed_at is None,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "close_reason": self.close_reason,
            "packets_sent": self.packets_sent,
            "frames_sent": self.frames_sent,
            "heartbeats_sent": self.heartbeats_sent,
            "texts_sent": self.texts_sent,
            "frames_dropped": self.frames_dropped,
            "subscriptions": len(self.modes),
            "modes": counts,
            "silent": self.silent,
        }
