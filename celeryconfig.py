"""Celery settings (lowercase names), built from :class:`ticker_tasks.settings.Settings`.

Loaded by name with ``app.config_from_object("celeryconfig")``. Importing it reads the
environment and validates it; it opens no connection.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery.schedules import crontab
from kombu.entity import Queue

from ticker_tasks.queues import MAINTENANCE, QUEUES, ROUTES
from ticker_tasks.settings import settings_or_exit

_settings = settings_or_exit()

# --- broker and results ------------------------------------------------------------------
broker_url = _settings.effective_broker_url
broker_connection_timeout = _settings.broker_connection_timeout_s
broker_connection_retry_on_startup = True
broker_transport_options: dict[str, Any] = (
    {
        # Above every time limit and retry countdown (validated in Settings): a task that is
        # still running or waiting is never handed to a second worker.
        "visibility_timeout": _settings.visibility_timeout_s,
        # Sweep often, scan every sweep: a task lost with its worker comes back within
        # visibility_timeout + a few seconds instead of ~100 s more.
        "unacked_restore_interval": _settings.unacked_restore_interval_s,
        "unacked_restore_throttle": 1,
        "socket_timeout": _settings.redis_socket_timeout_s,
        "socket_connect_timeout": _settings.redis_socket_timeout_s,
    }
    if _settings.broker_is_redis
    else {}
)
result_backend = _settings.redis_url
result_backend_transport_options = {"visibility_timeout": _settings.visibility_timeout_s}
redis_socket_timeout = _settings.redis_socket_timeout_s
redis_socket_connect_timeout = _settings.redis_socket_timeout_s
result_expires = _settings.result_expires_s
result_extended = True
task_ignore_result = True

# --- serialization ------------------------------------------------------------------------
task_serializer = "json"
result_serializer = "json"
# Public tasks speak JSON; the streamer sends tick batches as msgpack (raw frame bytes).
accept_content = ["json", "msgpack"]
result_accept_content = ["json"]

# --- queues and routing --------------------------------------------------------------------
task_queues = tuple(Queue(name, routing_key=name) for name in QUEUES)
task_default_queue = MAINTENANCE
task_create_missing_queues = False
task_routes = {pattern: {"queue": queue} for pattern, queue in ROUTES.items()}

# --- delivery guarantees -------------------------------------------------------------------
# Tasks are idempotent: acknowledge after running, so a crashed worker's task runs again.
task_acks_late = True
# Requeueing a killed pool child's task is opted into per task (idempotent ones only).
task_reject_on_worker_lost = False
worker_prefetch_multiplier = 1
task_time_limit = _settings.task_time_limit_s
task_soft_time_limit = _settings.task_soft_time_limit_s
worker_cancel_long_running_tasks_on_connection_loss = True
worker_max_tasks_per_child = _settings.worker_max_tasks_per_child
worker_max_memory_per_child = _settings.worker_max_memory_per_child_kib

# --- monitoring (Flower) ---------------------------------------------------------------------
worker_send_task_events = True
task_send_sent_event = True
task_track_started = True

# --- time ------------------------------------------------------------------------------------
timezone = "Asia/Kolkata"
enable_utc = True

# --- beat --------------------------------------------------------------------------------------
# Every periodic task is idempotent and guarded by a Redis lock plus a per-slot marker
# (ticker_tasks.locks.periodic_run), so an overlapping or doubled run is skipped.
beat_schedule: dict[str, dict[str, Any]] = {
    "instruments-refresh": {
        "task": "ticker_tasks.instruments.refresh",
        "schedule": crontab.from_string(_settings.schedule_instruments_refresh),
    },
    "check-account-tokens": {
        "task": "ticker_tasks.maintenance.check_tokens",
        "schedule": crontab.from_string(_settings.schedule_token_check),
    },
    "subscriptions-recentre": {
        "task": "ticker_tasks.subscriptions.recentre",
        "schedule": crontab.from_string(_settings.schedule_subscriptions_recentre),
    },
    "candles-completeness": {
        "task": "ticker_tasks.candles.check_completeness",
        "schedule": crontab.from_string(_settings.schedule_candles_completeness),
    },
    "candles-purge": {
        "task": "ticker_tasks.candles.purge",
        "schedule": crontab.from_string(_settings.schedule_candles_purge),
    },
    "bars-close": {
        "task": "ticker_tasks.bars.close",
        "schedule": timedelta(seconds=_settings.bars_close_interval_s),
        # A missed run is superseded by the next one.
        "options": {"expires": _settings.bars_close_interval_s * 2},
    },
}
