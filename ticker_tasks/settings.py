"""Every tunable of the service, validated once at start-up.

Values come from environment variables prefixed ``TICKER_`` (or a ``.env`` file in the working
directory). :func:`load_settings` turns a validation failure into one :class:`ConfigError`
line naming the variable, so a bad value never surfaces as a traceback.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.backfill import Interval
from ticker_tasks.errors import ConfigError

ENV_PREFIX = "TICKER_"

#: Five whitespace-separated cron fields.
CRON_PATTERN = r"^\S+\s+\S+\s+\S+\s+\S+\s+\S+$"

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]


class Settings(BaseSettings):
    """Typed, frozen configuration; build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # --- services -------------------------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis data store: state, published ticks, locks, rate limits.",
        pattern=r"^(redis|rediss|unix)://",
    )
    broker_url: str | None = Field(
        None,
        description="Celery broker; a redis:// or amqp:// URL. Defaults to redis_url.",
        pattern=r"^(redis|rediss|unix|amqp|amqps|pyamqp)://",
    )
    database_url: str = Field(
        "sqlite:///./var/ticker_tasks.db",
        description="SQLAlchemy URL: PostgreSQL in production, embedded SQLite by default.",
        pattern=r"^(sqlite|postgresql)(\+\w+)?://",
    )
    secret_keys: SecretStr | None = Field(
        None,
        description="Comma-separated Fernet keys encrypting credentials at rest; the first "
        "encrypts, all decrypt (rotation).",
    )
    log_level: str = Field(
        "INFO",
        description="Log level of every process.",
        pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$",
    )

    # --- Kite -------------------------------------------------------------------------------
    kite_rest_root: str = Field(
        "https://api.kite.trade",
        description="Root URL of the Kite REST API (the simulator's in development).",
        pattern=r"^https?://",
    )
    kite_ws_root: str = Field(
        "wss://ws.kite.trade",
        description="Root URL of the Kite ticker WebSocket (the simulator's in development).",
        pattern=r"^wss?://[^?]+$",
    )
    kite_rest_timeout_s: PositiveFloat = Field(7.0, description="Timeout of one REST call.")
    kite_ws_connect_timeout_s: PositiveFloat = Field(
        10.0, description="Timeout of a WebSocket connect + upgrade."
    )
    kite_rate_general_per_s: PositiveFloat = Field(
        10.0, description="Kite limit for ordinary REST endpoints, per api_key."
    )
    kite_rate_historical_per_s: PositiveFloat = Field(
        3.0, description="Kite limit for historical candles, per api_key."
    )
    kite_rate_quote_per_s: PositiveFloat = Field(
        1.0, description="Kite limit for /quote, /quote/ltp and /quote/ohlc, per api_key."
    )
    kite_rate_orders_per_s: PositiveFloat = Field(
        10.0, description="Kite limit for order placement/modification, per api_key."
    )
    kite_rate_orders_per_min: PositiveInt = Field(400, description="Kite order cap per minute.")
    kite_rate_orders_per_day: PositiveInt = Field(5000, description="Kite order cap per day.")
    kite_rate_headroom: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Share of each Kite limit our client uses, so arrival jitter never trips "
        "the broker's window.",
    )
    kite_tokens_per_connection: PositiveInt = Field(
        3000, description="Instruments per ticker connection (Kite's cap)."
    )
    kite_connections_per_account: PositiveInt = Field(
        3, description="Ticker connections per api_key (Kite's cap)."
    )
    breaker_failure_threshold: PositiveInt = Field(
        5, description="Consecutive retryable failures that open an account's circuit."
    )
    breaker_reset_s: PositiveFloat = Field(
        30.0, description="Seconds an open circuit waits before letting one probe through."
    )

    # --- market data ------------------------------------------------------------------------
    instrument_count_tolerance: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Largest share by which a segment of a new instruments dump may shrink "
        "against the current master before the refresh is refused (growth always passes).",
    )

    freeze_quantities: dict[str, int] = Field(
        {"NIFTY": 1800, "BANKNIFTY": 900, "FINNIFTY": 1800, "MIDCPNIFTY": 2800},
        description="Exchange freeze quantity per underlying (JSON object); Kite's dump lacks it.",
    )
    registry_check_interval_s: PositiveFloat = Field(
        5.0, description="How often a process checks for a new instrument registry version."
    )
    backfill_range_cap_days: dict[str, PositiveInt] = Field(
        {},
        description="Overrides of Kite's longest historical request per interval in days "
        '(JSON object, e.g. {"minute": 30}); defaults: minute 60, 3/5/10minute 100, '
        "15/30minute 200, 60minute 400, day 2000.",
    )
    backfill_max_retries: PositiveInt = Field(
        8,
        description="Transient failures (broker or service unavailable) after which a backfill "
        "request is given up and its range reported as failed; rate-limit waits do not count.",
    )

    # --- candles: completeness check and retention -------------------------------------------
    completeness_budget_share: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Share of kite_rate_historical_per_s the completeness check may use: a run "
        "makes at most floor(share x rate x the cron's slot length in seconds) requests.",
    )
    completeness_volume_tolerance: float = Field(
        0.01,
        ge=0,
        description="Relative difference of a stream bar's volume from Kite's minute candle "
        "within which the bar agrees.",
    )
    completeness_price_tolerance: float = Field(
        0.0001,
        ge=0,
        description="Relative difference of a stream bar's high and low from Kite's minute "
        "candle within which the bar agrees.",
    )
    candles_job_max_s: PositiveFloat = Field(
        60.0,
        description="Wall-clock budget of one completeness or purge run: no instrument or chunk "
        "is started after it (below task_soft_time_limit_s); the next run continues.",
    )
    candle_retention_days: dict[str, PositiveInt] = Field(
        {
            "minute": 400,
            "3minute": 730,
            "5minute": 730,
            "10minute": 730,
            "15minute": 1825,
            "30minute": 1825,
            "60minute": 1825,
        },
        description="Days of candles kept per interval (JSON object, replaces the default; "
        "continuous series '+c' follow their interval); an interval not listed is kept forever.",
    )
    candle_purge_chunk_rows: PositiveInt = Field(
        10_000, description="Candles deleted per transaction by the retention purge."
    )

    # --- beat schedule (cron: minute hour day-of-month month day-of-week, Asia/Kolkata) ------
    schedule_instruments_refresh: str = Field(
        "15 8 * * *",
        description="When beat refreshes the instrument master (Kite publishes it ~08:00 IST).",
        pattern=CRON_PATTERN,
    )
    schedule_token_check: str = Field(
        "30 8 * * *",
        description="When beat validates every account's token (before the 09:00 pre-open).",
        pattern=CRON_PATTERN,
    )
    schedule_subscriptions_recentre: str = Field(
        "* 9-15 * * 1-5",
        description="When beat re-centres option-chain subscriptions on the underlyings' "
        "prices and rolls expired chains (default: every minute of the session hours).",
        pattern=CRON_PATTERN,
    )
    schedule_candles_completeness: str = Field(
        "*/5 16-23 * * *",
        description="When beat checks stream bars of the latest session against Kite's minute "
        "candles (every day, so special weekend sessions are covered; a run with nothing due "
        "makes no request).",
        pattern=CRON_PATTERN,
    )
    schedule_candles_purge: str = Field(
        "30 2 * * *",
        description="When beat deletes candles older than candle_retention_days.",
        pattern=CRON_PATTERN,
    )

    # --- account leases and subscription planning --------------------------------------------
    lease_ttl_s: PositiveFloat = Field(
        10.0,
        description="TTL of a streamer's account lease (renewed every third of it); a dead "
        "streamer's accounts are taken over within this plus lease_poll_interval_s.",
    )
    lease_safety_margin_s: PositiveFloat = Field(
        2.0,
        description="A lease holder whose renewals fail closes the account's sockets this long "
        "before its lease could expire in Redis (below two thirds of lease_ttl_s).",
    )
    lease_poll_interval_s: PositiveFloat = Field(
        2.0, description="How often a streamer looks for accounts whose lease nobody holds."
    )
    subscription_canary_tokens: list[int] = Field(
        [256265],
        description="Index tokens subscribed on every ticker connection (one slot each, mode "
        "ltp) so a silent socket shows; default NIFTY 50.",
    )
    subscription_atm_hysteresis_strikes: float = Field(
        0.5,
        ge=0,
        description="A chain subscription re-centres once the underlying is this many strikes "
        "beyond the midpoint between its ATM strike and the next.",
    )

    # --- timeouts and locks -----------------------------------------------------------------
    redis_socket_timeout_s: PositiveFloat = Field(
        5.0, description="Socket and connect timeout of every Redis call."
    )
    database_connect_timeout_s: PositiveInt = Field(
        5, description="Connect timeout of the database."
    )
    database_statement_timeout_ms: PositiveInt = Field(
        30_000, description="PostgreSQL statement_timeout of every session."
    )
    lock_timeout_s: PositiveFloat = Field(
        60.0, description="TTL of distributed locks (periodic-task guards)."
    )
    rate_limit_max_wait_s: PositiveFloat = Field(
        10.0, description="Longest wait for a rate-limit slot inside one call."
    )

    # --- Celery -----------------------------------------------------------------------------
    task_time_limit_s: PositiveInt = Field(
        120, description="Hard time limit of a task; long jobs fan out into short tasks."
    )
    task_soft_time_limit_s: PositiveInt = Field(
        100, description="Soft time limit: SoftTimeLimitExceeded lets a task clean up."
    )
    retry_backoff_max_s: PositiveInt = Field(
        60, description="Longest retry countdown (must stay below the visibility timeout)."
    )
    visibility_timeout_s: PositiveInt = Field(
        300,
        description="Redis broker: an unacknowledged task is redelivered after this many "
        "seconds (above every time limit and countdown).",
    )
    unacked_restore_interval_s: PositiveInt = Field(
        2, description="Redis broker: seconds between sweeps that restore overdue tasks."
    )
    broker_connection_timeout_s: PositiveFloat = Field(
        5.0, description="Timeout of a broker connect."
    )
    result_expires_s: PositiveInt = Field(
        86_400, description="Lifetime of the results of tasks that keep one."
    )
    worker_max_tasks_per_child: PositiveInt = Field(
        10_000, description="Recycle a pool child after this many tasks."
    )
    worker_max_memory_per_child_kib: PositiveInt = Field(
        1_048_576, description="Recycle a pool child above this resident size (KiB)."
    )
    pool_ticks_concurrency: PositiveInt = Field(2, description="Pool size of the ticks worker.")
    pool_ticks_prefetch: PositiveInt = Field(
        8, description="Prefetch multiplier of the ticks worker (many small tasks)."
    )
    pool_greeks_concurrency: PositiveInt = Field(1, description="Pool size of the greeks worker.")
    pool_orders_concurrency: PositiveInt = Field(1, description="Pool size of the orders worker.")
    pool_backfill_concurrency: PositiveInt = Field(
        2, description="Pool size of the backfill worker."
    )
    pool_maintenance_concurrency: PositiveInt = Field(
        1, description="Pool size of the maintenance worker."
    )

    # --- tick feed: streamer batching, broker outages, capture --------------------------------
    streamer_batch_max_frames: PositiveInt = Field(
        200, description="Frames per tick batch at most: a full batch is sent at once."
    )
    streamer_batch_max_delay_s: PositiveFloat = Field(
        0.05, description="Age of a batch's first frame at which the batch is sent anyway."
    )
    streamer_publish_timeout_s: PositiveFloat = Field(
        1.0,
        description="Socket and connect timeout of one batch publish (the streamer publishes "
        "synchronously on its event loop: keep it short).",
    )
    streamer_reconnect_max_s: PositiveFloat = Field(
        10.0, description="Longest wait between broker reconnect probes (backoff from 0.1 s)."
    )
    streamer_buffer_max_bytes: PositiveInt = Field(
        67_108_864,
        description="Memory for tick batches the broker has not taken yet; beyond it the oldest "
        "go to the on-disk journal.",
    )
    streamer_journal_dir: str = Field(
        "./var/journal",
        description="Directory of the on-disk journal of undelivered batches (one per streamer "
        "process); replayed in order when the broker is back, also after a restart.",
    )
    streamer_journal_max_bytes: PositiveInt = Field(
        1_073_741_824,
        description="Disk for the journal; beyond it the newest batches are dropped and counted.",
    )
    streamer_silence_timeout_s: PositiveFloat = Field(
        10.0,
        description="A ticker socket that delivers nothing (no frame, no heartbeat) this long "
        "is closed and replaced.",
    )
    streamer_shutdown_timeout_s: PositiveFloat = Field(
        20.0,
        description="SIGTERM/SIGINT: unsubscribe, read until quiet, flush, drain the delivery and "
        "release the leases within this many seconds.",
    )
    streamer_metrics_port: int = Field(
        9108,
        ge=0,
        le=65535,
        description="Port of the streamer's /metrics (Prometheus) and /health; 0 = off.",
    )
    streamer_reconcile_interval_s: float = Field(
        60.0,
        ge=0,
        description="How often the streamer re-plans without a notification (catches a lost "
        "one); 0 = only on notifications and lease changes.",
    )
    streamer_token_poll_interval_s: PositiveFloat = Field(
        5.0,
        description="While an account's token is rejected (403), how often the streamer reads "
        "the stored token to resume on a new one.",
    )
    streamer_canary_lag_s: float = Field(
        15.0,
        ge=0,
        description="A ticker socket whose last canary tick is older than the freshest one of "
        "its account's other sockets by more than this many seconds is closed and replaced "
        "(0 = off).",
    )
    streamer_capture_dir: str | None = Field(
        None,
        description="Directory for raw-frame capture files (one per connection per day); unset: "
        "no capture.",
    )
    streamer_source: Literal["stream", "mock"] = Field(
        "stream",
        description="Source stamped on the streamer's tick batches: stream (live, held to the "
        "trading session and to now) or mock (simulated feeds and load tests at any hour: "
        "timestamps are checked against each frame's receive time).",
    )
    ticks_dedup_window: PositiveInt = Field(
        100_000,
        description="Batch sequence numbers remembered per connection to count a redelivered "
        "batch once.",
    )
    order_updates_maxlen: PositiveInt = Field(
        100_000, description="Approximate length cap of the Redis stream of raw order updates."
    )
    ticks_price_tolerance: float = Field(
        0.001,
        ge=0,
        description="Fraction by which a tick's last price may lie outside its day's "
        "[low, high] before the tick is rejected.",
    )
    ticks_clock_skew_s: float = Field(
        5.0,
        ge=0,
        description="A tick whose exchange timestamp is later than now plus this many seconds "
        "is rejected (future).",
    )
    ticks_max_age_s: PositiveFloat = Field(
        900.0,
        description="A tick whose exchange timestamp is older than this many seconds is "
        "rejected (stale); replay and mock batches measure it from the frame's receive time.",
    )
    ticks_dead_letter_sample: int = Field(
        10,
        ge=0,
        description="Rejected ticks of one batch written to the dead-letter stream (the rest "
        "are only counted).",
    )
    ticks_dead_letter_maxlen: PositiveInt = Field(
        10_000, description="Approximate length cap of the dead-letter stream of rejected ticks."
    )
    ticks_stream_maxlen: PositiveInt = Field(
        100_000,
        description="Approximate length cap (in batch messages) of the published tick stream.",
    )
    # --- 1-minute bars ---------------------------------------------------------------------------
    bars_redis_ttl_s: PositiveInt = Field(
        7200,
        description="How long an open or recently closed 1-minute bar stays in Redis; a late "
        "tick older than this no longer amends its bar.",
    )
    bars_close_interval_s: PositiveFloat = Field(
        5.0, description="How often beat runs the bar closer (seconds)."
    )
    bars_close_grace_s: float = Field(
        3.0,
        ge=0,
        description="A minute's bars are closed this many seconds after the minute ends, so "
        "ticks still in flight are included.",
    )
    bars_close_max: PositiveInt = Field(
        50_000, description="Bars closed by one run of the closer at most (the rest next run)."
    )
    bars_stream_maxlen: PositiveInt = Field(
        100_000,
        description="Approximate length cap (in messages) of the published closed-bar stream.",
    )

    @field_validator(
        "schedule_instruments_refresh",
        "schedule_token_check",
        "schedule_subscriptions_recentre",
        "schedule_candles_completeness",
        "schedule_candles_purge",
    )
    @classmethod
    def _check_cron(cls, value: str) -> str:
        from celery.schedules import ParseException, crontab

        try:
            crontab.from_string(value)
        except (ParseException, ValueError) as exc:
            raise ValueError(f"not a valid cron expression: {exc}") from None
        return value

    @field_validator("candle_retention_days")
    @classmethod
    def _check_retention_intervals(cls, value: dict[str, int]) -> dict[str, int]:
        known = get_args(Interval)
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"unknown intervals {unknown}; one of {', '.join(known)}")
        return value

    @model_validator(mode="after")
    def _check_candles_job_budget(self) -> Settings:
        if self.candles_job_max_s >= self.task_soft_time_limit_s:
            raise ValueError(
                f"candles_job_max_s ({self.candles_job_max_s}) must be below "
                f"task_soft_time_limit_s ({self.task_soft_time_limit_s})"
            )
        return self

    @model_validator(mode="after")
    def _check_time_budget(self) -> Settings:
        if self.task_soft_time_limit_s >= self.task_time_limit_s:
            raise ValueError(
                "task_soft_time_limit_s must be below task_time_limit_s "
                f"({self.task_soft_time_limit_s} >= {self.task_time_limit_s})"
            )
        longest = max(self.task_time_limit_s, self.retry_backoff_max_s)
        if self.visibility_timeout_s <= longest:
            raise ValueError(
                f"visibility_timeout_s ({self.visibility_timeout_s}) must exceed the longest "
                f"time limit or retry countdown ({longest})"
            )
        return self

    @property
    def effective_broker_url(self) -> str:
        """The Celery broker URL: ``broker_url`` or, when unset, ``redis_url``."""
        return self.broker_url or self.redis_url

    @property
    def broker_is_redis(self) -> bool:
        """Whether the Celery broker is Redis (transport options apply) or AMQP."""
        return not self.effective_broker_url.startswith(("amqp", "pyamqp"))


def _variable(loc: tuple[int | str, ...]) -> str:
    name = str(loc[0]) if loc else "settings"
    return ENV_PREFIX + name.upper()


def describe_validation_error(exc: ValidationError) -> str:
    """Render the first validation problem as one line naming the environment variable."""
    first: dict[str, Any] = dict(exc.errors()[0])
    loc = tuple(first.get("loc", ()))
    message = str(first.get("msg", "invalid value"))
    if not loc:
        # A cross-field rule: the message itself names the fields.
        return f"invalid settings: {message.removeprefix('Value error, ')}"
    variable = _variable(loc)
    secret = "secret" in variable.lower()
    shown = "" if secret or "input" not in first else f" (got {first['input']!r})"
    return f"{variable}: {message}{shown}"


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings; raise :class:`ConfigError` with one clear line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting: the README's configuration table."""
    rows: list[tuple[str, str, str]] = []
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "" if default is None else str(default)
        if isinstance(default, SecretStr):
            shown = "(secret)"
        rows.append((ENV_PREFIX + name.upper(), shown, field.description or ""))
    return rows


def settings_or_exit(**overrides: Any) -> Settings:
    """:func:`load_settings` for process entry points: a bad value exits with one line."""
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        print(f"ticker_tasks: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
