"""Message contracts of ticker_tasks, for any service that talks to it.

This package depends on pydantic alone: other services install it to build and validate the
payloads of the public tasks, and services in other languages use the exported JSON Schema
files in ``schemas/json/``.
"""

from schemas.registry import PUBLIC_TASKS, TaskContract
from schemas.tasks import PingRequest

__all__ = ["PUBLIC_TASKS", "PingRequest", "TaskContract"]
