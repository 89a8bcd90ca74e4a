"""The one classification of broker and transport errors into the service's error tree.

:func:`classify` is pure: it looks at the exception raised by ``kiteconnect`` (or by
``requests`` beneath it) and at two facts about the call, and returns the
:class:`~ticker_tasks.errors.TickerTasksError` to raise (``raise classify(...) from exc``).

* ``request_sent``: the request may have been transmitted (False only when the caller knows no
  byte left, e.g. the failure came from its own pre-checks). Connect-phase errors prove the
  request was never sent whatever this flag says.
* ``idempotent``: repeating the call cannot act twice (every GET). Order placement,
  modification and cancellation and the session exchange are not idempotent.

=====================================================  =========================================
raised                                                  becomes
=====================================================  =========================================
``TickerTasksError`` (already classified)               itself
``TokenException`` (any code)                           ``AuthError`` (permanent)
any ``KiteException`` with HTTP 429                     ``RateLimited(retry_after=1.0)``
``NetworkException`` / ``DataException`` (not 429)     ``BrokerUnavailable`` if idempotent or
                                                        not sent, else ``AmbiguousError``
other ``KiteException`` with HTTP >= 500                same as the line above
other ``KiteException`` (``InputException``,            ``BrokerRejected(error_type=<class>)``
``OrderException``, ``PermissionException``,            (permanent)
``GeneralException``, ...) with HTTP < 500
``requests.ConnectTimeout``, ``SSLError``,              ``BrokerUnavailable``: the request never
``ProxyError``, ``ConnectionError`` while               reached the broker
connecting (refused, DNS, closed pool)
``requests.ConnectionError`` after connecting           ``BrokerUnavailable`` if idempotent or
(connection aborted / reset mid-exchange),              not sent, else ``AmbiguousError``: the
``ReadTimeout``, ``ChunkedEncodingError``, any other    broker may have acted
``requests.RequestException``
``MissingSchema``, ``InvalidSchema``, ``InvalidURL``,   ``ConfigError`` (bad ``kite_rest_root``)
``URLRequired``
anything else                                           ``TypeError`` is raised: a bug to fix,
                                                        not a broker error to retry
=====================================================  =========================================

:func:`is_retryable` says whether a classified error may be retried blindly;
:func:`is_outage` says whether it counts towards opening the account's circuit breaker.
"""

from __future__ import annotations

import requests
from urllib3.exceptions import ClosedPoolError, MaxRetryError, NewConnectionError

from ticker_tasks.errors import (
    AmbiguousError,
    AuthError,
    BrokerRejected,
    BrokerUnavailable,
    ConfigError,
    RateLimited,
    RetryableError,
    TickerTasksError,
)

BROKER_RETRY_AFTER_S = 1.0
"""Retry delay after Kite answered 429 (Kite sends no Retry-After; its windows are 1 s)."""

KITE_EXCEPTIONS_MODULE = "kiteconnect.exceptions"
"""Kite's exception classes are recognised by module and name, without importing
``kiteconnect``: its package imports KiteTicker, i.e. Twisted, and installs a reactor."""

_SERVER_TROUBLE = frozenset({"NetworkException", "DataException"})
_BAD_URL = (
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidURL,
    requests.exceptions.URLRequired,
)
_NEVER_SENT = (
    requests.exceptions.ConnectTimeout,
    requests.exceptions.SSLError,
    requests.exceptions.ProxyError,
)


def classify(
    exc: BaseException, *, request_sent: bool, idempotent: bool, operation: str = ""
) -> TickerTasksError:
    """Map a broker or transport exception to the service's error tree.

    Args:
        exc: What ``kiteconnect`` (or ``requests``) raised.
        request_sent: The request may have been transmitted to the broker.
        idempotent: Repeating the call cannot act twice.
        operation: Optional label prefixed to the message (e.g. ``"GET /quote"``).

    Returns:
        The error to raise (``raise err from exc``).

    Raises:
        TypeError: ``exc`` is neither a broker nor a transport error.
    """
    if isinstance(exc, TickerTasksError):
        return exc
    prefix = f"{operation}: " if operation else ""
    kite_classes = kite_exception_names(exc)
    if "KiteException" in kite_classes:
        return _classify_kite(
            exc, kite_classes, prefix=prefix, request_sent=request_sent, idempotent=idempotent
        )
    if isinstance(exc, requests.RequestException):
        return _classify_transport(
            exc, prefix=prefix, request_sent=request_sent, idempotent=idempotent
        )
    raise TypeError(f"not a broker or transport error: {type(exc).__name__}: {exc}")


def is_retryable(err: BaseException) -> bool:
    """Whether the call may be repeated as is (never true for an ambiguous outcome)."""
    return isinstance(err, RetryableError)


def is_outage(err: BaseException) -> bool:
    """Whether the error says the broker is unreachable or failing (circuit-breaker food).

    A rejection, an auth error or a 429 is an answer from a working broker, so it does not
    count; a server error, a network failure or an ambiguous outcome does.
    """
    return isinstance(err, BrokerUnavailable | AmbiguousError)


def kite_exception_names(exc: BaseException) -> frozenset[str]:
    """Names of the ``kiteconnect.exceptions`` classes ``exc`` is an instance of."""
    return frozenset(
        cls.__name__ for cls in type(exc).__mro__ if cls.__module__ == KITE_EXCEPTIONS_MODULE
    )


def _classify_kite(
    exc: BaseException,
    kite_classes: frozenset[str],
    *,
    prefix: str,
    request_sent: bool,
    idempotent: bool,
) -> TickerTasksError:
    error_type = type(exc).__name__
    code = _code(exc)
    message = f"{prefix}{error_type} (HTTP {code}): {exc}"
    if "TokenException" in kite_classes:
        return AuthError(message)
    if code == 429:
        return RateLimited(message, retry_after=BROKER_RETRY_AFTER_S)
    if kite_classes & _SERVER_TROUBLE or code >= 500:
        return _maybe_acted(message, request_sent=request_sent, idempotent=idempotent)
    return BrokerRejected(message, error_type=error_type)


def _classify_transport(
    exc: requests.RequestException, *, prefix: str, request_sent: bool, idempotent: bool
) -> TickerTasksError:
    message = f"{prefix}{type(exc).__name__}: {exc}"
    if isinstance(exc, _BAD_URL):
        return ConfigError(f"{message} (check TICKER_KITE_REST_ROOT)")
    if _never_sent(exc):
        return BrokerUnavailable(f"{message} (request not sent)")
    return _maybe_acted(message, request_sent=request_sent, idempotent=idempotent)


def _maybe_acted(message: str, *, request_sent: bool, idempotent: bool) -> TickerTasksError:
    if idempotent or not request_sent:
        return BrokerUnavailable(message)
    return AmbiguousError(f"{message} (the broker may have acted: reconcile before retrying)")


def _never_sent(exc: requests.RequestException) -> bool:
    """Whether the transport failed before the request could leave (connect phase)."""
    if isinstance(exc, _NEVER_SENT):
        return True
    if not isinstance(exc, requests.exceptions.ConnectionError):
        return False
    cause = exc.args[0] if exc.args else None
    if isinstance(cause, MaxRetryError):
        return isinstance(cause.reason, NewConnectionError)
    return isinstance(cause, ClosedPoolError)


def _code(exc: BaseException) -> int:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else 500
