"""Run the Kite simulator in a subprocess for tests.

``running_simulator(**options)`` starts ``python -m ticker_tasks.simulator`` on free ports,
waits until ``GET /_sim/stats`` answers, yields a :class:`SimulatorHandle` and stops the
process with SIGTERM (then SIGKILL) on exit. Options map to CLI flags: ``seed=7`` ->
``--seed 7``, ``follow_calendar=True`` -> ``--follow-calendar``, ``accounts=[...]`` ->
repeated ``--account``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ticker_tasks.processes import free_port, stop_process

DEFAULT_ACCOUNTS = ("sim_key_a:sim_token_a:sim_secret_a", "sim_key_b:sim_token_b")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Credentials:
    """One account of a running simulator."""

    api_key: str
    access_token: str
    api_secret: str


@dataclass
class SimulatorHandle:
    """A simulator subprocess and how to reach it."""

    rest_url: str
    ws_url: str
    accounts: list[Credentials]
    process: subprocess.Popen[str]
    log_path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call the ``/_sim/`` API and return the decoded JSON."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.rest_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read().decode())

    def stats(self) -> Any:
        """``GET /_sim/stats``."""
        return self.control("GET", "/_sim/stats")


def _parse_account(spec: str) -> Credentials:
    parts = spec.split(":")
    secret = parts[2] if len(parts) == 3 else f"secret-{parts[0]}"
    return Credentials(parts[0], parts[1], secret)


def _flags(options: dict[str, Any]) -> list[str]:
    flags: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False or value is None:
            continue
        else:
            flags += [flag, str(value)]
    return flags


def _wait_ready(handle: SimulatorHandle, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if handle.process.poll() is not None:
            with open(handle.log_path, encoding="utf-8") as log:
                output = log.read()
            raise RuntimeError(f"simulator exited with {handle.process.returncode}:\n{output}")
        try:
            handle.stats()
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise TimeoutError("simulator did not answer /_sim/stats in time") from None
            time.sleep(0.1)


@contextlib.contextmanager
def running_simulator(**options: Any) -> Iterator[SimulatorHandle]:
    """Start a simulator subprocess on free ports; stop it on exit.

    Args:
        **options: CLI options (``seed``, ``universe_size``, ``ticks_per_second``,
            ``follow_calendar``, ``quote_rate``, ...); ``accounts`` is a list of
            ``KEY:TOKEN[:SECRET]``; ``shared_port=True`` serves REST and WS on one port.
    """
    accounts = list(options.pop("accounts", DEFAULT_ACCOUNTS))
    shared = bool(options.pop("shared_port", False))
    rest_port = free_port()
    ws_port = rest_port if shared else free_port()
    argv = [sys.executable, "-m", "ticker_tasks.simulator", "--host", "127.0.0.1"]
    argv += ["--rest-port", str(rest_port), "--ws-port", str(ws_port)]
    for spec in accounts:
        argv += ["--account", spec]
    argv += _flags({"log_level": "WARNING", **options})
    log = open(  # noqa: SIM115  (closed in the finally below)
        os.path.join(os.environ.get("TMPDIR", "/tmp"), f"simulator-{rest_port}.log"), "w+"
    )
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True)
    handle = SimulatorHandle(
        rest_url=f"http://127.0.0.1:{rest_port}",
        ws_url=f"ws://127.0.0.1:{ws_port}",
        accounts=[_parse_account(a) for a in accounts],
        process=process,
        log_path=log.name,
    )
    try:
        _wait_ready(handle, START_TIMEOUT_S)
        yield handle
    finally:
        stop_process(process, STOP_TIMEOUT_S)
        log.close()
        with contextlib.suppress(OSError):
            os.unlink(log.name)
