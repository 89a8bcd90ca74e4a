"""Kite instruments CSV dumps: parse, sanity-check against the current master, diff.

``GET /instruments`` answers a CSV (KITE_PROTOCOL.md §2.6) of 30,000+ rows. A refresh must never
replace a good master with a truncated or garbled dump, so the flow is::

    frame = parse_dump(data)                       # DumpError on a broken file
    report = validate_dump(frame, current_counts, tolerance=..., today=...)
    if report.ok: diff = diff_dump(frame, current)  # what to insert / update / deactivate

Everything is vectorized pandas; nothing loops over rows. Choices worth knowing:

* Text is read verbatim (no NA guessing: a tradingsymbol ``NA`` stays ``"NA"``).
* ``expiry`` holds :class:`datetime.date` objects; a blank expiry becomes
  :data:`~ticker_tasks.db.models.NO_EXPIRY`, as in the database.
* Derivatives are instrument types FUT, CE and PE; options are CE and PE.
* Index rows (segment ``INDICES``) are not tradable and Kite publishes them with tick_size and
  lot_size 0, so the "> 0" checks apply to tradable segments only.
* ``instrument_token == exchange_token << 8 | segment id`` is checked (KITE_PROTOCOL.md §1.5).
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from ticker_tasks.db.models import NO_EXPIRY
from ticker_tasks.errors import ValidationError

#: The header of a Kite instruments dump, in order.
DUMP_COLUMNS = (
    "instrument_token",
    "exchange_token",
    "tradingsymbol",
    "name",
    "last_price",
    "expiry",
    "strike",
    "tick_size",
    "lot_size",
    "instrument_type",
    "segment",
    "exchange",
)
#: dtypes of :func:`parse_dump`'s frame (``expiry`` holds ``datetime.date`` objects).
DUMP_DTYPES: Mapping[str, str] = {
    "instrument_token": "int64",
    "exchange_token": "int64",
    "tradingsymbol": "str",
    "name": "str",
    "last_price": "float64",
    "expiry": "object",
    "strike": "float64",
    "tick_size": "float64",
    "lot_size": "int64",
    "instrument_type": "str",
    "segment": "str",
    "exchange": "str",
}
#: An instrument's identity: Kite reuses tokens, never this triple.
NATURAL_KEY = ["exchange", "tradingsymbol", "expiry"]
#: Columns whose change :func:`diff_dump` reports.
TRACKED_COLUMNS = ["instrument_token", "lot_size", "tick_size"]
DERIVATIVE_TYPES = ("FUT", "CE", "PE")
OPTION_TYPES = ("CE", "PE")
INDEX_SEGMENT = "INDICES"
#: Derivatives may expire this many days before ``today`` (dumps fetched around expiry).
EXPIRY_GRACE_DAYS = 4
_REQUIRED_TEXT = ("tradingsymbol", "instrument_type", "segment", "exchange")
_INT_COLUMNS = ("instrument_token", "exchange_token", "lot_size")
_FLOAT_COLUMNS = ("last_price", "strike", "tick_size")
_EXTRA = "__extra__"
_EXAMPLES = 3
_WEEKLY_OR_MONTHLY = r"^(.+?)\d{2}(?:JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC|[1-9OND]\d{2})"
_OPTION_SYMBOL = _WEEKLY_OR_MONTHLY + r"\d+(?:\.\d+)?(?:CE|PE)$"


class DumpError(ValidationError):
    """An instruments dump is empty, truncated or garbled."""


@dataclass(frozen=True)
class DumpReport:
    """Outcome of :func:`validate_dump`.

    Attributes:
        ok: True when no problem was found.
        problems: One line per problem, each with a count and a few example symbols.
        counts: Rows per segment in the new dump.
    """

    ok: bool
    problems: list[str]
    counts: dict[str, int]


@dataclass(frozen=True, eq=False)
class DumpDiff:
    """What a new dump changes, by natural key (exchange, tradingsymbol, expiry).

    Attributes:
        added: Rows of the new dump whose key is not in the current master.
        changed: Keys in both whose token, lot size or tick size changed, with
            ``<column>_new`` and ``<column>_old`` for each tracked column.
        vanished: Rows of the current master whose key is not in the new dump.
    """

    added: pd.DataFrame
    changed: pd.DataFrame
    vanished: pd.DataFrame

    @property
    def empty(self) -> bool:
        """Whether the dump changes nothing."""
        return self.added.empty and self.changed.empty and self.vanished.empty

    def summary(self) -> str:
        """One line for logs and task results."""
        return f"added={len(self.added)} changed={len(self.changed)} vanished={len(self.vanished)}"


def parse_dump(data: bytes) -> pd.DataFrame:
    """Parse a Kite instruments CSV into a typed frame (columns and dtypes of DUMP_DTYPES).

    Args:
        data: The raw response body (UTF-8, optional BOM, LF or CRLF line ends).

    Returns:
        One row per instrument, index 0..n-1.

    Raises:
        DumpError: Empty body, wrong header, no rows, a row with too many or too few fields,
            a blank required field, or a value that does not parse.
    """
    header = data.split(b"\n", 1)[0].rstrip(b"\r").removeprefix(b"\xef\xbb\xbf")
    if not header.strip():
        raise DumpError("instruments dump is empty")
    if header != ",".join(DUMP_COLUMNS).encode():
        raise DumpError(f"instruments dump has an unexpected header: {header[:160]!r}")
    try:
        raw = pd.read_csv(
            io.BytesIO(data),
            header=None,
            skiprows=1,
            names=[*DUMP_COLUMNS, _EXTRA],
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            index_col=False,
            encoding="utf-8",
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DumpError(f"instruments dump is unreadable: {str(exc)[:200]}") from None
    if raw.empty:
        raise DumpError("instruments dump has a header but no rows")
    _reject(raw[_EXTRA] != "", "with more fields than the header")
    for column in _REQUIRED_TEXT:
        _reject(raw[column].str.strip() == "", f"with a blank {column}")
    frame = pd.DataFrame(index=raw.index)
    for column in DUMP_COLUMNS:
        if column in _INT_COLUMNS or column in _FLOAT_COLUMNS:
            frame[column] = _numeric(raw, column)
        elif column == "expiry":
            frame[column] = _expiry(raw)
        else:
            frame[column] = raw[column]
    return frame.astype(dict(DUMP_DTYPES))


def _reject(bad: pd.Series[bool] | npt.NDArray[np.bool_], what: str) -> None:
    flags = np.asarray(bad, dtype=bool)
    if flags.any():
        first = int(np.flatnonzero(flags)[0])
        raise DumpError(
            f"instruments dump: {int(flags.sum())} row(s) {what} (first at line {first + 2})"
        )


def _numeric(raw: pd.DataFrame, column: str) -> pd.Series[float]:
    values = pd.to_numeric(raw[column].str.strip(), errors="coerce").astype("float64")
    finite = np.isfinite(values.to_numpy())
    _reject(~finite, f"with a non-numeric {column}")
    if column in _INT_COLUMNS:
        whole = values.to_numpy() % 1 == 0
        _reject(~whole, f"with a non-integer {column}")
    return values


def _expiry(raw: pd.DataFrame) -> pd.Series[dt.date]:
    text = raw["expiry"].str.strip()
    shaped = text.str.fullmatch(r"\d{4}-\d{2}-\d{2}") | (text == "")
    _reject(~shaped, "with an expiry not in YYYY-MM-DD form")
    mapping: dict[str, dt.date] = {"": NO_EXPIRY}
    for value in text.unique():
        if value and value not in mapping:
            try:
                mapping[value] = dt.date.fromisoformat(value)
            except ValueError:
                raise DumpError(f"instruments dump: invalid expiry {value!r}") from None
    return text.map(mapping).astype(object)


def expiry_days(expiry: pd.Series[Any]) -> npt.NDArray[np.datetime64]:
    """Expiries (dates or datetime64) as a ``datetime64[D]`` array for vectorized comparison."""
    return np.asarray(expiry.to_numpy(), dtype="datetime64[D]")


def validate_dump(
    new: pd.DataFrame,
    current_counts: Mapping[str, int],
    *,
    tolerance: float,
    today: dt.date,
    expiry_grace_days: int = EXPIRY_GRACE_DAYS,
) -> DumpReport:
    """Check a parsed dump before it replaces the master.

    Args:
        new: A frame from :func:`parse_dump`.
        current_counts: Rows per segment in the current master (empty on the first load).
        tolerance: Largest allowed shrink of a segment, as a share (0.2 = 20 %); growth always
            passes; a segment that vanished entirely is always a problem.
        today: The trading day of the refresh (IST).
        expiry_grace_days: Derivatives may have expired this many days before ``today``.

    Returns:
        The report; ``ok`` is false when any problem was found.

    Raises:
        ValidationError: ``tolerance`` outside [0, 1] or ``new`` lacks dump columns.
    """
    if not 0 <= tolerance <= 1:
        raise ValidationError(f"tolerance {tolerance} outside [0, 1]")
    missing = [c for c in DUMP_COLUMNS if c not in new.columns]
    if missing:
        raise ValidationError(f"not an instruments dump frame: missing {missing}")
    counts = {str(k): int(v) for k, v in new["segment"].value_counts().sort_index().items()}
    problems = [] if len(new) else ["dump has no rows"]
    for segment, before in sorted(current_counts.items()):
        after = counts.get(segment, 0)
        if before > 0 and after == 0:
            problems.append(f"segment {segment} vanished (had {before} rows)")
        elif after < before * (1 - tolerance):
            problems.append(
                f"segment {segment} shrank from {before} to {after} rows "
                f"({1 - after / before:.0%} > tolerance {tolerance:.0%})"
            )
    problems.extend(_row_problems(new, today - dt.timedelta(days=expiry_grace_days)))
    return DumpReport(ok=not problems, problems=problems, counts=counts)


def _row_problems(new: pd.DataFrame, cutoff: dt.date) -> list[str]:
    kind = new["instrument_type"]
    derivative = kind.isin(DERIVATIVE_TYPES)
    option = kind.isin(OPTION_TYPES)
    tradable = new["segment"] != INDEX_SEGMENT
    days = pd.Series(expiry_days(new["expiry"]), index=new.index)
    no_expiry = days == np.datetime64(NO_EXPIRY, "D")
    token = new["instrument_token"]
    strike, tick, lot = new["strike"], new["tick_size"], new["lot_size"]
    expired = days < np.datetime64(cutoff, "D")
    segment_id = pd.Series(np.right_shift(token.to_numpy(), 8), index=new.index)
    checks: list[tuple[pd.Series[bool], str]] = [
        (token.duplicated(keep=False), "share an instrument_token"),
        (new.duplicated(subset=NATURAL_KEY, keep=False), "share (exchange, tradingsymbol, expiry)"),
        (derivative & no_expiry, "are derivatives without expiry"),
        (derivative & expired, f"are derivatives that expired before {cutoff}"),
        (~derivative & ~no_expiry, "are not derivatives but have an expiry"),
        (option & ~(strike > 0), "are options with strike <= 0"),
        (~option & (strike != 0), "are not options but have a strike"),
        (tradable & ~(tick > 0), "have tick_size <= 0"),
        (tradable & ~(lot > 0), "have lot_size <= 0"),
        (~tradable & ((tick < 0) | (lot < 0)), "are indices with a negative tick or lot size"),
        (segment_id != new["exchange_token"], "have instrument_token >> 8 != exchange_token"),
    ]
    problems: list[str] = []
    for bad, what in checks:
        if bool(bad.any()):
            examples = ", ".join(new.loc[bad, "tradingsymbol"].head(_EXAMPLES).astype(str))
            problems.append(f"{int(bad.sum())} rows {what} (e.g. {examples})")
    return problems


def _normalised(frame: pd.DataFrame) -> pd.DataFrame:
    """Key + tracked columns with comparable dtypes (the master may come from the database)."""
    out = frame[[*NATURAL_KEY, *TRACKED_COLUMNS]].copy()
    if pd.api.types.is_datetime64_any_dtype(out["expiry"]):
        out["expiry"] = out["expiry"].dt.date
    out["expiry"] = out["expiry"].fillna(NO_EXPIRY).astype(object)
    out["tick_size"] = out["tick_size"].astype("float64")
    out["instrument_token"] = out["instrument_token"].astype("int64")
    out["lot_size"] = out["lot_size"].astype("int64")
    return out


def diff_dump(new: pd.DataFrame, current: pd.DataFrame) -> DumpDiff:
    """Compare a new dump with the current master by natural key.

    Args:
        new: A frame from :func:`parse_dump`.
        current: The current master with at least exchange, tradingsymbol, expiry (date,
            NO_EXPIRY or NULL for none, or datetime64), instrument_token, lot_size, tick_size.

    Returns:
        Added rows (from ``new``), changed keys (old and new values) and vanished rows (from
        ``current``).
    """
    fresh, known = _normalised(new), _normalised(current)
    fresh_keys = pd.MultiIndex.from_frame(fresh[NATURAL_KEY])
    known_keys = pd.MultiIndex.from_frame(known[NATURAL_KEY])
    added = new.loc[~fresh_keys.isin(known_keys)]
    vanished = current.loc[~known_keys.isin(fresh_keys)]
    both = fresh.merge(known, on=NATURAL_KEY, how="inner", suffixes=("_new", "_old"))
    moved = (both["instrument_token_new"] != both["instrument_token_old"]) | (
        both["lot_size_new"] != both["lot_size_old"]
    )
    tick_moved = ~np.isclose(both["tick_size_new"], both["tick_size_old"], rtol=0, atol=1e-9)
    changed = both.loc[moved | tick_moved].reset_index(drop=True)
    return DumpDiff(added=added, changed=changed, vanished=vanished)


def option_chain_fields(frame: pd.DataFrame) -> pd.DataFrame:
    """Option rows with the fields an option chain needs.

    The underlying is the ``name`` column; when Kite leaves it blank (older dumps) it is taken
    from the tradingsymbol (``NIFTY24JAN21000CE`` / weekly ``NIFTY2411821000CE`` -> ``NIFTY``);
    it stays blank when neither gives one.

    Args:
        frame: A frame from :func:`parse_dump`.

    Returns:
        Columns instrument_token, exchange, tradingsymbol, underlying, expiry, strike,
        option_type (``CE``/``PE``), lot_size, tick_size; the input's index.
    """
    options = frame.loc[frame["instrument_type"].isin(OPTION_TYPES)]
    name = options["name"].astype(str).str.strip()
    parsed = options["tradingsymbol"].astype(str).str.extract(_OPTION_SYMBOL, expand=False)
    underlying = name.where(name != "", parsed.fillna(""))
    return pd.DataFrame(
        {
            "instrument_token": options["instrument_token"],
            "exchange": options["exchange"],
            "tradingsymbol": options["tradingsymbol"],
            "underlying": underlying.astype("str"),
            "expiry": options["expiry"],
            "strike": options["strike"],
            "option_type": options["instrument_type"],
            "lot_size": options["lot_size"],
            "tick_size": options["tick_size"],
        },
        index=options.index,
    )
