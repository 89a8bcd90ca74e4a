"""The ``ticker-tasks`` command.

Every sub-command validates the settings first: a bad value stops it with one line naming the
environment variable (exit status 2), never with a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ticker_tasks.errors import ConfigError, TickerTasksError
from ticker_tasks.settings import Settings, load_settings, settings_table

ROOT = Path(__file__).resolve().parent.parent

Handler = Callable[[argparse.Namespace, Settings], int]


def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    """Print every setting with its current value (secrets masked)."""
    values = settings.model_dump()
    for variable, _default, description in settings_table():
        name = variable.removeprefix("TICKER_").lower()
        value = values.get(name)
        shown = "(set)" if "secret" in name and value is not None else value
        print(f"{variable}={'' if shown is None else shown}  # {description}")
    return 0


def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Upgrade (or downgrade) the database schema."""
    from alembic.config import Config

    from alembic import command

    config = Config(str(ROOT / "alembic.ini"))
    if args.downgrade:
        command.downgrade(config, args.revision)
    else:
        command.upgrade(config, args.revision)
    return 0


def _celery(*argv: str) -> int:
    os.execvp(sys.executable, [sys.executable, "-m", "celery", "-A", "ticker_tasks.app", *argv])
    return 0  # pragma: no cover  (execvp does not return)


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Run the worker pool of one queue with its concurrency and prefetch."""
    from ticker_tasks.queues import pool_specs

    spec = pool_specs(settings)[args.queue]
    return _celery(
        "worker",
        "-Q",
        spec.queue,
        "-c",
        str(args.concurrency or spec.concurrency),
        "--prefetch-multiplier",
        str(spec.prefetch_multiplier),
        "-n",
        f"{spec.queue}@%h",
        "-E",
        "-l",
        settings.log_level,
    )


def _cmd_beat(args: argparse.Namespace, settings: Settings) -> int:
    """Run Celery beat (exactly one per deployment)."""
    schedule = Path(args.schedule_file)
    schedule.parent.mkdir(parents=True, exist_ok=True)
    return _celery("beat", "-s", str(schedule), "-l", settings.log_level)


def _cmd_flower(args: argparse.Namespace, settings: Settings) -> int:
    """Run Flower on the broker."""
    return _celery("flower", f"--port={args.port}", f"--address={args.address}")


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    """Run the whole stack on this machine until interrupted."""
    from workers.up import run_stack

    return run_stack(settings, flower_port=args.flower_port)


def _cmd_streamer(args: argparse.Namespace, settings: Settings) -> int:
    """Run a streamer: hold the ticker WebSockets of leased accounts until SIGTERM."""
    from workers.streamer.cli import streamer_command

    return streamer_command(settings)


def _cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Send captured frames through the ticks queue again, byte for byte."""
    from workers.replay import replay_command

    return replay_command(args.file, args.speed, settings)


def _cmd_simulator(args: argparse.Namespace, settings: Settings) -> int:
    """Run the Kite simulator (its own flags; see ``ticker-tasks simulator --help``)."""
    from ticker_tasks.simulator.cli import main as simulator_main

    return simulator_main(list(args.simulator_args))


def _cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    """Run a benchmark and print its figures."""
    if args.bench == "backfill":
        from ticker_tasks.backfill.bench import format_bench, run_backfill_bench

        figures = run_backfill_bench(
            instruments=20 if args.instruments is None else args.instruments,
            days=args.days,
            concurrency=4 if args.concurrency is None else args.concurrency,
        )
        if args.json:
            print(json.dumps(figures))
        else:
            for line in format_bench(figures):
                print(line)
        return 0
    if args.bench == "codec":
        from ticker_tasks.kite.codec_bench import run_codec_bench

        result = run_codec_bench(seconds=3.0 if args.seconds is None else args.seconds)
        if args.json:
            print(json.dumps(result))
        else:
            print(f"decode:      {result['decode_pkts_per_s']:>14,.0f} packets/s")
            print(f"kiteconnect: {result['kiteconnect_pkts_per_s']:>14,.0f} packets/s")
            print(f"ratio:       {result['ratio']:>14,.1f}x")
        return 0
    if args.bench == "pipeline":
        from ticker_tasks.pipeline.bench_cli import pipeline_command

        return pipeline_command(args)
    raise ConfigError(f"unknown benchmark {args.bench!r}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ticker-tasks``."""
    from ticker_tasks.queues import QUEUES

    parser = argparse.ArgumentParser(prog="ticker-tasks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="print the effective settings")
    config.set_defaults(handler=_cmd_config)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("revision", nargs="?", default="head")
    migrate.add_argument("--downgrade", action="store_true", help="downgrade to REVISION")
    migrate.set_defaults(handler=_cmd_migrate)

    worker = sub.add_parser("worker", help="run the worker pool of one queue")
    worker.add_argument("queue", choices=QUEUES)
    worker.add_argument("--concurrency", type=int, default=None)
    worker.set_defaults(handler=_cmd_worker)

    beat = sub.add_parser("beat", help="run the periodic-task scheduler (one per deployment)")
    beat.add_argument("--schedule-file", default="var/celerybeat-schedule")
    beat.set_defaults(handler=_cmd_beat)

    flower = sub.add_parser("flower", help="run Flower")
    flower.add_argument("--port", type=int, default=5555)
    flower.add_argument("--address", default="127.0.0.1")
    flower.set_defaults(handler=_cmd_flower)

    up = sub.add_parser("up", help="run the whole stack locally")
    up.add_argument("--flower-port", type=int, default=5555)
    up.set_defaults(handler=_cmd_up)

    from ticker_tasks.backfill import cli as backfill_cli
    from ticker_tasks.commands import accounts, instruments, subscriptions

    accounts.register(sub)
    instruments.register(sub)
    subscriptions.register(sub)
    backfill_cli.register(sub)

    simulator = sub.add_parser(
        "simulator", help="run the Kite simulator (REST + WebSocket)", add_help=False
    )
    simulator.add_argument("simulator_args", nargs=argparse.REMAINDER)
    simulator.set_defaults(handler=_cmd_simulator)

    streamer = sub.add_parser("streamer", help="run a streamer (Kite ticker WebSockets)")
    streamer.set_defaults(handler=_cmd_streamer)

    replay = sub.add_parser("replay", help="send a capture file through the ticks queue")
    replay.add_argument("file")
    replay.add_argument("--speed", type=float, default=None, help="x real time; 0: at once")
    replay.set_defaults(handler=_cmd_replay)

    bench = sub.add_parser("bench", help="run a benchmark")
    bench.add_argument("bench", choices=["codec", "backfill", "pipeline"])
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument(
        "--seconds", type=float, default=None, help="measuring time (codec 3, pipeline 30)"
    )
    bench.add_argument(
        "--instruments",
        type=int,
        default=None,
        help="backfill: instruments (20); pipeline: instruments subscribed (rate / 10)",
    )
    bench.add_argument("--days", type=int, default=70, help="backfill: days of minute candles")
    bench.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="worker pool processes (backfill 4, pipeline 3 per worker)",
    )
    from ticker_tasks.pipeline.bench_cli import add_pipeline_arguments

    add_pipeline_arguments(bench)
    bench.set_defaults(handler=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ticker-tasks`` console script."""
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["simulator"]:
        # The simulator stands in for Kite: it needs no settings and parses its own flags.
        from ticker_tasks.simulator.cli import main as simulator_main

        return simulator_main(raw[1:])
    args = build_parser().parse_args(raw)
    try:
        settings = load_settings()
        handler: Handler = args.handler
        return handler(args, settings)
    except ConfigError as exc:
        print(f"ticker-tasks: configuration error: {exc}", file=sys.stderr)
        return 2
    except TickerTasksError as exc:
        print(f"ticker-tasks: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
