"""Payload models (task keyword arguments) of the public tasks."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PingRequest(BaseModel):
    """Keyword arguments of ``ticker_tasks.maintenance.ping``: a health round trip."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    echo: str = Field("", max_length=256, description="Returned unchanged by the worker.")
