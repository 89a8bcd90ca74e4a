"""Tick batches from the streamers and raw order updates: payloads of the feed tasks.

``ticker_tasks.ticks.process_batch`` (queue ``ticks``) takes a :class:`TickBatch`. The
streamers send it as **msgpack** so frame bytes travel as bytes (no text encoding)::

    app.send_task(
        "ticker_tasks.ticks.process_batch",
        kwargs=batch.to_message(),
        serializer="msgpack",
        queue="ticks",
    )

Producers in other languages may send JSON instead: the exported JSON Schema describes each
frame as a base64 string (pydantic's ``ser_json_bytes="base64"`` / ``val_json_bytes="base64"``;
pydantic writes the URL-safe alphabet and accepts both alphabets). A string frame is always
read as base64, also when it arrives inside a msgpack or JSON message already decoded to a
Python ``dict``.

``ticker_tasks.orders.update`` (queue ``orders``) takes an :class:`OrderUpdate`: one order
postback as the Kite ticker delivered it (a text frame of type ``order``), unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Where a batch comes from: a live ticker connection, a captured file, or generated data.
Source = Literal["stream", "replay", "mock"]


class TickBatch(BaseModel):
    """Keyword arguments of ``ticker_tasks.ticks.process_batch``: raw frames of one connection.

    ``(connection, seq)`` identifies a batch for deduplication: a batch delivered twice (broker
    redelivery, a resend after a publish timeout, a journal replay) is counted once. A
    connection's ``seq`` grows by one per batch; streamers seed it from the clock at start-up
    so a restarted streamer never reuses a number.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        ser_json_bytes="base64",
        val_json_bytes="base64",
    )

    batch_id: str = Field(
        ...,
        pattern=r"^[0-9a-f]{32}$",
        description="Unique id of the batch: a uuid4 in 32 lowercase hex digits.",
    )
    source: Source = Field(
        ..., description="stream (live ticker), replay (captured file) or mock (simulated)."
    )
    account_id: str = Field(
        ..., min_length=1, max_length=32, description="Account holding the connection."
    )
    connection: str = Field(
        ...,
        min_length=1,
        max_length=64,
        description='Stable id of the ticker connection, e.g. "ACCOUNT:0".',
    )
    seq: int = Field(
        ...,
        ge=0,
        lt=2**63,
        description="Per-connection sequence number of the batch (deduplication and order).",
    )
    received_at: list[float] = Field(
        ...,
        description="Receive time of each frame, epoch seconds (one per frame, same order).",
    )
    frames: list[bytes] = Field(
        ...,
        min_length=1,
        description="Binary ticker frames, byte for byte as received (base64 in JSON).",
    )

    @model_validator(mode="after")
    def _one_time_per_frame(self) -> TickBatch:
        if len(self.received_at) != len(self.frames):
            raise ValueError(
                f"received_at has {len(self.received_at)} entries for {len(self.frames)} frames"
            )
        return self

    @property
    def frame_bytes(self) -> int:
        """Total size of the frames in bytes."""
        return sum(map(len, self.frames))

    def to_message(self) -> dict[str, Any]:
        """The task's keyword arguments for a msgpack message (frames stay ``bytes``)."""
        return {
            "batch_id": self.batch_id,
            "source": self.source,
            "account_id": self.account_id,
            "connection": self.connection,
            "seq": self.seq,
            "received_at": list(self.received_at),
            "frames": list(self.frames),
        }

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> TickBatch:
        """Validate a received message (msgpack: bytes frames; JSON: base64 strings).

        Raises:
            pydantic.ValidationError: The message breaks the contract.
        """
        return cls.model_validate(dict(message))


class OrderUpdate(BaseModel):
    """Keyword arguments of ``ticker_tasks.orders.update``: one raw Kite order update.

    ``data`` is Kite's order payload unchanged (the ``data`` of a ticker text message of type
    ``order``, the same shape as a postback); it must carry ``order_id`` and ``status``. An
    update is recorded once per (``order_id``, ``status``, ``exchange_update_timestamp`` or
    else ``order_timestamp``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    account_id: str = Field(
        ..., min_length=1, max_length=32, description="Account whose ticker delivered it."
    )
    received_at: float = Field(..., description="Receive time, epoch seconds.")
    data: dict[str, Any] = Field(..., description="Kite's order payload, unchanged.")

    @model_validator(mode="after")
    def _has_identity(self) -> OrderUpdate:
        for key in ("order_id", "status"):
            value = self.data.get(key)
            if not isinstance(value, str) or not value:
                raise ValueError(f"data.{key} must be a non-empty string")
        return self

    @property
    def order_id(self) -> str:
        """Kite's order id."""
        return str(self.data["order_id"])

    @property
    def status(self) -> str:
        """Kite's order status (``OPEN``, ``COMPLETE``, ...)."""
        return str(self.data["status"])

    @property
    def update_timestamp(self) -> str:
        """``exchange_update_timestamp``, else ``order_timestamp``, else empty (as text)."""
        for key in ("exchange_update_timestamp", "order_timestamp"):
            value = self.data.get(key)
            if value:
                return str(value)
        return ""


# --------------------------------------------------------------------------- published ticks

IST: Final = ZoneInfo("Asia/Kolkata")
_LEN_LTP, _LEN_INDEX_QUOTE, _LEN_INDEX_FULL, _LEN_QUOTE, _LEN_FULL = 8, 28, 32, 44, 184
_QUOTE_QTY_KEYS: Final = (
    "last_traded_quantity",
    "average_traded_price",
    "volume_traded",
    "total_buy_quantity",
    "total_sell_quantity",
)
_Columns = Mapping[str, Any]


def _timestamp(epoch: int) -> datetime | None:
    """kiteconnect's ``datetime.fromtimestamp``, in IST; None where it would fail."""
    try:
        return datetime.fromtimestamp(epoch, tz=IST)
    except (OverflowError, OSError, ValueError):
        return None


def _base(c: _Columns, i: int) -> dict[str, Any]:
    return {
        "tradable": c["tradable"][i],
        "mode": c["mode"][i],
        "instrument_token": c["instrument_token"][i],
        "last_price": c["last_price"][i],
    }


def _change(c: _Columns, i: int) -> float | int:
    return 0 if c["close"][i] == 0 else c["change"][i]


def _tick_index(c: _Columns, i: int) -> dict[str, Any]:
    d = _base(c, i)
    d["ohlc"] = {k: c[k][i] for k in ("high", "low", "open", "close")}
    d["change"] = _change(c, i)
    if c["packet_length"][i] == _LEN_INDEX_FULL:
        d["exchange_timestamp"] = _timestamp(c["exchange_timestamp"][i])
    return d


def _depth(c: _Columns, i: int, prefix: str) -> list[dict[str, Any]]:
    qty, price, orders = (c[f"{prefix}_{k}"][i] for k in ("qty", "price", "orders"))
    return [
        {"quantity": q, "price": p, "orders": o} for q, p, o in zip(qty, price, orders, strict=True)
    ]


def _tick_quote(c: _Columns, i: int) -> dict[str, Any]:
    d = _base(c, i)
    for key in _QUOTE_QTY_KEYS:
        d[key] = c[key][i]
    d["ohlc"] = {k: c[k][i] for k in ("open", "high", "low", "close")}
    d["change"] = _change(c, i)
    if c["packet_length"][i] == _LEN_FULL:
        d["last_trade_time"] = _timestamp(c["last_trade_time"][i])
        for key in ("oi", "oi_day_high", "oi_day_low"):
            d[key] = c[key][i]
        d["exchange_timestamp"] = _timestamp(c["exchange_timestamp"][i])
        d["depth"] = {"buy": _depth(c, i, "bid"), "sell": _depth(c, i, "ask")}
    return d


_BUILDERS: Final[dict[int, Callable[[_Columns, int], dict[str, Any]]]] = {
    _LEN_LTP: _base,
    _LEN_INDEX_QUOTE: _tick_index,
    _LEN_INDEX_FULL: _tick_index,
    _LEN_QUOTE: _tick_quote,
    _LEN_FULL: _tick_quote,
}


def to_kite_ticks(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The tick dicts kiteconnect's ``KiteTicker`` yields for a published tick message.

    ``message`` is one message of the ``ticker_tasks:ticks:stream`` stream (field ``m``) or of
    a ``ticker_tasks:ticks:{mode}`` channel, parsed from JSON. Keys, key order, values and
    Python types match kiteconnect 5.2.2's ``_parse_binary``, except that ``last_trade_time``
    and ``exchange_timestamp`` are timezone-aware datetimes in Asia/Kolkata.

    Raises:
        ValueError: Unknown message version or packet length.
    """
    if message.get("v") != 1:
        raise ValueError(f"unsupported tick message version {message.get('v')!r}")
    c: _Columns = message["columns"]
    ticks: list[dict[str, Any]] = []
    for i, length in enumerate(c["packet_length"]):
        builder = _BUILDERS.get(length)
        if builder is None:
            raise ValueError(f"row {i}: unknown packet_length {length}")
        ticks.append(builder(c, i))
    return ticks
