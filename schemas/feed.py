"""Feed outages: when a ticker connection was not delivering ticks.

Redis stream :data:`OUTAGES_STREAM` (``ticker_tasks:feed:outages``)
--------------------------------------------------------------------

Every outage of a ticker connection (from the moment it stopped delivering until it was
subscribed again) is appended once, when it ends, with ``XADD ... MAXLEN ~``
:data:`OUTAGES_STREAM_MAXLEN`. Bar builders and quality checks read it to tell a *feed gap*
(no ticks because we were not connected) from an instrument that did not trade. Each entry's
fields are plain strings (:meth:`Outage.to_fields`):

=============  =================================================================
field          value
=============  =================================================================
``account_id`` account holding the connection
``connection`` stable connection id, e.g. ``ACCOUNT:0``
``tokens``     instrument tokens subscribed on it, comma-separated (may be empty)
``start``      epoch seconds of the last frame before the outage (or the failed connect)
``end``        epoch seconds when the connection delivered again (or gave up)
``reason``     short text: ``closed``, ``silent``, ``token_expired``, ...
=============  =================================================================

Read an entry back with :meth:`Outage.from_fields` (bytes or str keys and values).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, model_validator

OUTAGES_STREAM: Final = "ticker_tasks:feed:outages"
#: Approximate length cap of the stream (``XADD MAXLEN ~``).
OUTAGES_STREAM_MAXLEN: Final = 100_000

_FIELDS: Final = ("account_id", "connection", "tokens", "start", "end", "reason")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Outage(BaseModel):
    """One connection outage: which instruments had no feed, from when to when."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    account_id: str = Field(..., min_length=1, max_length=32)
    connection: str = Field(..., min_length=1, max_length=64)
    tokens: list[int] = Field(..., description="Instrument tokens subscribed on the connection.")
    start: float = Field(..., ge=0, description="Outage start, epoch seconds.")
    end: float = Field(..., ge=0, description="Outage end, epoch seconds.")
    reason: str = Field(..., min_length=1, max_length=64)

    @model_validator(mode="after")
    def _ordered(self) -> Outage:
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) is before start ({self.start})")
        return self

    def to_fields(self) -> dict[str, str]:
        """The entry's fields for ``XADD`` (plain strings; floats keep full precision)."""
        return {
            "account_id": self.account_id,
            "connection": self.connection,
            "tokens": ",".join(str(token) for token in self.tokens),
            "start": repr(self.start),
            "end": repr(self.end),
            "reason": self.reason,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[bytes, bytes] | Mapping[str, str]) -> Outage:
        """Parse an entry read with ``XRANGE``/``XREAD`` (bytes or decoded strings).

        Raises:
            pydantic.ValidationError: A field is missing or malformed.
        """
        values = {_text(key): _text(value) for key, value in fields.items()}
        tokens = values.get("tokens", "")
        data: dict[str, object] = {name: values.get(name) for name in _FIELDS}
        data["tokens"] = [token for token in tokens.split(",") if token]
        return cls.model_validate(data)
