"""One error hierarchy for the whole service.

Every error the service raises on purpose derives from :class:`TickerTasksError`. The tree
splits into a *retryable* branch (try again later: the cause is transient) and a *permanent*
branch (retrying cannot help), so a task names one base class in ``autoretry_for``::

    TickerTasksError
    ├── ConfigError                  bad setting; the process stops with one line
    ├── RetryableError               transient: retry with backoff
    │   ├── ServiceUnavailable       Redis, database or broker unreachable
    │   ├── BrokerUnavailable        Kite answered 5xx / network error before the request landed
    │   ├── RateLimited              a rate-limit slot was not free in time (or Kite said 429)
    │   └── CircuitOpen              the account's circuit breaker is open
    ├── AmbiguousError               the request may have reached the broker: reconcile, never
    │                                blind-retry (order placement after a timeout)
    └── PermanentError               retrying cannot help
        ├── ValidationError          bad input from a caller (counted, reported, not retried)
        ├── NotFound                 unknown instrument, account, order, ...
        ├── AuthError                Kite token invalid or expired
        ├── CredentialError          stored credential ciphertext unreadable with our keys
        └── BrokerRejected           Kite refused the request (InputException, OrderException, ...)
"""

from __future__ import annotations


class TickerTasksError(Exception):
    """Base class for every error raised by ticker_tasks."""


class ConfigError(TickerTasksError):
    """A setting is missing or invalid; the message names the environment variable."""


class RetryableError(TickerTasksError):
    """A transient failure: the same call may succeed later."""


class ServiceUnavailable(RetryableError):
    """A backing service (Redis, database, Celery broker) could not be reached."""


class BrokerUnavailable(RetryableError):
    """Kite could not be reached, or answered with a server error before acting."""


class RateLimited(RetryableError):
    """No rate-limit slot was free within the allowed wait, or Kite answered 429."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CircuitOpen(RetryableError):
    """The circuit breaker of an account is open: calls are refused until it half-opens."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AmbiguousError(TickerTasksError):
    """The request may or may not have reached the broker; the outcome must be reconciled."""


class PermanentError(TickerTasksError):
    """A failure that retrying cannot fix."""


class ValidationError(PermanentError):
    """Input that breaks a documented contract."""


class NotFound(PermanentError):
    """A referenced entity (instrument, account, order) does not exist."""


class AuthError(PermanentError):
    """Kite rejected the credentials (expired or invalid access token)."""


class CredentialError(PermanentError):
    """A stored credential could not be decrypted: tampered, or encrypted under an unknown key."""


class BrokerRejected(PermanentError):
    """Kite refused the request; the message carries Kite's error type and text."""

    def __init__(self, message: str, *, error_type: str = "GeneralException") -> None:
        super().__init__(message)
        self.error_type = error_type
