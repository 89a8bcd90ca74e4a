"""Accounts: secrets encrypted at rest, never printed; CLI management."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from ticker_tasks import accounts
from ticker_tasks.crypto import CredentialCipher, generate_key
from ticker_tasks.db.models import Account
from ticker_tasks.errors import AuthError, CredentialError, ValidationError

SECRET = "s3cr3t-api-secret-value"
TOKEN = "access-token-value-123"


@pytest.fixture
def cipher():
    return CredentialCipher([generate_key()])


def test_credentials_are_stored_as_ciphertext_only(db_engine, cipher):
    with Session(db_engine) as session, session.begin():
        accounts.add_account(
            session, cipher, account_id="AB1234", api_key="key1", api_secret=SECRET
        )
        accounts.set_access_token(session, cipher, "AB1234", TOKEN)
    with db_engine.connect() as connection:
        raw = connection.execute(
            text("SELECT api_secret_encrypted, access_token_encrypted FROM accounts")
        ).one()
    for column in raw:
        assert SECRET.encode() not in bytes(column)
        assert TOKEN.encode() not in bytes(column)
    with Session(db_engine) as session:
        kite = accounts.kite_account(session, cipher, "AB1234")
        assert kite.access_token == TOKEN
        assert accounts.api_secret(session, cipher, "AB1234") == SECRET
    # The repr of the credentials never shows the token.
    assert TOKEN not in repr(kite)


def test_key_rotation_keeps_stored_credentials_readable(db_engine):
    old_key, new_key = generate_key(), generate_key()
    with Session(db_engine) as session, session.begin():
        accounts.add_account(
            session, CredentialCipher([old_key]), account_id="ROT1", api_key="k", api_secret=SECRET
        )
    # A new key is prepended: new writes use it, old ciphertext still decrypts.
    rotated = CredentialCipher([new_key, old_key])
    with Session(db_engine) as session:
        assert accounts.api_secret(session, rotated, "ROT1") == SECRET
    with Session(db_engine) as session, pytest.raises(CredentialError):
        accounts.api_secret(session, CredentialCipher([new_key]), "ROT1")


def test_disabled_or_tokenless_accounts_cannot_build_clients(db_engine, cipher):
    with Session(db_engine) as session, session.begin():
        accounts.add_account(session, cipher, account_id="NOTOK", api_key="k2", api_secret=SECRET)
    with Session(db_engine) as session:
        with pytest.raises(AuthError, match="no access token"):
            accounts.kite_account(session, cipher, "NOTOK")
        with pytest.raises(AuthError):
            accounts.default_account_id(session)
    with Session(db_engine) as session, session.begin():
        accounts.set_access_token(session, cipher, "NOTOK", TOKEN)
        accounts.set_enabled(session, "NOTOK", False)
    with Session(db_engine) as session, pytest.raises(AuthError, match="disabled"):
        accounts.kite_account(session, cipher, "NOTOK")


def test_duplicate_and_bad_ids_are_rejected_clearly(db_engine, cipher):
    with Session(db_engine) as session, session.begin():
        accounts.add_account(session, cipher, account_id="DUP", api_key="k3", api_secret=SECRET)
    with Session(db_engine) as session, pytest.raises(ValidationError, match="exists"):
        accounts.add_account(session, cipher, account_id="DUP", api_key="k4", api_secret=SECRET)
    with Session(db_engine) as session, pytest.raises(ValidationError):
        accounts.add_account(session, cipher, account_id="bad id!", api_key="k5", api_secret="x")


def _cli(*args: str, stdin: str = "", env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ticker_tasks.cli", *args],
        input=stdin,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_manages_accounts_and_never_prints_a_secret(db_engine, migrated_postgres_url):
    env = {"TICKER_DATABASE_URL": migrated_postgres_url, "TICKER_SECRET_KEYS": generate_key()}
    added = _cli("accounts", "add", "CLI1", "--api-key", "clikey", stdin=SECRET + "\n", env=env)
    assert added.returncode == 0, added.stderr
    token = _cli("accounts", "set-token", "CLI1", "--access-token", stdin=TOKEN + "\n", env=env)
    assert token.returncode == 0, token.stderr
    listed = _cli("accounts", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "CLI1" in listed.stdout and "stored" in listed.stdout and "unchecked" in listed.stdout
    disabled = _cli("accounts", "disable", "CLI1", env=env)
    assert disabled.returncode == 0
    for result in (added, token, listed, disabled):
        assert SECRET not in result.stdout + result.stderr
        assert TOKEN not in result.stdout + result.stderr
    with Session(db_engine) as session:
        row = session.scalars(select(Account).where(Account.account_id == "CLI1")).one()
        assert row.enabled is False


def test_cli_without_a_key_says_which_variable_is_missing(migrated_postgres_url):
    env = {"TICKER_DATABASE_URL": migrated_postgres_url, "TICKER_SECRET_KEYS": ""}
    result = _cli("accounts", "add", "X1", "--api-key", "k", stdin="s\n", env=env)
    assert result.returncode == 2
    assert "TICKER_SECRET_KEYS" in result.stderr
    assert "Traceback" not in result.stderr
