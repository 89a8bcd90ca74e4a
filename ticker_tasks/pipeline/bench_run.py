"""The measuring loop of ``ticker-tasks bench pipeline`` (see :mod:`ticker_tasks.pipeline.bench`).

One thread: every iteration reads the published stream (``XREAD BLOCK`` 100 ms), samples the
CPU of the processes under test and checks that they are alive. Phases, each with a timeout:
subscribed, warm-up, measurement, streamer stop, drain. :meth:`BenchRun.figures` turns the
counts into the reported figures.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import redis

from ticker_tasks.errors import ServiceUnavailable
from ticker_tasks.metrics import COUNTERS_KEY
from ticker_tasks.pipeline.bench_reader import StreamReader, percentile_ms
from ticker_tasks.pipeline.bench_stack import CpuMeter, SimulatorProcess
from ticker_tasks.processes import log_tail
from ticker_tasks.queues import TICKS

BLOCK_MS: Final = 100
#: CPU samples and liveness checks at most this often (an exited process keeps its last).
SAMPLE_EVERY_S: Final = 0.2
STATS_EVERY_S: Final = 0.5
SUBSCRIBE_TIMEOUT_S: Final = 120.0
#: The drain ends when nothing was published for this long and the queue is empty.
QUIET_S: Final = 2.0
#: kombu's Redis transport keeps delivered, unacknowledged messages in this hash.
UNACKED_KEY: Final = "unacked"
#: Processes whose CPU counts in ``cpu_s_per_100k``.
MEASURED: Final = ("streamer", "workers")


@dataclass(frozen=True)
class RunTimes:
    """Durations of the phases (seconds) and the subscriptions to wait for."""

    subscribed_slots: int
    warmup_s: float
    seconds: float
    shutdown_s: float
    drain_s: float


@dataclass
class Marks:
    """What the phases recorded."""

    window_start: float = 0.0
    window_stop: float = 0.0
    stopped_at: float = 0.0
    offered_at_start: int = 0
    offered_at_stop: int = 0
    offered: int = 0
    drained: bool = False
    cpu_start: dict[str, float] = field(default_factory=dict)
    cpu_end: dict[str, float] = field(default_factory=dict)
    reader_cpu_start: float = 0.0
    reader_cpu_s: float = 0.0
    sim: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchRun:
    """The running stack and the loop that measures it."""

    sim: SimulatorProcess
    streamer: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]]
    client: redis.Redis
    redis_url: str
    cpu: CpuMeter
    api_keys: set[str]
    account_ids: set[str]
    folder: Path
    reader: StreamReader = field(init=False)
    _sampled_at: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.reader = StreamReader(self.client, self.account_ids)

    # ------------------------------------------------------------------ plumbing

    def _sim_stats(self) -> dict[str, Any]:
        url = self.sim.rest_url + "/_sim/stats"  # http://127.0.0.1:port from the simulator
        with urllib.request.urlopen(url, timeout=10) as reply:  # noqa: S310
            stats: dict[str, Any] = json.loads(reply.read())
        return stats

    def _connections(self, stats: dict[str, Any]) -> list[dict[str, Any]]:
        every: dict[str, dict[str, Any]] = stats["ws"]["connections"]
        return [c for c in every.values() if c["api_key"] in self.api_keys]

    def _offered(self) -> int:
        return sum(int(c["packets_sent"]) for c in self._connections(self._sim_stats()))

    def _check_alive(self, *, streamer: bool) -> None:
        named = [("simulator", self.sim.process, "simulator.log")]
        named += [(f"worker {i}", w, f"worker-{i}.log") for i, w in enumerate(self.workers)]
        if streamer:
            named.append(("streamer", self.streamer, "streamer.log"))
        for name, process, log in named:
            if process.poll() is not None:
                raise ServiceUnavailable(
                    f"the bench's {name} exited ({process.returncode}):\n"
                    f"{log_tail(self.folder / log)}"
                )

    def _pump(self, *, streamer: bool = True) -> int:
        rows = self.reader.poll(BLOCK_MS)
        if time.monotonic() - self._sampled_at >= SAMPLE_EVERY_S:
            self._sampled_at = time.monotonic()
            self.cpu.sample()
            self._check_alive(streamer=streamer)
        return rows

    def _pump_until(
        self, done: Callable[[], bool], timeout_s: float, *, streamer: bool = True
    ) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if done():
                return True
            self._pump(streamer=streamer)
        return done()

    # ------------------------------------------------------------------ phases

    def _wait_subscribed(self, slots: int) -> None:
        last = 0.0

        def subscribed() -> bool:
            nonlocal last
            if time.monotonic() - last < STATS_EVERY_S:
                return False
            last = time.monotonic()
            conns = [c for c in self._connections(self._sim_stats()) if c["open"]]
            return sum(int(c["subscriptions"]) for c in conns) >= slots

        if not self._pump_until(subscribed, SUBSCRIBE_TIMEOUT_S):
            raise ServiceUnavailable(
                f"the streamer did not subscribe {slots} tokens in {SUBSCRIBE_TIMEOUT_S:.0f} s:\n"
                f"{log_tail(self.folder / 'streamer.log')}"
            )

    def _queue_empty(self) -> bool:
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(TICKS)
        pipe.hlen(UNACKED_KEY)
        waiting, unacked = pipe.execute()
        return int(waiting) == 0 and int(unacked) == 0

    def _drained(self, marks: Marks) -> bool:
        if self.reader.tally.unique >= marks.offered:
            return True
        quiet = time.time() - (self.reader.last_read_at or marks.stopped_at)
        return quiet >= QUIET_S and self._queue_empty()

    def _measure(self, times: RunTimes, marks: Marks) -> None:
        """Warm up, then stream for the measuring time with the window open."""
        self._pump_until(lambda: False, times.warmup_s)
        marks.window_start = time.time()
        self.reader.start_window(marks.window_start)
        marks.offered_at_start = self._offered()
        marks.cpu_start = self.cpu.sample()
        marks.reader_cpu_start = time.process_time()
        self._pump_until(lambda: False, times.seconds)
        marks.window_stop = time.time()
        marks.offered_at_stop = self._offered()

    def _stop_streamer(self, times: RunTimes, marks: Marks) -> None:
        """SIGTERM the streamer, wait for its exit, then read what the simulator sent."""
        self.streamer.terminate()
        marks.stopped_at = time.time()
        if not self._pump_until(
            lambda: self.streamer.poll() is not None, times.shutdown_s, streamer=False
        ):
            raise ServiceUnavailable("the streamer did not stop after SIGTERM in time")
        stats = self._sim_stats()
        marks.sim = dict(stats["stream"])
        conns = self._connections(stats)
        marks.offered = sum(int(c["packets_sent"]) for c in conns)
        marks.sim["frames_dropped"] = sum(int(c["frames_dropped"]) for c in conns)

    def execute(self, times: RunTimes, progress: Callable[[str], None] = print) -> Marks:
        """Run every phase; what they recorded.

        Raises:
            ServiceUnavailable: A process died or the subscriptions did not arrive.
        """
        marks = Marks()
        self._wait_subscribed(times.subscribed_slots)
        progress(f"streaming; measuring {times.seconds:g} s after a {times.warmup_s:g} s warm-up")
        self._measure(times, marks)
        self._stop_streamer(times, marks)
        progress(f"streamer stopped; draining ({marks.offered:,} ticks offered)")
        marks.drained = self._pump_until(
            lambda: self._drained(marks), times.drain_s, streamer=False
        )
        marks.cpu_end = self.cpu.sample()
        marks.reader_cpu_s = time.process_time() - marks.reader_cpu_start
        return marks

    # ------------------------------------------------------------------ figures

    def _rejected(self) -> dict[str, int]:
        counters: dict[bytes, bytes] = self.client.hgetall(COUNTERS_KEY)  # type: ignore[assignment]
        out: dict[str, int] = {}
        for name, value in counters.items():
            metric, _, labels = name.decode().partition("|")
            if metric == "ticks_rejected":
                out[labels.removeprefix("reason=")] = int(value)
        return out

    def figures(self, marks: Marks) -> dict[str, Any]:
        """The reported figures of a finished run."""
        reader = self.reader
        counts = reader.tally.counts(marks.offered)
        rows = reader.window_rows
        elapsed = (reader.last_read_at or marks.window_start) - marks.window_start
        latencies = reader.latencies_s()
        used = {k: marks.cpu_end.get(k, 0.0) - marks.cpu_start.get(k, 0.0) for k in marks.cpu_end}
        used["reader"] = marks.reader_cpu_s

        def per_100k(seconds: float) -> float | None:
            return round(seconds / rows * 100_000, 3) if rows else None

        rejected = self._rejected()
        measured_s = marks.window_stop - marks.window_start
        return {
            "offered": counts.offered,
            "published": counts.published,
            "lost": counts.lost,
            "duplicated": counts.duplicated,
            "rejected": sum(rejected.values()),
            "rejected_by_reason": rejected,
            "offered_per_s": round((marks.offered_at_stop - marks.offered_at_start) / measured_s),
            "published_per_s": round(rows / elapsed) if elapsed > 0 else None,
            "p50_ms": percentile_ms(latencies, 50),
            "p99_ms": percentile_ms(latencies, 99),
            "max_ms": percentile_ms(latencies, 100),
            "cpu_s_per_100k": per_100k(sum(used.get(k, 0.0) for k in MEASURED)),
            "cpu_s_per_100k_by_process": {k: per_100k(v) for k, v in sorted(used.items())},
            "window_ticks": rows,
            "messages": reader.messages,
            "foreign_messages": reader.foreign,
            "drained": marks.drained,
            "drain_s": round(max((reader.last_read_at or 0.0) - marks.stopped_at, 0.0), 2),
            "sim_frames_dropped": int(marks.sim.get("frames_dropped", 0)),
            "sim_slots_skipped": int(marks.sim.get("slots_skipped", 0)),
        }
