"""Column view of decoded tick rows: what published tick messages carry.

A published message holds one list per field (columns), not one object per tick: building it
is a handful of C-level ``tolist`` calls whatever the number of rows, and
:func:`schemas.ticks.to_kite_ticks` turns it back into kiteconnect's tick dicts.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ticker_tasks.kite.codec_layout import MODE_NAMES

Rows = npt.NDArray[np.void]

#: Columns of a published message, in order (``mode`` is kiteconnect's mode string).
MESSAGE_COLUMNS: Final[tuple[str, ...]] = (
    "instrument_token",
    "segment",
    "mode",
    "packet_length",
    "tradable",
    "last_price",
    "last_traded_quantity",
    "average_traded_price",
    "volume_traded",
    "total_buy_quantity",
    "total_sell_quantity",
    "open",
    "high",
    "low",
    "close",
    "change",
    "last_trade_time",
    "exchange_timestamp",
    "oi",
    "oi_day_high",
    "oi_day_low",
    "bid_qty",
    "bid_price",
    "bid_orders",
    "ask_qty",
    "ask_price",
    "ask_orders",
)

_MODE_STRINGS: Final = np.array(
    [MODE_NAMES.get(code, "") for code in range(max(MODE_NAMES) + 1)], dtype=object
)


def mode_names(rows: Rows) -> npt.NDArray[np.object_]:
    """kiteconnect's mode string (``ltp``/``quote``/``full``) of each row."""
    names: npt.NDArray[np.object_] = _MODE_STRINGS[rows["mode"].astype(np.intp)]
    return names


def column_arrays(rows: Rows) -> dict[str, Any]:
    """Every message column of ``rows`` as contiguous numpy arrays (``mode`` as a list of
    strings), for a serializer that writes numpy arrays directly (``orjson``)."""
    out: dict[str, Any] = {}
    for name in MESSAGE_COLUMNS:
        if name == "mode":
            out[name] = mode_names(rows).tolist()
        else:
            out[name] = np.ascontiguousarray(rows[name])
    return out


def columns(rows: Rows) -> dict[str, list[Any]]:
    """Every message column of ``rows`` as plain Python lists (JSON-ready).

    Depth columns (``bid_*``/``ask_*``) hold one 5-element list per row.
    """
    out: dict[str, list[Any]] = {}
    for name in MESSAGE_COLUMNS:
        if name == "mode":
            out[name] = mode_names(rows).tolist()
        else:
            out[name] = rows[name].tolist()
    return out
