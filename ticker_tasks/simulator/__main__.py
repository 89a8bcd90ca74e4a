"""``python -m ticker_tasks.simulator``."""

from __future__ import annotations

import sys

from ticker_tasks.simulator.cli import main

if __name__ == "__main__":
    sys.exit(main())
