"""``ticker-tasks bench pipeline``: ticks from the simulator to the published stream, end to end.

:func:`run_pipeline_bench` builds a private stack from the real programs and measures it:

* the Kite simulator (:mod:`ticker_tasks.simulator`) with ``--every-slot``: every subscribed
  instrument is sent in every slot, so a connection streams ``subscriptions x
  ticks_per_second`` ticks per second (:func:`plan_load` picks instruments and rate);
* the streamer (``python -m workers.streamer``, ``TICKER_STREAMER_SOURCE=mock`` so the ticks
  pass validation at any hour) holding as many accounts as the instruments need (Kite's caps:
  3000 tokens per connection, 3 connections per api_key);
* a private ``redis-server`` (or, with ``redis_db``, a claimed and flushed database of the
  configured Redis server) as broker and data store, a SQLite database and the streamer's
  journal in a temporary directory;
* ``workers`` Celery worker processes of the ``ticks`` queue, each with ``concurrency`` pool
  processes, running ``ticker_tasks.ticks.process_batch`` (decode, validate, merge, publish);
* an independent reader of ``ticker_tasks:ticks:stream`` in this process
  (:class:`~ticker_tasks.pipeline.bench_reader.StreamReader`).

Timeline: subscribe (wait until the simulator holds every subscription), ``warmup_s`` of
streaming (not measured), ``seconds`` of measurement, then SIGTERM to the streamer (it
unsubscribes, flushes and exits) and a drain until every tick the simulator sent is read, the
queue is empty and nothing arrived for a while, or the drain timeout. ``offered`` is every
packet the simulator sent to the bench's accounts (``/_sim/stats``); ``lost`` and
``duplicated`` are counted over the whole run; throughput, latency and CPU over the rows
received from the end of the warm-up on.
"""

from __future__ import annotations

import math
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final, Literal

import redis
from cryptography.fernet import Fernet

from ticker_tasks.errors import ConfigError, ServiceUnavailable
from ticker_tasks.pipeline.bench_prepare import bench_accounts, child_env, prepare_database
from ticker_tasks.pipeline.bench_run import BenchRun, RunTimes
from ticker_tasks.pipeline.bench_stack import (
    CpuMeter,
    claim_held,
    redis_server_pid,
    scratch_redis_db,
    simulator,
    start_streamer,
    tick_workers,
)
from ticker_tasks.processes import private_redis, stop_process
from ticker_tasks.settings import Settings, load_settings

#: Most ticks per second of one instrument in the simulator (60 x this slots per minute).
MAX_TICKS_PER_SECOND: Final = 10.0
MIN_UNIVERSE: Final = 2000
#: Instruments listed beyond the subscribed ones (indices, expiring contracts).
UNIVERSE_MARGIN: Final = 1000
MODES: Final = ("ltp", "quote", "full")


@dataclass(frozen=True)
class PipelineBenchOptions:
    """What to run (``ticker-tasks bench pipeline`` flags).

    Attributes:
        rate: Target ticks per second offered by the simulator.
        seconds: Measuring time.
        instruments: Instruments to subscribe; default ``rate / 10`` (10 ticks/s each).
        workers: Celery worker processes of the ``ticks`` queue.
        concurrency: Pool processes per worker.
        mode: Subscription mode (``ltp``, ``quote`` or ``full``).
        warmup_s: Streaming time before the measurement starts.
        redis_db: Use this database of the configured Redis server (``"auto"``: the first
            free one), claimed and flushed, instead of a private ``redis-server`` (the
            default: no other client can touch it, and its CPU is the bench's alone).
        drain_timeout_s: Longest drain after the streamer stopped (default ``max(60, 5 x
            seconds)``).
    """

    rate: float = 100_000.0
    seconds: float = 30.0
    instruments: int | None = None
    workers: int = 2
    concurrency: int = 3
    mode: str = "quote"
    warmup_s: float = 2.0
    redis_db: int | Literal["auto"] | None = None
    drain_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.seconds <= 0 or self.warmup_s < 0:
            raise ConfigError("rate and seconds must be > 0 and warmup >= 0")
        if self.workers < 1 or self.concurrency < 1:
            raise ConfigError("workers and concurrency must be >= 1")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}")


@dataclass(frozen=True)
class LoadPlan:
    """Instruments, tick rate and accounts that offer a target rate."""

    instruments: int
    ticks_per_second: float
    accounts: int
    connections: int
    universe_size: int

    @property
    def target_per_s(self) -> float:
        """Ticks per second offered: every instrument and each connection's canary."""
        return (self.instruments + self.connections) * self.ticks_per_second


def _slots_rate(ticks_per_second: float) -> float:
    """The simulator rate nearest ``ticks_per_second`` (a whole number of slots a minute)."""
    return max(1, min(600, round(ticks_per_second * 60))) / 60.0


def plan_load(
    rate: float,
    instruments: int | None = None,
    *,
    tokens_per_connection: int = 3000,
    connections_per_account: int = 3,
    canaries: int = 1,
) -> LoadPlan:
    """Instruments and per-instrument rate for ``rate`` ticks per second.

    Without ``instruments``: 10 ticks/s per instrument (the simulator's most) and ``rate / 10``
    instruments; with it, ``rate / instruments`` per instrument (a multiple of 1/60).

    Raises:
        ConfigError: ``rate`` needs more than 10 ticks/s per instrument.
    """
    if instruments is None:
        per_s = _slots_rate(min(rate, MAX_TICKS_PER_SECOND))
        instruments = max(1, round(rate / per_s))
    elif instruments < 1 or rate / instruments > MAX_TICKS_PER_SECOND:
        raise ConfigError(
            f"{rate:,.0f} ticks/s need at least {math.ceil(rate / MAX_TICKS_PER_SECOND):,} "
            f"instruments ({MAX_TICKS_PER_SECOND:g} ticks/s each at most)"
        )
    else:
        per_s = _slots_rate(rate / instruments)
    room = tokens_per_connection - canaries
    connections = math.ceil(instruments / room)
    return LoadPlan(
        instruments=instruments,
        ticks_per_second=per_s,
        accounts=math.ceil(connections / connections_per_account),
        connections=connections,
        universe_size=max(MIN_UNIVERSE, instruments + UNIVERSE_MARGIN),
    )


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the bench runs, so it tears down."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _simulator_flags(plan: LoadPlan) -> list[str]:
    return [
        "--every-slot",
        "--ticks-per-second",
        repr(plan.ticks_per_second),
        "--universe-size",
        str(plan.universe_size),
    ]


def _say(message: str) -> None:
    """Progress on stderr (stdout carries the figures only)."""
    print(f"bench pipeline: {message}", file=sys.stderr, flush=True)


def _start_stack(
    stack: ExitStack, options: PipelineBenchOptions, plan: LoadPlan, base: Settings
) -> BenchRun:
    """Start every component (each stopped by ``stack``) and return the run to measure."""
    accounts = bench_accounts(plan.accounts)
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-pipeline-")))
    if options.redis_db is None:
        url = stack.enter_context(private_redis(folder))
    else:
        index = None if options.redis_db == "auto" else options.redis_db
        url = stack.enter_context(scratch_redis_db(base.redis_url, index))
    _say(f"Redis {url}, scratch files in {folder}")
    sim = stack.enter_context(
        simulator(
            [(a.api_key, a.access_token) for a in accounts],
            _simulator_flags(plan),
            folder / "simulator.log",
        )
    )
    settings = load_settings(
        redis_url=url,
        broker_url=None,
        database_url=f"sqlite:///{folder / 'bench.db'}",
        kite_rest_root=sim.rest_url,
        kite_ws_root=sim.ws_url,
        secret_keys=Fernet.generate_key().decode(),
    )
    _say(f"simulator up; subscribing {plan.instruments:,} instruments ({options.mode})")
    prepare_database(settings, accounts, instruments=plan.instruments, mode=options.mode)
    env = child_env(settings, folder)
    workers = stack.enter_context(
        tick_workers(
            env,
            count=options.workers,
            concurrency=options.concurrency,
            prefetch=base.pool_ticks_prefetch,
            folder=folder,
        )
    )
    client = redis.Redis.from_url(url, socket_timeout=10)
    stack.callback(client.close)
    streamer = start_streamer(env, folder / "streamer.log")
    stack.callback(stop_process, streamer)
    pids = {"streamer": [streamer.pid], "workers": [w.pid for w in workers]}
    pids["simulator"] = [sim.process.pid]
    server = redis_server_pid(client, url)
    if server is not None:
        pids["redis"] = [server]
    _say(f"{options.workers} worker(s) and the streamer started; waiting for the subscriptions")
    return BenchRun(
        sim=sim,
        streamer=streamer,
        workers=workers,
        client=client,
        redis_url=url,
        cpu=CpuMeter(pids),
        api_keys={a.api_key for a in accounts},
        account_ids={a.account_id for a in accounts},
        folder=folder,
    )


def run_pipeline_bench(options: PipelineBenchOptions) -> dict[str, Any]:
    """Run the bench (see the module notes) and return its figures.

    Raises:
        ConfigError: Bad options, or no free Redis database.
        ServiceUnavailable: A component did not start or died.
    """
    base = load_settings()
    plan = plan_load(
        options.rate,
        options.instruments,
        tokens_per_connection=base.kite_tokens_per_connection,
        connections_per_account=base.kite_connections_per_account,
        canaries=len(base.subscription_canary_tokens),
    )
    times = RunTimes(
        subscribed_slots=plan.instruments + plan.connections,
        warmup_s=options.warmup_s,
        seconds=options.seconds,
        shutdown_s=base.streamer_shutdown_timeout_s + 15.0,
        drain_s=options.drain_timeout_s or max(60.0, 5.0 * options.seconds),
    )
    with ExitStack() as stack:
        stack.enter_context(_sigterm_interrupts())
        run = _start_stack(stack, options, plan, base)
        marks = run.execute(times, progress=_say)
        figures = run.figures(marks)
        _check_isolation(run, figures, base.redis_url, private=options.redis_db is None)
        _say("done; stopping everything")
    return {**_setup(options, plan), **figures}


def _check_isolation(
    run: BenchRun, figures: dict[str, Any], base_url: str, *, private: bool
) -> None:
    """Refuse figures that another user of the shared Redis database made meaningless.

    Raises:
        ServiceUnavailable: Messages of other connections were published in the database.
    """
    if figures["foreign_messages"]:
        raise ServiceUnavailable(
            f"{figures['foreign_messages']} messages of other connections appeared in the "
            "bench's Redis database: another process used it; rerun without --redis-db"
        )
    if not private and not claim_held(base_url, run.redis_url):
        _say(
            "warning: the claim on the Redis database vanished during the run (database 0 "
            "flushed?); if the figures look wrong, rerun without --redis-db"
        )


def _setup(options: PipelineBenchOptions, plan: LoadPlan) -> dict[str, Any]:
    return {
        "target_per_s": round(plan.target_per_s),
        "instruments": plan.instruments,
        "ticks_per_second": round(plan.ticks_per_second, 4),
        "mode": options.mode,
        "accounts": plan.accounts,
        "connections": plan.connections,
        "workers": options.workers,
        "concurrency": options.concurrency,
        "seconds": options.seconds,
    }
