"""Reference-data jobs against the simulator: instrument refresh, token check, doubled beats."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from cryptography.fernet import Fernet
from sqlalchemy import select

from tests.support.services import Service, wait_until
from tests.support.simulator import SimulatorHandle, running_simulator
from tests.support.workers import celery_worker
from ticker_tasks import accounts
from ticker_tasks.crypto import CredentialCipher
from ticker_tasks.db.models import Account, Instrument
from ticker_tasks.market.jobs import check_tokens, refresh_instruments
from ticker_tasks.metrics import Metrics
from ticker_tasks.runtime import Runtime
from ticker_tasks.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
GOOD_KEY, GOOD_TOKEN = "ref_key", "ref_token"
OTHER_KEY, OTHER_TOKEN = "other_key", "other_token"


@dataclass
class Stack:
    sim: SimulatorHandle
    runtime: Runtime
    env: dict[str, str]

    def instrument_requests(self) -> int:
        requests = self.sim.stats()["requests"].get(GOOD_KEY, {})
        return sum(
            r["count"]
            for name, r in requests.items()
            if "instruments" in name.lower() and "historical" not in name.lower()
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ticker_tasks.cli", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture
def stack(db_engine, migrated_postgres_url, redis_service: Service) -> Iterator[Stack]:
    secret = Fernet.generate_key().decode()
    specs = [f"{GOOD_KEY}:{GOOD_TOKEN}", f"{OTHER_KEY}:{OTHER_TOKEN}"]
    with running_simulator(universe_size=300, accounts=specs) as sim:
        env = {
            "TICKER_REDIS_URL": redis_service.url,
            "TICKER_DATABASE_URL": migrated_postgres_url,
            "TICKER_KITE_REST_ROOT": sim.rest_url,
            "TICKER_SECRET_KEYS": secret,
        }
        settings = load_settings(
            database_url=migrated_postgres_url, kite_rest_root=sim.rest_url, secret_keys=secret
        )
        runtime = Runtime.build(settings)
        cipher = CredentialCipher.from_settings(settings)
        with runtime.sessions.begin() as session:
            accounts.add_account(session, cipher, account_id="A1", api_key=GOOD_KEY, api_secret="s")
            accounts.set_access_token(session, cipher, "A1", GOOD_TOKEN)
        try:
            yield Stack(sim, runtime, env)
        finally:
            runtime.close()


def _refresh_json(stack: Stack) -> dict:
    result = stack.cli("instruments", "refresh", "--json")
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_cli_refresh_reports_what_changed_and_follows_token_reuse(stack):
    # Given an empty master, a first refresh loads the whole dump
    first = _refresh_json(stack)
    assert first["applied"] and first["rows"] >= 300 and first["added"] == first["rows"]
    # A second refresh of the same dump changes nothing
    again = _refresh_json(stack)
    assert (again["added"], again["changed"], again["vanished"]) == (0, 0, 0)
    # When an option expires and its token is listed for a new contract
    with stack.runtime.sessions() as session:
        option = session.scalars(
            select(Instrument).where(Instrument.instrument_type == "CE").limit(1)
        ).one()
    token = option.instrument_token
    stack.sim.control("POST", "/_sim/instruments/expire", {"instrument_token": token})
    stack.sim.control("POST", "/_sim/instruments/reuse", {"instrument_token": token})
    changed = _refresh_json(stack)
    # I expect one contract added, one vanished, and the token to map to the new holder
    assert (changed["added"], changed["vanished"]) == (1, 1)
    shown = stack.cli("instruments", "show", str(token))
    assert shown.returncode == 0, shown.stderr
    holder = json.loads(shown.stdout)
    assert holder["tradingsymbol"] != option.tradingsymbol and holder["active"] is True
    expired = json.loads(stack.cli("instruments", "show", f"NFO:{option.tradingsymbol}").stdout)
    assert expired["active"] is False and expired["instrument_id"] == option.instrument_id
    # The text output names what changed
    text = stack.cli("instruments", "refresh")
    assert text.returncode == 0 and "0 added, 0 changed, 0 vanished" in text.stdout


def test_a_shrunken_dump_is_refused_counted_and_leaves_the_master(stack):
    assert refresh_instruments(stack.runtime).applied
    with stack.runtime.sessions() as session:
        before = session.execute(select(Instrument.instrument_id, Instrument.active)).all()
        options = session.scalars(
            select(Instrument.instrument_token).where(Instrument.segment == "NFO-OPT")
        ).all()
    # Delist 40 % of the options: a dump shrunk beyond the 20 % tolerance
    for token in options[: int(len(options) * 0.4)]:
        stack.sim.control("POST", "/_sim/instruments/expire", {"instrument_token": token})
    outcome = refresh_instruments(stack.runtime)
    assert not outcome.applied
    assert any("NFO-OPT" in problem for problem in outcome.problems)
    with stack.runtime.sessions() as session:
        after = session.execute(select(Instrument.instrument_id, Instrument.active)).all()
    assert sorted(after) == sorted(before)
    assert Metrics(stack.runtime.redis).counter("instrument_refresh_rejected") == 1


def test_token_check_reports_accounts_without_a_valid_token(stack):
    cipher = CredentialCipher.from_settings(stack.runtime.settings)
    with stack.runtime.sessions.begin() as session:
        accounts.add_account(session, cipher, account_id="B2", api_key=OTHER_KEY, api_secret="s")
        accounts.set_access_token(session, cipher, "B2", "stale-token")
    results = {r.account_id: r.valid for r in check_tokens(stack.runtime)}
    assert results == {"A1": True, "B2": False}
    metrics = Metrics(stack.runtime.redis)
    assert metrics.gauge("account_token_valid", account="A1") == 1.0
    assert metrics.gauge("account_token_valid", account="B2") == 0.0
    listed = stack.cli("accounts", "list")
    b2 = next(line for line in listed.stdout.splitlines() if line.startswith("B2"))
    assert "invalid" in b2
    with stack.runtime.sessions() as session:
        assert session.get(Account, "A1").token_status == "valid"


def _refresh_results(client: redis.Redis) -> list[dict]:
    found = []
    for key in client.scan_iter("celery-task-meta-*"):
        meta = json.loads(client.get(key))
        if meta.get("name") == "ticker_tasks.instruments.refresh" and meta["status"] == "SUCCESS":
            found.append(meta["result"])
    return found


def test_two_beats_started_by_mistake_do_not_double_the_refresh(stack, redis_client, tmp_path):
    # Given two beat schedulers firing the refresh every minute, and a maintenance worker
    env = {
        **stack.env,
        "TICKER_SCHEDULE_INSTRUMENTS_REFRESH": "* * * * *",
        "TICKER_SCHEDULE_TOKEN_CHECK": "0 0 1 1 *",
    }
    beats = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "ticker_tasks.app",
                "beat",
                "-s",
                str(tmp_path / f"beat{n}"),
                "-l",
                "WARNING",
            ],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n in range(2)
    ]
    try:
        with celery_worker(["maintenance"], env=env, log_path=tmp_path / "worker.log"):
            # When the next minute comes, both beats send the job
            assert wait_until(lambda: len(_refresh_results(redis_client)) >= 2, timeout=100)
            time.sleep(1)
    finally:
        for beat in beats:
            beat.send_signal(signal.SIGTERM)
        for beat in beats:
            beat.wait(timeout=30)
    # I expect one refresh and one skip, and one download from Kite
    results = _refresh_results(redis_client)
    applied = [r for r in results if r.get("applied")]
    skipped = [r for r in results if "skipped" in r]
    assert len(applied) == 1, results
    assert len(skipped) == len(results) - 1 >= 1
    assert stack.instrument_requests() == 1


def test_set_token_prints_the_login_url_and_completes_the_session_exchange(stack):
    cipher = CredentialCipher.from_settings(stack.runtime.settings)
    with stack.runtime.sessions.begin() as session:
        # The simulator's api secret of this key is secret-<key>.
        accounts.add_account(
            session, cipher, account_id="EX1", api_key=OTHER_KEY, api_secret=f"secret-{OTHER_KEY}"
        )
    url = stack.cli("accounts", "set-token", "EX1")
    assert url.returncode == 0, url.stderr
    assert f"api_key={OTHER_KEY}" in url.stdout
    exchanged = stack.cli("accounts", "set-token", "EX1", "--request-token", "req-123")
    assert exchanged.returncode == 0, exchanged.stderr
    assert OTHER_TOKEN not in exchanged.stdout + exchanged.stderr
    with stack.runtime.sessions() as session:
        assert accounts.kite_account(session, cipher, "EX1").access_token == OTHER_TOKEN
