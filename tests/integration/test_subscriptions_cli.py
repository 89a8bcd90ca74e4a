"""``ticker-tasks subscriptions add|remove|list`` as a subprocess, on PostgreSQL and Redis."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tests.support.instruments import instrument_row
from ticker_tasks.db.models import Instrument, Subscription
from ticker_tasks.market.calendar import IST
from ticker_tasks.market.registry import publish_snapshot
from ticker_tasks.subscriptions import store

pytestmark = pytest.mark.integration

TODAY = dt.datetime.now(IST).date()
EXP1 = TODAY + dt.timedelta(days=3)
EXP2 = TODAY + dt.timedelta(days=31)
INFY = 408065
FUTURE = 99_001
STRIKES = range(23_800, 24_201, 50)
MESSAGE_TIMEOUT_S = 5.0


def _option_token(expiry: dt.date, strike: int, kind: str) -> int:
    return (10_000 if expiry == EXP1 else 20_000) + (strike // 50) * 2 + (kind == "PE")


def _instruments() -> list[Instrument]:
    rows = [
        instrument_row(1, INFY, "INFY", "EQ", exchange="NSE", name="INFOSYS"),
        instrument_row(2, FUTURE, f"NIFTY{EXP2:%y%b}FUT".upper(), "FUT", expiry=EXP2),
    ]
    iid = 10
    for expiry in (EXP1, EXP2):
        for strike in STRIKES:
            for kind in ("CE", "PE"):
                symbol = f"NIFTY{expiry:%y%m%d}{strike}{kind}"
                token = _option_token(expiry, strike, kind)
                rows.append(instrument_row(iid, token, symbol, kind, expiry=expiry, strike=strike))
                iid += 1
    return rows


@pytest.fixture
def registry(db_engine: Engine, redis_client: redis.Redis) -> Engine:
    """The test instruments in the database and published as the registry."""
    with Session(db_engine) as session, session.begin():
        session.add_all(_instruments())
    with Session(db_engine) as session:
        publish_snapshot(redis_client, session)
    return db_engine


@pytest.fixture
def changes(redis_client: redis.Redis) -> Iterator[redis.client.PubSub]:
    """A subscriber of the subscriptions-changed channel."""
    pubsub = redis_client.pubsub()
    pubsub.subscribe(store.SUBSCRIPTIONS_CHANNEL)
    # Wait for the subscription to be confirmed, so no later message is missed.
    confirmed = pubsub.get_message(timeout=MESSAGE_TIMEOUT_S)
    assert confirmed is not None and confirmed["type"] == "subscribe"
    yield pubsub
    pubsub.close()


def _cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ticker_tasks.cli", "subscriptions", *args],
        env={**os.environ, "TICKER_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _ok(*args: str, url: str) -> str:
    result = _cli(*args, url=url)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def _listed(url: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(_ok("list", "--json", url=url))
    return listed


def _published(pubsub: redis.client.PubSub, client: redis.Redis) -> int:
    """The new version, once its notification arrived (it must come).

    Channels are server-wide: another test run on the same Redis server may publish too, so
    messages are read until the one announcing this database's version.
    """
    version = store.current_version(client)
    deadline = time.monotonic() + MESSAGE_TIMEOUT_S
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
        if message is not None and message["type"] == "message":
            assert message["channel"] == store.SUBSCRIPTIONS_CHANNEL.encode()
            if int(message["data"]) == version:
                return version
    raise AssertionError(f"no change notification of version {version} was published")


def test_add_list_remove_by_symbol_token_and_chain(
    registry: Engine,
    migrated_postgres_url: str,
    changes: redis.client.PubSub,
    redis_client: redis.Redis,
) -> None:
    url = migrated_postgres_url
    start = store.current_version(redis_client)

    out = _ok("add", "NSE:INFY", "--mode", "full", url=url)
    assert "NSE:INFY" in out
    v1 = _published(changes, redis_client)
    _ok("add", str(FUTURE), "--mode", "ltp", url=url)
    v2 = _published(changes, redis_client)
    _ok("add", "--underlying", "NIFTY", "--expiry", "next", "--strikes", "2", url=url)
    v3 = _published(changes, redis_client)
    _ok("add", "--underlying", "nifty", "--expiry", EXP2.isoformat(), "--mode", "full", url=url)
    v4 = _published(changes, redis_client)
    assert start < v1 < v2 < v3 < v4

    listed = _listed(url)
    assert [(s["target"], s["instrument_token"], s["mode"]) for s in listed] == [
        ("NSE:INFY", INFY, "full"),
        (f"NFO:NIFTY{EXP2:%y%b}FUT".upper(), FUTURE, "ltp"),
        (f"NIFTY {EXP1} ±2", None, "quote"),
        (f"NIFTY {EXP2} ±{10}", None, "full"),
    ]
    assert [(s["underlying"], s["expiry"]) for s in listed[2:]] == [
        ("NIFTY", EXP1.isoformat()),
        ("NIFTY", EXP2.isoformat()),
    ]
    table = _ok("list", url=url).splitlines()
    assert table[0].split() == ["id", "subscription", "token", "mode", "active"]
    assert len(table) == 5 and "NSE:INFY" in table[1] and str(INFY) in table[1]

    # Adding again is idempotent: same subscription, new mode.
    _ok("add", str(INFY), "--mode", "ltp", url=url)
    _published(changes, redis_client)
    again = _listed(url)
    assert len(again) == 4 and again[0]["mode"] == "ltp"
    assert again[0]["subscription_id"] == listed[0]["subscription_id"]

    _ok("remove", "NSE:INFY", url=url)
    _published(changes, redis_client)
    _ok("remove", str(FUTURE), url=url)
    _published(changes, redis_client)
    _ok("remove", "--underlying", "NIFTY", "--expiry", EXP1.isoformat(), url=url)
    _published(changes, redis_client)
    _ok("remove", "--id", str(listed[3]["subscription_id"]), url=url)
    _published(changes, redis_client)
    assert _listed(url) == []
    assert "(no subscriptions)" in _ok("list", url=url)
    with Session(registry) as session:
        assert session.scalars(select(Subscription)).all() == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("add", "NSE:NOPE"), "unknown instrument 'NSE:NOPE'"),
        (("add", "NSE:INFY", "--mode", "fast"), "unknown mode 'fast'"),
        (("add", "INFY"), "not a token nor EXCHANGE:TRADINGSYMBOL"),
        (("add", "--underlying", "NIFTY", "--expiry", "2020-01-02"), "no NIFTY options expire"),
        (("add", "--underlying", "NIFTY", "--expiry", "soon"), "expiry must be YYYY-MM-DD"),
        (("add", "--underlying", "NIFTY"), "needs both --underlying and --expiry"),
        (("add",), "give exactly one of"),
        (("remove", "NSE:INFY"), "no subscription of NSE:INFY"),
        (("remove", "--id", "12345"), "no subscription of subscription 12345"),
    ],
)
def test_bad_input_is_one_line_and_exit_1_without_a_change(
    registry: Engine,
    migrated_postgres_url: str,
    redis_client: redis.Redis,
    args: tuple[str, ...],
    expected: str,
) -> None:
    before = store.current_version(redis_client)
    result = _cli(*args, url=migrated_postgres_url)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ticker-tasks: ") and expected in lines[0]
    assert "Traceback" not in result.stderr
    # notify_changed bumps the version and publishes in one script: no bump, no message.
    assert store.current_version(redis_client) == before
    with Session(registry) as session:
        assert session.scalars(select(Subscription)).all() == []
