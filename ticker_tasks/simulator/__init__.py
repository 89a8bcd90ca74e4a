"""Protocol-exact Zerodha Kite Connect simulator: market model, REST, ticker, faults.

Public API::

    from ticker_tasks.simulator import SimulatorConfig, start_simulator

    sim = await start_simulator(SimulatorConfig(seed=7, universe_size=5000))
    ...  # KiteConnect(api_key, access_token=..., root=sim.rest_url)
    await sim.stop()

See the project README (section *Kite simulator*) for the CLI, the model and the ``/_sim/`` API.
"""

from __future__ import annotations

from ticker_tasks.simulator.config import Account, RateLimits, SimulatorConfig
from ticker_tasks.simulator.server import RunningSimulator, start_simulator

__all__ = ["Account", "RateLimits", "RunningSimulator", "SimulatorConfig", "start_simulator"]
