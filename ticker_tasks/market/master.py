"""Instrument master refresh: validate a new dump, then swap it in one transaction.

A download that fails parsing or validation leaves the master untouched. A valid one is
upserted by natural key (exchange, tradingsymbol, expiry); instruments missing from it are
marked inactive, never deleted, so expired contracts keep their identity and candles. Kite
reuses tokens after expiry: the new holder of a token is a new row, the old one goes inactive.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ticker_tasks.db.models import NO_EXPIRY, Instrument
from ticker_tasks.market.instrument_dump import (
    DumpError,
    diff_dump,
    option_chain_fields,
    parse_dump,
    validate_dump,
)

log = logging.getLogger(__name__)

_UPDATED_COLUMNS = (
    "instrument_token",
    "exchange_token",
    "name",
    "segment",
    "instrument_type",
    "strike",
    "tick_size",
    "lot_size",
    "freeze_quantity",
    "active",
    "last_seen",
)


@dataclass(frozen=True)
class RefreshOutcome:
    """What a refresh did (or why it refused to)."""

    applied: bool
    problems: list[str] = field(default_factory=list)
    rows: int = 0
    added: int = 0
    changed: int = 0
    vanished: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON for task results and the CLI."""
        return {
            "applied": self.applied,
            "problems": self.problems,
            "rows": self.rows,
            "added": self.added,
            "changed": self.changed,
            "vanished": self.vanished,
            "counts": self.counts,
        }


def current_counts(session: Session) -> dict[str, int]:
    """Active instruments per segment."""
    query = (
        select(Instrument.segment, func.count())
        .where(Instrument.active)
        .group_by(Instrument.segment)
    )
    return {str(segment): int(count) for segment, count in session.execute(query).all()}


def current_master(session: Session) -> pd.DataFrame:
    """The active master as a frame with the dump's key and tracked columns."""
    query = select(
        Instrument.exchange,
        Instrument.tradingsymbol,
        Instrument.expiry,
        Instrument.instrument_token,
        Instrument.lot_size,
        Instrument.tick_size,
    ).where(Instrument.active)
    rows = session.execute(query).all()
    columns = ["exchange", "tradingsymbol", "expiry", "instrument_token", "lot_size", "tick_size"]
    return pd.DataFrame([tuple(r) for r in rows], columns=columns)


def _records(
    frame: pd.DataFrame, now: dt.datetime, freeze_quantities: Mapping[str, int]
) -> list[dict[str, Any]]:
    out = pd.DataFrame(
        {
            "exchange": frame["exchange"].astype(str),
            "tradingsymbol": frame["tradingsymbol"].astype(str),
            "expiry": frame["expiry"].fillna(NO_EXPIRY),
            "instrument_token": frame["instrument_token"].astype("int64"),
            "exchange_token": frame["exchange_token"].astype("int64"),
            "name": frame["name"].fillna("").astype(str),
            "segment": frame["segment"].astype(str),
            "instrument_type": frame["instrument_type"].astype(str),
            "strike": frame["strike"].astype("float64").round(6),
            "tick_size": frame["tick_size"].astype("float64").round(6),
            "lot_size": frame["lot_size"].astype("int64"),
        }
    )
    # Older dumps leave ``name`` blank for options: take the underlying from the symbol.
    underlying = option_chain_fields(frame)["underlying"]
    blank = out["name"].str.strip() == ""
    out.loc[blank, "name"] = underlying.reindex(out.index).where(blank, "").fillna("")
    derivative = out["segment"].str.contains("-") | out["exchange"].isin(["NFO", "BFO", "MCX"])
    freeze = out["name"].map(dict(freeze_quantities))
    out["freeze_quantity"] = freeze.where(derivative & freeze.notna(), None)
    out["active"] = True
    out["first_seen"] = now
    out["last_seen"] = now
    cleaned = out.astype(object).where(out.notna(), None)
    return [{str(k): v for k, v in row.items()} for row in cleaned.to_dict("records")]


def _upsert(session: Session, records: list[dict[str, Any]]) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(Instrument)
    statement = statement.on_conflict_do_update(
        index_elements=["exchange", "tradingsymbol", "expiry"],
        set_={name: statement.excluded[name] for name in _UPDATED_COLUMNS},
    )
    for start in range(0, len(records), 5000):
        session.execute(statement, records[start : start + 5000])


def refresh_master(
    session: Session,
    dump: bytes,
    *,
    tolerance: float,
    today: dt.date,
    now: dt.datetime,
    freeze_quantities: Mapping[str, int],
) -> RefreshOutcome:
    """Validate ``dump`` against the current master and apply it in the session's transaction.

    The caller commits; on a refused dump nothing was written.
    """
    try:
        frame = parse_dump(dump)
    except DumpError as exc:
        return RefreshOutcome(applied=False, problems=[str(exc)])
    report = validate_dump(frame, current_counts(session), tolerance=tolerance, today=today)
    if not report.ok:
        return RefreshOutcome(applied=False, problems=report.problems, counts=report.counts)
    diff = diff_dump(frame, current_master(session))
    _upsert(session, _records(frame, now, freeze_quantities))
    # Everything the dump did not carry (last_seen older than this refresh) goes inactive.
    session.execute(
        update(Instrument)
        .where(Instrument.active, Instrument.last_seen < now)
        .values(active=False)
        .execution_options(synchronize_session=False)
    )
    return RefreshOutcome(
        applied=True,
        rows=len(frame),
        added=len(diff.added),
        changed=len(diff.changed),
        vanished=len(diff.vanished),
        counts=report.counts,
    )
