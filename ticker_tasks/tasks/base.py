"""Base class of every task: access to the process runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING

from celery import Task

if TYPE_CHECKING:
    from ticker_tasks.runtime import Runtime


class BaseTask(Task):  # type: ignore[misc]
    """A task with ``self.runtime``: the per-process resources built at pool start."""

    @property
    def runtime(self) -> Runtime:
        """Settings, database sessions and Redis of this worker process."""
        runtime: Runtime = self.app.runtime
        return runtime
