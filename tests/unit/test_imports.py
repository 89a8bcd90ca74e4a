"""Importing the app and its configuration opens no connection and prints nothing."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = """
import socket
attempts = []
original = socket.socket.connect
def recording_connect(self, address):
    attempts.append(address)
    return original(self, address)
socket.socket.connect = recording_connect
socket.socket.connect_ex = lambda self, address: attempts.append(address) or 111
import ticker_tasks.app, celeryconfig
import ticker_tasks.app as module
module.app.loader.import_default_modules()
assert module.app.conf.broker_url
if attempts:
    raise SystemExit(f"connections attempted: {attempts}")
"""


def test_importing_app_and_config_opens_no_connection_and_prints_nothing():
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == ""


def test_every_task_has_an_explicit_public_name():
    from ticker_tasks.app import app

    app.loader.import_default_modules()
    ours = [name for name in app.tasks if not name.startswith("celery.")]
    assert ours, "no task registered"
    for name in ours:
        assert name.startswith("ticker_tasks."), name
        # Explicit names are namespaced by domain, never derived from module paths.
        assert ".tasks." not in name, name
