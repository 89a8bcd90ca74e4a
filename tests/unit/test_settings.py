"""Settings: validated values, one clear line for a bad one."""

from __future__ import annotations

import os
import subprocess
import sys

import pydantic
import pytest

from ticker_tasks.errors import ConfigError
from ticker_tasks.settings import Settings, load_settings, settings_table


def test_defaults_are_valid_and_broker_defaults_to_redis(monkeypatch):
    # Given no broker URL
    monkeypatch.delenv("TICKER_BROKER_URL", raising=False)
    settings = load_settings()
    # I expect the broker to be the Redis data store
    assert settings.effective_broker_url == settings.redis_url
    assert settings.broker_is_redis


def test_amqp_broker_is_recognised(monkeypatch):
    monkeypatch.setenv("TICKER_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    settings = load_settings()
    assert not settings.broker_is_redis
    assert settings.effective_broker_url.startswith("amqp://")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TICKER_KITE_REST_TIMEOUT_S", "-1"),
        ("TICKER_KITE_REST_TIMEOUT_S", "soon"),
        ("TICKER_REDIS_URL", "http://127.0.0.1:6379"),
        ("TICKER_LOG_LEVEL", "LOUD"),
        ("TICKER_KITE_RATE_HEADROOM", "1.5"),
    ],
)
def test_a_bad_value_names_its_variable_in_one_line(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"{variable}: ")
    assert "\n" not in message


def test_cross_field_rule_visibility_timeout_above_time_limits(monkeypatch):
    monkeypatch.setenv("TICKER_VISIBILITY_TIMEOUT_S", "60")
    monkeypatch.setenv("TICKER_TASK_TIME_LIMIT_S", "120")
    with pytest.raises(ConfigError, match="visibility_timeout_s"):
        load_settings()


def test_secret_values_are_never_echoed(monkeypatch):
    monkeypatch.setenv("TICKER_SECRET_KEYS", "x" * 10)
    # A secret is accepted as a string; an invalid one would not be echoed either.
    settings = load_settings()
    assert "xxxxxxxxxx" not in repr(settings)


def test_settings_are_frozen():
    settings = Settings()
    with pytest.raises(pydantic.ValidationError) as caught:
        settings.redis_url = "redis://elsewhere:6379/0"  # type: ignore[misc]
    assert "frozen" in str(caught.value)


def test_every_field_has_a_description():
    for variable, _default, description in settings_table():
        assert description, f"{variable} has no description"


def test_cli_stops_with_one_line_and_no_traceback():
    env = {**os.environ, "TICKER_TASK_TIME_LIMIT_S": "zero"}
    result = subprocess.run(
        [sys.executable, "-m", "ticker_tasks.cli", "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "TICKER_TASK_TIME_LIMIT_S" in lines[0]
    assert "Traceback" not in result.stderr


def test_celery_worker_with_a_bad_setting_stops_with_one_line():
    env = {**os.environ, "TICKER_VISIBILITY_TIMEOUT_S": "-5"}
    result = subprocess.run(
        [sys.executable, "-c", "import celeryconfig"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "TICKER_VISIBILITY_TIMEOUT_S" in result.stderr
