"""Ending asyncio tasks within a bound, also tasks that lose a cancellation.

On Python 3.11, ``asyncio.wait_for`` returns its awaitable's result instead of raising
``CancelledError`` when that awaitable completes in the same loop iteration as the cancel of
the waiting task (CPython gh-86296; 3.12 re-implemented ``wait_for`` on ``asyncio.timeout``).
redis-py writes every command through ``wait_for`` when a socket timeout is set, so a
``task.cancel()`` that arrives just as a Redis write completes is lost: the task carries on as
if nothing happened, and whoever then awaits it without a timeout waits forever (a streamer
that did not exit after SIGTERM: its planner went back to waiting for the next re-plan).

Hence, in the streamer:

* :func:`cancel_and_wait` cancels again every :data:`RECANCEL_S` until the tasks end, and
  gives up after its timeout (the tasks still running are logged and returned): it never waits
  without a bound, and a lost cancellation only costs :data:`RECANCEL_S`;
* :func:`finish` lets a task that was told to stop end by itself for a grace period first;
* the streamer's own code uses ``asyncio.timeout``, never ``asyncio.wait_for``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any, Final

log = logging.getLogger(__name__)

#: Period at which tasks that are still running are cancelled again.
RECANCEL_S: Final = 0.5
#: Default bound of :func:`cancel_and_wait` after a grace period.
CANCEL_WAIT_S: Final = 2.0


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], timeout_s: float = CANCEL_WAIT_S
) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait until they end, ``timeout_s`` at most.

    Tasks still running are cancelled again every :data:`RECANCEL_S` (a cancellation can be
    lost, see the module notes). Exceptions of the tasks are logged, never raised.

    Returns:
        The tasks still running after ``timeout_s`` (logged as errors).
    """
    every = list(tasks)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = {task for task in every if not task.done()}
    first = True
    while pending:
        for task in pending:
            if not first:
                log.info("task %s still running after its cancellation: again", task.get_name())
            task.cancel()
        first = False
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_S, remaining))
    for task in pending:
        log.error("task %s still running %.1f s after its cancellation", task.get_name(), timeout_s)
    _log_failures(every)
    return pending


async def finish(task: asyncio.Task[Any], grace_s: float, cancel_s: float = CANCEL_WAIT_S) -> bool:
    """Wait ``grace_s`` for a task told to stop to end, then cancel it (:func:`cancel_and_wait`).

    Returns:
        Whether the task ended (False: still running after ``grace_s + cancel_s``).
    """
    if not task.done():
        await asyncio.wait({task}, timeout=grace_s)
    if task.done():
        _log_failures([task])
        return True
    return not await cancel_and_wait([task], cancel_s)


async def run_all(
    coros: Iterable[Coroutine[Any, Any, Any]], timeout_s: float, *, name: str
) -> bool:
    """Run coroutines concurrently for ``timeout_s`` at most; cancel those still running.

    Returns:
        Whether all of them ended by themselves in time.
    """
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(coro, name=f"{name}-{i}") for i, coro in enumerate(coros)]
    if not tasks:
        return True
    try:
        await asyncio.wait(tasks, timeout=timeout_s)
    finally:
        late = [task for task in tasks if not task.done()]
        if late:
            await cancel_and_wait(late)
    _log_failures(tasks)
    return not late


def _log_failures(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Retrieve (and log) the exception of every ended task that failed."""
    for task in tasks:
        if task.done() and not task.cancelled():
            exc = task.exception()
            if exc is not None:
                log.error("task %s failed: %r", task.get_name(), exc, exc_info=exc)
