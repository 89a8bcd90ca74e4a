"""Base class of every task: access to the process runtime."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from celery import Task

if TYPE_CHECKING:
    from ticker_tasks.runtime import Runtime

T = TypeVar("T")


class BaseTask(Task):  # type: ignore[misc]
    """A task with ``self.runtime``: the per-process resources built at pool start."""

    @property
    def runtime(self) -> Runtime:
        """Settings, database sessions and Redis of this worker process."""
        runtime: Runtime = self.app.runtime
        return runtime

    def per_runtime(self, name: str, build: Callable[[Runtime], T]) -> T:
        """The object ``name`` of this task, built by ``build`` once per process runtime
        (scripts registered, caches warmed) and rebuilt when the runtime is replaced."""
        runtime = self.runtime
        held: dict[str, tuple[Any, Any]] = self.__dict__.setdefault("_per_runtime", {})
        found = held.get(name)
        if found is None or found[0] is not runtime:
            found = held[name] = (runtime, build(runtime))
        built: T = found[1]
        return built
