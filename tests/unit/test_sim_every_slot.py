"""The simulator's ``every_slot`` load mode: every subscribed token in every slot's frame."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import numpy as np
import pytest

from ticker_tasks.kite.codec import decode
from ticker_tasks.simulator.config import SimulatorConfig
from ticker_tasks.simulator.connection import Connection
from ticker_tasks.simulator.context import build_context

# Wednesday 2026-01-14 10:00 IST.
T0 = datetime(2026, 1, 14, 4, 30, tzinfo=UTC).timestamp()


def packets_per_slot(every_slot: bool, tokens: list[int], slots: int = 20) -> list[int]:
    config = SimulatorConfig(seed=7, universe_size=1500, ticks_per_second=10, every_slot=every_slot)
    ctx = build_context(config, time_source=lambda: T0)
    conn = Connection(id="c1", api_key="k", ws=None, transport=None, queue=asyncio.Queue())  # type: ignore[arg-type]
    conn.modes = dict.fromkeys(tokens, 2)
    counts = []
    for slot in range(ctx.state.slot + 1, ctx.state.slot + 1 + slots):
        ctx.hub.connections = {"c1": conn}
        ctx.hub.fanout(ctx.state.advance(slot))
        count = 0
        while not conn.queue.empty():
            _binary, frame, packets = conn.queue.get_nowait()
            assert isinstance(frame, bytes)
            assert decode(frame).size == packets
            count += packets
        counts.append(count)
    return counts


@pytest.fixture(scope="module")
def tokens() -> list[int]:
    ctx = build_context(SimulatorConfig(seed=7, universe_size=1500), time_source=lambda: T0)
    u = ctx.universe
    return u.ints("token")[np.flatnonzero(u.active)][:300].tolist()


def test_every_slot_sends_every_subscribed_token_in_every_slot(tokens):
    assert packets_per_slot(True, tokens) == [len(tokens)] * 20


def test_by_default_only_traded_tokens_are_sent(tokens):
    counts = packets_per_slot(False, tokens)
    assert sum(counts) < len(tokens) * 20
