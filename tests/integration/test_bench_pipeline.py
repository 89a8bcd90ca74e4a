"""``ticker-tasks bench pipeline`` end to end: simulator, streamer, Redis, Celery workers.

A small load for a few seconds: every tick the simulator sent is published exactly once, none
is rejected, and the last line of stdout is the JSON figures. No timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEYS = {
    "offered",
    "published",
    "lost",
    "duplicated",
    "rejected",
    "published_per_s",
    "p50_ms",
    "p99_ms",
    "cpu_s_per_100k",
}


@pytest.mark.timeout(180)
def test_small_load_is_published_exactly_once(redis_service):
    # Given the bench at 2,000 ticks/s for 5 s (its own Redis database, simulator and workers)
    command = [sys.executable, "-m", "ticker_tasks.cli", "bench", "pipeline"]
    command += ["--rate", "2000", "--seconds", "5", "--json"]
    # When it runs
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=170)
    # I expect one JSON object on the last line of stdout with every figure
    assert done.returncode == 0, done.stderr[-4000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(figures) >= KEYS, sorted(KEYS - set(figures))
    # and every tick sent to be published once: none lost, none duplicated, none rejected
    assert figures["offered"] > 0
    assert figures["lost"] == 0, figures
    assert figures["duplicated"] == 0, figures
    assert figures["rejected"] == 0, figures
    assert figures["published"] == figures["offered"]
    assert figures["drained"] is True
