"""Reference-data jobs: instrument master refresh and the daily token check.

They take the process runtime (database sessions, Redis, Kite clients) explicitly and are
called by thin Celery tasks and by the CLI.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from ticker_tasks import accounts
from ticker_tasks.crypto import CredentialCipher
from ticker_tasks.errors import AuthError, RetryableError
from ticker_tasks.market.calendar import IST
from ticker_tasks.market.master import RefreshOutcome, refresh_master
from ticker_tasks.market.registry import publish_snapshot
from ticker_tasks.metrics import Metrics
from ticker_tasks.runtime import Runtime

log = logging.getLogger(__name__)


def refresh_instruments(runtime: Runtime, *, account_id: str | None = None) -> RefreshOutcome:
    """Download the dump with an account's client, validate, apply and publish the registry.

    A refused dump leaves the master untouched; it is counted and logged as an alert.
    """
    cipher = CredentialCipher.from_settings(runtime.settings)
    with runtime.sessions() as session:
        chosen = account_id or accounts.default_account_id(session)
        account = accounts.kite_account(session, cipher, chosen)
    dump = runtime.kite_clients.get(account).instruments_csv(None)
    now = dt.datetime.now(dt.UTC)
    metrics = Metrics(runtime.redis)
    with runtime.sessions.begin() as session:
        outcome = refresh_master(
            session,
            dump,
            tolerance=runtime.settings.instrument_count_tolerance,
            today=now.astimezone(IST).date(),
            now=now,
            freeze_quantities=runtime.settings.freeze_quantities,
        )
    if not outcome.applied:
        metrics.incr("instrument_refresh_rejected")
        log.error(
            "ALERT instrument dump refused, master unchanged: %s", "; ".join(outcome.problems)
        )
        return outcome
    with runtime.sessions() as session:
        version = publish_snapshot(runtime.redis, session)
    metrics.incr("instrument_refresh_applied")
    metrics.set_gauge("instrument_registry_version", version)
    log.info("instrument master refreshed: %s (registry version %d)", outcome.as_dict(), version)
    return outcome


@dataclass(frozen=True)
class TokenCheck:
    """The outcome of one account's token validation."""

    account_id: str
    valid: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON for task results."""
        return {"account_id": self.account_id, "valid": self.valid, "detail": self.detail}


def check_tokens(runtime: Runtime) -> list[TokenCheck]:
    """Validate every enabled account's token with a profile call; report the invalid ones."""
    cipher = CredentialCipher.from_settings(runtime.settings)
    metrics = Metrics(runtime.redis)
    with runtime.sessions() as session:
        account_ids = accounts.enabled_account_ids(session)
    results: list[TokenCheck] = []
    for account_id in account_ids:
        result = _check_one(runtime, cipher, account_id)
        if result is None:
            continue  # a transient failure: no verdict, the next check decides
        with runtime.sessions.begin() as session:
            accounts.record_token_check(session, account_id, valid=result.valid)
        metrics.set_gauge("account_token_valid", 1.0 if result.valid else 0.0, account=account_id)
        if not result.valid:
            log.warning("account %s has no valid Kite token: %s", account_id, result.detail)
        results.append(result)
    return results


def _check_one(runtime: Runtime, cipher: CredentialCipher, account_id: str) -> TokenCheck | None:
    try:
        with runtime.sessions() as session:
            account = accounts.kite_account(session, cipher, account_id)
        runtime.kite_clients.get(account).profile()
    except AuthError as exc:
        return TokenCheck(account_id, False, str(exc))
    except RetryableError as exc:
        log.warning("token check of %s postponed: %s", account_id, exc)
        return None
    return TokenCheck(account_id, True, "ok")
