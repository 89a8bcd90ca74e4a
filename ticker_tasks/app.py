"""The Celery app: the one module-level object of the service.

Configuration is loaded lazily by module name (``celeryconfig``), so importing this module
reads nothing and opens no connection. Each pool child builds its :class:`Runtime` at
``worker_process_init`` and tasks reach it through ``self.runtime``.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

from ticker_tasks.runtime import Runtime
from ticker_tasks.settings import settings_or_exit

TASK_MODULES = [
    "ticker_tasks.tasks.maintenance",
    "ticker_tasks.tasks.instruments",
    "ticker_tasks.tasks.backfill",
    "ticker_tasks.tasks.ticks",
    "ticker_tasks.tasks.bars",
    "ticker_tasks.tasks.orders",
    "ticker_tasks.tasks.subscriptions",
    "ticker_tasks.tasks.candles",
]


class TickerCelery(Celery):  # type: ignore[misc]
    """Celery app holding the per-process :class:`Runtime` of a worker child."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._runtime: Runtime | None = None
        self._runtime_pid = 0

    @property
    def runtime(self) -> Runtime:
        """This process's runtime; built here when no pool hook built it (solo pool)."""
        if self._runtime is None or self._runtime_pid != os.getpid():
            self.open_runtime()
        assert self._runtime is not None
        return self._runtime

    def open_runtime(self) -> None:
        """Build this process's runtime (after fork: never share a parent's connections)."""
        self._runtime = Runtime.build(settings_or_exit())
        self._runtime_pid = os.getpid()

    def close_runtime(self) -> None:
        """Release this process's connections."""
        if self._runtime is not None and self._runtime_pid == os.getpid():
            self._runtime.close()
        self._runtime = None


app = TickerCelery(
    "ticker_tasks", include=TASK_MODULES, task_cls="ticker_tasks.tasks.base:BaseTask"
)
app.config_from_object("celeryconfig")


@worker_process_init.connect
def _open_runtime(**_: Any) -> None:
    app.open_runtime()


@worker_process_shutdown.connect
def _close_runtime(**_: Any) -> None:
    app.close_runtime()
