"""``ticker-tasks accounts ...`` and ``ticker-tasks keys generate``: never prints a secret."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from ticker_tasks import accounts
from ticker_tasks.crypto import CredentialCipher, generate_key
from ticker_tasks.kite.rest import KiteAccount
from ticker_tasks.market.jobs import check_tokens
from ticker_tasks.runtime import Runtime
from ticker_tasks.settings import Settings


def _read_secret(prompt: str) -> str:
    """A secret from stdin when piped, else from a hidden prompt (never from argv)."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().strip()
    return getpass.getpass(prompt).strip()


def _print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("(no accounts)")
        return
    headers = list(rows[0])
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in headers]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[h]).ljust(w) for h, w in zip(headers, widths, strict=True)))


def _add(args: argparse.Namespace, settings: Settings) -> int:
    runtime = Runtime.build(settings)
    try:
        cipher = CredentialCipher.from_settings(settings)
        secret = _read_secret("api secret: ")
        with runtime.sessions.begin() as session:
            view = accounts.add_account(
                session, cipher, account_id=args.account_id, api_key=args.api_key, api_secret=secret
            )
        print(f"added account {view.account_id} (api key {view.api_key}); next: accounts set-token")
    finally:
        runtime.close()
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    runtime = Runtime.build(settings)
    try:
        with runtime.sessions() as session:
            views = accounts.list_accounts(session)
    finally:
        runtime.close()
    _print_table(
        [
            {
                "account_id": v.account_id,
                "api_key": v.api_key,
                "enabled": "yes" if v.enabled else "no",
                "token": "stored" if v.has_token else "none",
                "token_status": v.token_status,
                "checked_at": v.token_checked_at.isoformat() if v.token_checked_at else "-",
            }
            for v in views
        ]
    )
    return 0


def _set_token(args: argparse.Namespace, settings: Settings) -> int:
    runtime = Runtime.build(settings)
    try:
        cipher = CredentialCipher.from_settings(settings)
        with runtime.sessions() as session:
            view = next(
                (v for v in accounts.list_accounts(session) if v.account_id == args.account_id),
                None,
            )
            if view is None:
                print(f"ticker-tasks: unknown account {args.account_id!r}", file=sys.stderr)
                return 1
            secret = accounts.api_secret(session, cipher, args.account_id)
        client = runtime.kite_clients.get(KiteAccount(view.account_id, view.api_key, None))
        if args.request_token:
            session_data = client.generate_session(args.request_token, secret)
            token = str(session_data["access_token"])
        elif args.access_token:
            token = _read_secret("access token: ")
        else:
            print("Open this URL, log in, and pass the request_token it redirects with:")
            print(f"  {client.login_url()}")
            print(f"  ticker-tasks accounts set-token {view.account_id} --request-token TOKEN")
            return 0
        with runtime.sessions.begin() as session:
            accounts.set_access_token(session, cipher, args.account_id, token)
        print(f"stored a new access token for {args.account_id}")
    finally:
        runtime.close()
    return 0


def _enable(args: argparse.Namespace, settings: Settings) -> int:
    runtime = Runtime.build(settings)
    try:
        with runtime.sessions.begin() as session:
            view = accounts.set_enabled(session, args.account_id, args.enabled)
    finally:
        runtime.close()
    print(f"account {view.account_id} {'enabled' if view.enabled else 'disabled'}")
    return 0


def _check_tokens(args: argparse.Namespace, settings: Settings) -> int:
    runtime = Runtime.build(settings)
    try:
        results = check_tokens(runtime)
    finally:
        runtime.close()
    for result in results:
        print(f"{result.account_id}: {'valid' if result.valid else 'INVALID'} ({result.detail})")
    return 0 if all(r.valid for r in results) else 1


def _generate_key(args: argparse.Namespace, settings: Settings) -> int:
    print(generate_key())
    return 0


def register(sub: Any) -> None:
    """Add the ``accounts`` and ``keys`` commands."""
    parser = sub.add_parser("accounts", help="manage Kite accounts (secrets encrypted)")
    commands = parser.add_subparsers(dest="accounts_command", required=True)

    add = commands.add_parser("add", help="add an account; the api secret is read from stdin")
    add.add_argument("account_id")
    add.add_argument("--api-key", required=True)
    add.set_defaults(handler=_add)

    listing = commands.add_parser("list", help="list accounts and their token status")
    listing.set_defaults(handler=_list)

    token = commands.add_parser(
        "set-token", help="store an access token, or exchange a request token for one"
    )
    token.add_argument("account_id")
    group = token.add_mutually_exclusive_group()
    group.add_argument("--request-token", help="complete the session exchange with Kite")
    group.add_argument(
        "--access-token", action="store_true", help="read an access token from stdin"
    )
    token.set_defaults(handler=_set_token)

    disable = commands.add_parser("disable", help="stop using an account")
    disable.add_argument("account_id")
    disable.set_defaults(handler=_enable, enabled=False)

    enable = commands.add_parser("enable", help="use an account again")
    enable.add_argument("account_id")
    enable.set_defaults(handler=_enable, enabled=True)

    tokens = commands.add_parser("check-tokens", help="validate every account's token now")
    tokens.set_defaults(handler=_check_tokens)

    keys = sub.add_parser("keys", help="credential encryption keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    generate = keys_commands.add_parser("generate", help="print a new key for TICKER_SECRET_KEYS")
    generate.set_defaults(handler=_generate_key)
