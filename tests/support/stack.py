"""A runtime against a running simulator: one account with its token, the instrument master
loaded, an empty database before and after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cryptography.fernet import Fernet

from tests.support.db import truncate_all
from tests.support.simulator import SimulatorHandle
from ticker_tasks import accounts
from ticker_tasks.crypto import CredentialCipher
from ticker_tasks.market.jobs import refresh_instruments
from ticker_tasks.runtime import Runtime
from ticker_tasks.settings import load_settings


@dataclass(frozen=True)
class SimRuntime:
    """What :func:`sim_runtime` yields: ``env`` is the environment of worker processes."""

    runtime: Runtime
    cipher: CredentialCipher
    env: dict[str, str]


@contextmanager
def sim_runtime(
    sim: SimulatorHandle,
    *,
    database_url: str,
    redis_url: str,
    account_id: str,
    api_key: str,
    access_token: str,
) -> Iterator[SimRuntime]:
    """Build a runtime on ``sim`` with one account and a refreshed instrument master."""
    secret = Fernet.generate_key().decode()
    settings = load_settings(
        database_url=database_url, kite_rest_root=sim.rest_url, secret_keys=secret
    )
    runtime = Runtime.build(settings)
    try:
        truncate_all(runtime.engine)
        cipher = CredentialCipher.from_settings(settings)
        with runtime.sessions.begin() as session:
            accounts.add_account(
                session, cipher, account_id=account_id, api_key=api_key, api_secret="s"
            )
            accounts.set_access_token(session, cipher, account_id, access_token)
        outcome = refresh_instruments(runtime, account_id=account_id)
        assert outcome.applied, outcome.problems
        env = {
            "TICKER_REDIS_URL": redis_url,
            "TICKER_DATABASE_URL": database_url,
            "TICKER_KITE_REST_ROOT": sim.rest_url,
            "TICKER_KITE_WS_ROOT": sim.ws_url,
            "TICKER_SECRET_KEYS": secret,
        }
        yield SimRuntime(runtime, cipher, env)
    finally:
        truncate_all(runtime.engine)
        runtime.close()
