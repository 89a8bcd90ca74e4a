"""Ending tasks within a bound, also a task that loses its cancellation (workers.streamer.tasks).

The worker below is shaped like the streamer's planner: it waits for a wake-up, then makes a
call whose write goes through ``asyncio.wait_for`` (as redis-py's does) and completes at once.
Cancelling it in the loop iteration in which that call runs is exactly what SIGTERM did to a
re-planning streamer.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from workers.streamer.cli import EXIT_STUCK
from workers.streamer.tasks import cancel_and_wait, finish, run_all

ROOT = Path(__file__).resolve().parents[2]


async def _write() -> int:
    return 1  # a socket write that did not have to wait


async def _planner_like(wake: asyncio.Event, rounds: list[int]) -> None:
    while True:
        await wake.wait()
        wake.clear()
        rounds.append(await asyncio.wait_for(_write(), timeout=5))


async def _cancelled_as_the_write_completes() -> tuple[asyncio.Task[None], list[int]]:
    wake, rounds = asyncio.Event(), []
    task = asyncio.create_task(_planner_like(wake, rounds))
    await asyncio.sleep(0)  # the worker waits for a wake-up
    wake.set()
    await asyncio.sleep(0)  # it woke up and awaits wait_for, whose write runs next
    task.cancel()
    return task, rounds


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for no longer loses a cancel")
def test_one_cancel_is_lost_on_python_3_11() -> None:
    async def scenario() -> tuple[bool, list[int]]:
        task, rounds = await _cancelled_as_the_write_completes()
        done, _ = await asyncio.wait({task}, timeout=1.0)
        ended = bool(done)
        task.cancel()  # the worker now waits for a wake-up: this one is not lost
        await asyncio.wait({task}, timeout=1.0)
        return ended, rounds

    ended, rounds = asyncio.run(scenario())
    assert not ended  # the premise of cancel_and_wait: a single cancel() is not enough
    assert rounds == [1]  # the write's result was returned in place of the cancellation


def test_cancel_and_wait_ends_a_task_that_lost_its_cancellation() -> None:
    async def scenario() -> tuple[set[asyncio.Task[None]], asyncio.Task[None]]:
        task, _ = await _cancelled_as_the_write_completes()
        left = await cancel_and_wait([task], timeout_s=10.0)
        return left, task

    left, task = asyncio.run(scenario())
    assert left == set() and task.cancelled()


def test_cancel_and_wait_gives_up_after_its_timeout() -> None:
    async def stubborn(stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue  # ignores every cancellation

    async def scenario() -> int:
        stop = asyncio.Event()
        task = asyncio.create_task(stubborn(stop))
        await asyncio.sleep(0)
        left = await cancel_and_wait([task], timeout_s=0.3)
        stop.set()
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        return len(left)

    assert asyncio.run(scenario()) == 1


def test_finish_lets_a_task_end_by_itself_before_cancelling_it() -> None:
    async def scenario() -> tuple[bool, bool, bool, bool]:
        polite = asyncio.create_task(asyncio.sleep(0.05))
        deaf = asyncio.create_task(asyncio.sleep(60))
        ended_polite = await finish(polite, grace_s=5.0)
        ended_deaf = await finish(deaf, grace_s=0.05)
        return ended_polite, polite.cancelled(), ended_deaf, deaf.cancelled()

    assert asyncio.run(scenario()) == (True, False, True, True)


def test_run_all_is_bounded_and_cancels_the_late_ones() -> None:
    finished: list[str] = []

    async def job(name: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        finished.append(name)

    async def scenario() -> tuple[bool, bool]:
        quick = await run_all([job("a", 0.01), job("b", 0.02)], 5.0, name="quick")
        slow = await run_all([job("c", 0.01), job("d", 60)], 0.2, name="slow")
        return quick, slow

    assert asyncio.run(scenario()) == (True, False)
    assert sorted(finished) == ["a", "b", "c"]


def test_the_exit_watchdog_ends_a_process_still_running_after_its_stop_request() -> None:
    code = (
        "import asyncio, time\n"
        "from workers.streamer.cli import ExitWatchdog\n"
        "async def stuck():\n"
        "    ExitWatchdog(0.2).arm()\n"
        "    time.sleep(30)\n"
        "asyncio.run(stuck())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=25
    )
    assert result.returncode == EXIT_STUCK, result.stderr
    assert "still running" in result.stderr
    assert 'File "<string>", line 5 in stuck' in result.stderr  # the stack of the hang
