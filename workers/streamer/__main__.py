"""``python -m workers.streamer``: run the streamer with the environment's settings."""

from __future__ import annotations

import sys

from ticker_tasks.settings import settings_or_exit
from workers.streamer.cli import streamer_command

if __name__ == "__main__":
    sys.exit(streamer_command(settings_or_exit()))
