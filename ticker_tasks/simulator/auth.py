"""Accounts, access tokens and the login checksum."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from ticker_tasks.simulator.clock import ist_string
from ticker_tasks.simulator.config import Account


class AuthError(Exception):
    """Credentials Kite would refuse.

    Attributes:
        error_type: ``TokenException`` or ``InputException``.
        status: HTTP status.
    """

    def __init__(self, message: str, error_type: str = "TokenException", status: int = 403) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.status = status


BAD_TOKEN = "Incorrect `api_key` or `access_token`."  # noqa: S105  (error message)


@dataclass(slots=True)
class _Entry:
    account: Account
    valid: bool = True


class Accounts:
    """The accounts of a run and whether their access token currently works."""

    def __init__(self, accounts: tuple[Account, ...]) -> None:
        self._entries = {a.api_key: _Entry(a) for a in accounts}

    def get(self, api_key: str) -> Account | None:
        """Account of an api_key."""
        entry = self._entries.get(api_key)
        return entry.account if entry else None

    def by_key(self) -> dict[str, Account]:
        """Every account by api_key (a fresh dict)."""
        return {k: e.account for k, e in self._entries.items()}

    def keys(self) -> list[str]:
        """Every api_key."""
        return list(self._entries)

    def valid(self, api_key: str, access_token: str) -> bool:
        """Whether the pair is accepted right now."""
        entry = self._entries.get(api_key)
        return bool(
            entry
            and entry.valid
            and hmac.compare_digest(entry.account.access_token.encode(), access_token.encode())
        )

    def check_header(self, header: str | None) -> str:
        """Validate ``Authorization: token api_key:access_token``; return the api_key.

        Raises:
            AuthError: Missing or wrong credentials (403 TokenException).
        """
        if not header or not header.startswith("token "):
            raise AuthError(BAD_TOKEN)
        api_key, _, token = header[len("token ") :].partition(":")
        if not self.valid(api_key, token):
            raise AuthError(BAD_TOKEN)
        return api_key

    def expire(self, api_key: str) -> None:
        """Invalidate the account's token (REST 403, WebSocket upgrade 403)."""
        entry = self._entries.get(api_key)
        if entry is not None:
            entry.valid = False

    def upsert(self, api_key: str, access_token: str, api_secret: str | None = None) -> Account:
        """Add an account or give it a new (valid) token."""
        entry = self._entries.get(api_key)
        if entry is None:
            number = len(self._entries) + 1
            account = Account(
                api_key, access_token, api_secret or f"secret-{api_key}", f"SM{number:04d}"
            )
        else:
            old = entry.account
            account = Account(api_key, access_token, api_secret or old.api_secret, old.user_id)
        self._entries[api_key] = _Entry(account)
        return account

    def login(self, api_key: str, request_token: str, checksum: str, now: int) -> dict[str, Any]:
        """``POST /session/token``: any request_token works if the checksum matches.

        Raises:
            AuthError: Unknown api_key (InputException) or a wrong checksum (TokenException).
        """
        entry = self._entries.get(api_key)
        if entry is None:
            raise AuthError("Invalid `api_key`.", "InputException", 400)
        if not request_token:
            raise AuthError("Missing `request_token`.", "InputException", 400)
        secret = entry.account.api_secret
        expected = hashlib.sha256(f"{api_key}{request_token}{secret}".encode()).hexdigest()
        if not hmac.compare_digest(expected, checksum or ""):
            raise AuthError("Invalid checksum.")
        entry.valid = True
        return session_payload(entry.account, now)

    def logout(self, api_key: str, access_token: str) -> None:
        """``DELETE /session/token``: the token stops working until the next login.

        Raises:
            AuthError: The pair is not valid.
        """
        if not self.valid(api_key, access_token):
            raise AuthError(BAD_TOKEN)
        self._entries[api_key].valid = False


def profile_payload(account: Account) -> dict[str, Any]:
    """``GET /user/profile`` data."""
    return {
        "user_id": account.user_id,
        "user_type": "individual",
        "email": f"{account.user_id.lower()}@simulator.invalid",
        "user_name": f"Simulated {account.user_id}",
        "user_shortname": account.user_id,
        "broker": "ZERODHA",
        "exchanges": ["NSE", "NFO", "BSE", "BFO", "CDS", "BCD", "MCX", "MF"],
        "products": ["CNC", "NRML", "MIS", "BO", "CO"],
        "order_types": ["MARKET", "LIMIT", "SL", "SL-M"],
        "avatar_url": None,
        "meta": {"demat_consent": "physical"},
    }


def session_payload(account: Account, now: int) -> dict[str, Any]:
    """``POST /session/token`` data (profile plus tokens)."""
    return {
        **profile_payload(account),
        "api_key": account.api_key,
        "access_token": account.access_token,
        "public_token": hashlib.sha256(account.access_token.encode()).hexdigest()[:32],
        "enctoken": hashlib.sha256(f"enc{account.access_token}".encode()).hexdigest()[:40],
        "refresh_token": "",
        "silo": "",
        "login_time": ist_string(now),
    }
