"""Instrument master refresh on PostgreSQL: validate before swapping, never delete."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ticker_tasks.db.models import Instrument
from ticker_tasks.market.master import refresh_master
from ticker_tasks.market.registry import RegistryCache, publish_snapshot

DUMP = (Path(__file__).parents[1] / "fixtures" / "kite" / "instruments_all.csv").read_bytes()
TODAY = dt.date(2017, 11, 28)  # every contract of the recorded dump was live then
FREEZE = {"BANKNIFTY": 900}


def _apply(session: Session, dump: bytes, *, at: dt.datetime):
    return refresh_master(
        session, dump, tolerance=0.2, today=TODAY, now=at, freeze_quantities=FREEZE
    )


def _lines(dump: bytes) -> list[bytes]:
    return dump.strip().splitlines()


def _counts(session: Session) -> tuple[int, int]:
    total = session.scalar(select(func.count()).select_from(Instrument))
    active = session.scalar(select(func.count()).select_from(Instrument).where(Instrument.active))
    return int(total or 0), int(active or 0)


@pytest.fixture
def loaded(db_engine):
    with Session(db_engine) as session, session.begin():
        outcome = _apply(session, DUMP, at=dt.datetime(2017, 12, 20, 3, tzinfo=dt.UTC))
    assert outcome.applied, outcome.problems
    return db_engine


def test_first_load_applies_every_row(loaded):
    with Session(loaded) as session:
        assert _counts(session) == (99, 99)
        option = session.scalars(
            select(Instrument).where(Instrument.tradingsymbol == "BANKNIFTY18JAN23500CE")
        ).one()
    assert option.instrument_token == 12073986
    assert option.expiry == dt.date(2018, 1, 25)
    assert option.lot_size == 40


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: d[: len(d) // 2], id="cut-mid-row"),
        pytest.param(lambda d: b"\n".join(_lines(d)[:30]), id="shrunken"),
        pytest.param(lambda d: b"<html>502 Bad Gateway</html>", id="garbage"),
    ],
)
def test_a_bad_dump_leaves_the_master_unchanged(loaded, damage):
    with Session(loaded) as session:
        before = session.execute(
            select(Instrument.instrument_id, Instrument.instrument_token, Instrument.active)
        ).all()
    with Session(loaded) as session, session.begin():
        outcome = _apply(session, damage(DUMP), at=dt.datetime(2017, 12, 21, 3, tzinfo=dt.UTC))
    assert not outcome.applied
    assert outcome.problems
    with Session(loaded) as session:
        after = session.execute(
            select(Instrument.instrument_id, Instrument.instrument_token, Instrument.active)
        ).all()
    assert sorted(after) == sorted(before)


def test_vanished_contract_goes_inactive_and_its_token_moves_to_the_new_holder(
    loaded, redis_client
):
    # Given the next dump lacks one option and lists a new contract holding its token
    lines = _lines(DUMP)
    old = next(line for line in lines if b",BANKNIFTY18JAN23500CE," in line)
    new = old.replace(b"BANKNIFTY18JAN23500CE", b"BANKNIFTY18FEB23500CE").replace(
        b"2018-01-25", b"2018-02-22"
    )
    dump = b"\r\n".join([line for line in lines if line != old] + [new])
    # When it is applied
    with Session(loaded) as session, session.begin():
        outcome = _apply(session, dump, at=dt.datetime(2017, 12, 21, 3, tzinfo=dt.UTC))
    assert outcome.applied, outcome.problems
    assert (outcome.added, outcome.vanished) == (1, 1)
    # I expect both rows kept, the old one inactive, and the token mapped to the new one
    with Session(loaded) as session:
        assert _counts(session) == (100, 99)
        version = publish_snapshot(redis_client, session)
    table = RegistryCache(redis_client, check_interval_s=0).current()
    assert table.version == version
    assert table.by_token(12073986).tradingsymbol == "BANKNIFTY18FEB23500CE"
    expired = table.by_symbol("NFO:BANKNIFTY18JAN23500CE")
    assert expired is not None and not expired.active
    assert table.by_token(12073986).freeze_quantity == 900


def test_every_process_sees_a_new_version_without_restart(loaded, redis_client):
    cache = RegistryCache(redis_client, check_interval_s=0)
    with Session(loaded) as session:
        first = publish_snapshot(redis_client, session)
    assert cache.current().version == first
    with Session(loaded) as session:
        second = publish_snapshot(redis_client, session)
    assert cache.current().version == second > first
