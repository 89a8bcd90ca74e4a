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

from collections.abc import Mapping
from typing import Any, Literal

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
