"""Flags and output of ``ticker-tasks bench pipeline`` (the bench itself is imported on use)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Final, Literal

#: Worker processes and pool processes per worker by default: the best throughput measured
#: on 2 cores (see the README, *Pipeline benchmark*).
DEFAULT_WORKERS: Final = 2
DEFAULT_CONCURRENCY: Final = 3


def _redis_db(text: str) -> int | Literal["auto"]:
    """``--redis-db``: a database index 1..15 (0 holds the claims), or ``auto``."""
    if text == "auto":
        return "auto"
    try:
        index = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a database index or 'auto'") from None
    if not 1 <= index <= 15:
        raise argparse.ArgumentTypeError("a database index 1..15 or 'auto'")
    return index


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """The pipeline bench's own flags (``--seconds``, ``--instruments``, ``--concurrency`` and
    ``--json`` are shared with the other benches)."""
    add = parser.add_argument
    add("--rate", type=float, default=100_000.0, help="pipeline: target ticks/s (100000)")
    add("--workers", type=int, default=DEFAULT_WORKERS, help="pipeline: ticks workers (2)")
    add("--mode", choices=("ltp", "quote", "full"), default="quote", help="pipeline: (quote)")
    add("--warmup", type=float, default=2.0, help="pipeline: seconds before measuring (2)")
    add(
        "--redis-db",
        type=_redis_db,
        default=None,
        metavar="N|auto",
        help="pipeline: use database N (auto: a free one) of TICKER_REDIS_URL's server instead "
        "of a private redis-server",
    )
    add("--drain-timeout", type=float, default=None, help="pipeline: (max(60, 5 x seconds))")


def pipeline_command(args: argparse.Namespace) -> int:
    """Run the bench from parsed flags and print its figures; the exit status.

    With ``--json`` the figures are one JSON object on the last line of stdout.
    """
    from ticker_tasks.pipeline.bench import PipelineBenchOptions, run_pipeline_bench

    options = PipelineBenchOptions(
        rate=args.rate,
        seconds=30.0 if args.seconds is None else args.seconds,
        instruments=args.instruments,
        workers=args.workers,
        concurrency=DEFAULT_CONCURRENCY if args.concurrency is None else args.concurrency,
        mode=args.mode,
        warmup_s=args.warmup,
        redis_db=args.redis_db,
        drain_timeout_s=args.drain_timeout,
    )
    try:
        figures = run_pipeline_bench(options)
    except KeyboardInterrupt:
        print("ticker-tasks bench pipeline: interrupted; everything stopped", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(figures))
    else:
        for line in format_pipeline_bench(figures):
            print(line)
    return 0


def _number(value: Any, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def format_pipeline_bench(result: dict[str, Any]) -> list[str]:
    """Readable lines of :func:`run_pipeline_bench` figures."""
    cpu = result["cpu_s_per_100k_by_process"]
    others = ", ".join(f"{k} {_number(v, '.2f')}" for k, v in cpu.items())
    return [
        f"pipeline:   target {result['target_per_s']:,} ticks/s = ({result['instruments']:,} "
        f"instruments + 1 canary per connection) x {result['ticks_per_second']:g}/s, "
        f"{result['mode']} mode; accounts: {result['accounts']}, connections: "
        f"{result['connections']}; workers: {result['workers']} x {result['concurrency']} "
        f"processes; {result['seconds']:g} s",
        f"offered:    {result['offered']:>12,} ticks   {_number(result['offered_per_s'])}/s "
        f"(simulator frames dropped: {result['sim_frames_dropped']})",
        f"published:  {result['published']:>12,} ticks   {_number(result['published_per_s'])}/s",
        f"lost:       {result['lost']:>12,}   duplicated: {result['duplicated']:,}   "
        f"rejected: {result['rejected']:,}   drained: {result['drained']} "
        f"({_number(result['drain_s'], '.1f')} s after the stop)",
        f"latency:    p50 {_number(result['p50_ms'], '.1f')} ms   p99 "
        f"{_number(result['p99_ms'], '.1f')} ms   max {_number(result['max_ms'], '.1f')} ms "
        "(frame received -> read from the stream)",
        f"cpu:        {_number(result['cpu_s_per_100k'], '.2f')} s per 100k ticks (streamer + "
        f"workers); per process: {others}",
    ]
