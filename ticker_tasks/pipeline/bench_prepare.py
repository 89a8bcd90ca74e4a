"""What ``ticker-tasks bench pipeline`` stores before streaming, and its children's environment.

:func:`prepare_database` migrates the bench's scratch database, stores its accounts (the same
api keys and tokens the simulator was started with), loads the simulator's instrument master
(database and Redis registry, so the workers know every token) and subscribes the first
instruments by token; :func:`child_env` points the streamer and the workers at the bench's
resources.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sqlalchemy import select

from ticker_tasks import accounts
from ticker_tasks.crypto import CredentialCipher
from ticker_tasks.db.models import Instrument
from ticker_tasks.errors import ConfigError, ServiceUnavailable
from ticker_tasks.market.jobs import refresh_instruments
from ticker_tasks.market.registry import RegistryCache
from ticker_tasks.runtime import Runtime
from ticker_tasks.settings import Settings
from ticker_tasks.subscriptions import store

#: Variables the bench sets or clears for its children (any value in the environment goes).
_OWN_VARIABLES: Final = (
    "TICKER_BROKER_URL",
    "TICKER_STREAMER_CAPTURE_DIR",
    "TICKER_STREAMER_SOURCE",
)


@dataclass(frozen=True)
class BenchAccount:
    """One account of the bench, in the database and in the simulator."""

    account_id: str
    api_key: str
    access_token: str


def bench_accounts(count: int) -> list[BenchAccount]:
    """The bench's accounts: ``bench0``, ``bench1``, ..."""
    return [BenchAccount(f"bench{i}", f"bench_key_{i}", f"bench_token_{i}") for i in range(count)]


def _migrate(settings: Settings) -> None:
    from alembic.config import Config

    from alembic import command

    root = Path(__file__).resolve().parents[2]
    config = Config(str(root / "alembic.ini"))
    config.attributes["skip_logging"] = True
    config.attributes["url"] = settings.database_url
    command.upgrade(config, "head")


def _store_accounts(runtime: Runtime, stored: list[BenchAccount]) -> None:
    cipher = CredentialCipher.from_settings(runtime.settings)
    with runtime.sessions.begin() as session:
        for account in stored:
            accounts.add_account(
                session,
                cipher,
                account_id=account.account_id,
                api_key=account.api_key,
                api_secret=f"secret-{account.api_key}",
            )
            accounts.set_access_token(session, cipher, account.account_id, account.access_token)


def _subscribe(runtime: Runtime, instruments: int, mode: str) -> None:
    """Subscribe the first ``instruments`` non-index tokens (canaries excepted) in ``mode``."""
    canaries = set(runtime.settings.subscription_canary_tokens)
    with runtime.sessions() as session:
        tokens = [
            token
            for token in session.scalars(
                select(Instrument.instrument_token)
                .where(Instrument.active, Instrument.segment != "INDICES")
                .order_by(Instrument.instrument_token)
            )
            if token not in canaries
        ]
    if len(tokens) < instruments:
        raise ConfigError(f"the simulator lists {len(tokens)} instruments, not {instruments}")
    table = RegistryCache(runtime.redis, check_interval_s=0).current()
    with runtime.sessions.begin() as session:
        for token in tokens[:instruments]:
            store.add_instrument(session, table, token, mode)
    store.notify_changed(runtime.redis)


def prepare_database(
    settings: Settings, stored: list[BenchAccount], *, instruments: int, mode: str
) -> None:
    """Migrate, store the accounts, load the instrument master, subscribe the instruments.

    Raises:
        ServiceUnavailable: The simulator's instrument dump was refused.
        ConfigError: The simulator lists fewer instruments than asked for.
    """
    _migrate(settings)
    runtime = Runtime.build(settings)
    try:
        _store_accounts(runtime, stored)
        if not refresh_instruments(runtime, account_id=stored[0].account_id).applied:
            raise ServiceUnavailable("the simulator's instrument dump was refused")
        _subscribe(runtime, instruments, mode)
    finally:
        runtime.close()


def child_env(settings: Settings, folder: Path) -> dict[str, str]:
    """The environment of the streamer and the workers: the bench's resources.

    The rest of the environment (other ``TICKER_*`` tunables included) is passed on, so a
    setting can be tried under load, e.g. ``TICKER_STREAMER_BATCH_MAX_DELAY_S``.
    """
    env = {k: v for k, v in os.environ.items() if k not in _OWN_VARIABLES}
    secret = settings.secret_keys.get_secret_value() if settings.secret_keys else ""
    env.update(
        TICKER_REDIS_URL=settings.redis_url,
        TICKER_DATABASE_URL=settings.database_url,
        TICKER_SECRET_KEYS=secret,
        TICKER_KITE_REST_ROOT=settings.kite_rest_root,
        TICKER_KITE_WS_ROOT=settings.kite_ws_root,
        TICKER_STREAMER_SOURCE="mock",
        TICKER_STREAMER_METRICS_PORT="0",
        TICKER_STREAMER_JOURNAL_DIR=str(folder / "journal"),
        TICKER_LOG_LEVEL="WARNING",
    )
    return env
