"""Kite accounts: stored with their api secret and access token encrypted at rest.

Secrets are decrypted only to build a Kite client or complete a session exchange, and never
logged or printed: :class:`AccountView` carries no secret at all.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ticker_tasks.crypto import CredentialCipher
from ticker_tasks.db.models import Account
from ticker_tasks.errors import AuthError, NotFound, ValidationError
from ticker_tasks.kite.rest import KiteAccount

ACCOUNT_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class TokenStatus(StrEnum):
    """Values of ``accounts.token_status``."""

    MISSING = "missing"
    UNCHECKED = "unchecked"
    VALID = "valid"
    INVALID = "invalid"


@dataclass(frozen=True)
class AccountView:
    """What may be shown of an account: no secret, only whether a token is stored."""

    account_id: str
    api_key: str
    enabled: bool
    has_token: bool
    token_status: str
    token_checked_at: dt.datetime | None


def _view(account: Account) -> AccountView:
    return AccountView(
        account_id=account.account_id,
        api_key=account.api_key,
        enabled=account.enabled,
        has_token=account.access_token_encrypted is not None,
        token_status=account.token_status,
        token_checked_at=account.token_checked_at,
    )


def _get(session: Session, account_id: str) -> Account:
    account = session.get(Account, account_id)
    if account is None:
        raise NotFound(f"unknown account {account_id!r}")
    return account


def add_account(
    session: Session, cipher: CredentialCipher, *, account_id: str, api_key: str, api_secret: str
) -> AccountView:
    """Store a new account (its api secret encrypted)."""
    if not ACCOUNT_ID.match(account_id):
        raise ValidationError(f"account id must match {ACCOUNT_ID.pattern}: {account_id!r}")
    if not api_key or not api_secret:
        raise ValidationError("api key and api secret must not be empty")
    account = Account(
        account_id=account_id,
        api_key=api_key,
        api_secret_encrypted=cipher.encrypt(api_secret),
        token_status=TokenStatus.MISSING,
    )
    session.add(account)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise ValidationError(f"account {account_id!r} or its api key exists already") from None
    return _view(account)


def list_accounts(session: Session) -> list[AccountView]:
    """Every account, by id."""
    return [_view(a) for a in session.scalars(select(Account).order_by(Account.account_id))]


def set_access_token(
    session: Session, cipher: CredentialCipher, account_id: str, access_token: str
) -> AccountView:
    """Store a new access token (encrypted); its validity is checked by the token check."""
    if not access_token:
        raise ValidationError("access token must not be empty")
    account = _get(session, account_id)
    account.access_token_encrypted = cipher.encrypt(access_token)
    account.token_status = TokenStatus.UNCHECKED
    account.token_checked_at = None
    session.flush()
    return _view(account)


def set_enabled(session: Session, account_id: str, enabled: bool) -> AccountView:
    """Enable or disable an account (disabled accounts are neither streamed nor used)."""
    account = _get(session, account_id)
    account.enabled = enabled
    session.flush()
    return _view(account)


def record_token_check(session: Session, account_id: str, *, valid: bool) -> AccountView:
    """Record the outcome of a token validation."""
    account = _get(session, account_id)
    account.token_status = TokenStatus.VALID if valid else TokenStatus.INVALID
    account.token_checked_at = dt.datetime.now(dt.UTC)
    session.flush()
    return _view(account)


def api_secret(session: Session, cipher: CredentialCipher, account_id: str) -> str:
    """The decrypted api secret (for the session exchange only)."""
    return cipher.decrypt(_get(session, account_id).api_secret_encrypted)


def kite_account(session: Session, cipher: CredentialCipher, account_id: str) -> KiteAccount:
    """Credentials to build a Kite client for an enabled account with a stored token."""
    account = _get(session, account_id)
    if not account.enabled:
        raise AuthError(f"account {account_id!r} is disabled")
    if account.access_token_encrypted is None:
        raise AuthError(f"account {account_id!r} has no access token: run accounts set-token")
    return KiteAccount(
        account_id=account.account_id,
        api_key=account.api_key,
        access_token=cipher.decrypt(account.access_token_encrypted),
    )


def enabled_account_ids(session: Session) -> list[str]:
    """Ids of the enabled accounts."""
    query = select(Account.account_id).where(Account.enabled).order_by(Account.account_id)
    return list(session.scalars(query))


def default_account_id(session: Session) -> str:
    """The first enabled account with a token not known to be invalid (for shared jobs)."""
    query = (
        select(Account.account_id)
        .where(
            Account.enabled,
            Account.access_token_encrypted.is_not(None),
            Account.token_status != TokenStatus.INVALID,
        )
        .order_by(Account.account_id)
        .limit(1)
    )
    account_id = session.scalars(query).first()
    if account_id is None:
        raise AuthError("no enabled account with an access token: run accounts set-token")
    return account_id
