"""The one classification of broker and transport errors (ticker_tasks.kite.errors)."""

from __future__ import annotations

import socket
import subprocess
import sys
from http.client import RemoteDisconnected

import pytest
import requests
from kiteconnect import exceptions as kex
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from ticker_tasks.errors import (
    AmbiguousError,
    AuthError,
    BrokerRejected,
    BrokerUnavailable,
    CircuitOpen,
    ConfigError,
    RateLimited,
)
from ticker_tasks.kite.errors import classify, is_outage, is_retryable


def _refused() -> requests.ConnectionError:
    reason = NewConnectionError(None, "Failed to establish a new connection: refused")
    return requests.ConnectionError(MaxRetryError(None, "/orders/regular", reason))


def _aborted() -> requests.ConnectionError:
    return requests.ConnectionError(
        ProtocolError("Connection aborted.", RemoteDisconnected("closed without response"))
    )


# (exception, expected when idempotent (GET), expected when not idempotent (order write))
TABLE = [
    pytest.param(kex.TokenException("Incorrect `api_key` or `access_token`."), AuthError,
                 AuthError, id="token-403"),
    pytest.param(kex.NetworkException("Too many requests", code=429), RateLimited, RateLimited,
                 id="network-429"),
    pytest.param(kex.InputException("bad quantity", code=400), BrokerRejected, BrokerRejected,
                 id="input-400"),
    pytest.param(kex.OrderException("insufficient funds", code=400), BrokerRejected,
                 BrokerRejected, id="order-400"),
    pytest.param(kex.PermissionException("not allowed", code=403), BrokerRejected,
                 BrokerRejected, id="permission-403"),
    pytest.param(kex.GeneralException("Insufficient margin", code=400), BrokerRejected,
                 BrokerRejected, id="general-400"),
    pytest.param(kex.GeneralException("route not found", code=404), BrokerRejected,
                 BrokerRejected, id="general-404"),
    pytest.param(kex.GeneralException("oops", code=500), BrokerUnavailable, AmbiguousError,
                 id="general-500"),
    pytest.param(kex.OrderException("OMS error", code=500), BrokerUnavailable, AmbiguousError,
                 id="order-500"),
    pytest.param(kex.NetworkException("gateway timeout", code=504), BrokerUnavailable,
                 AmbiguousError, id="network-504"),
    pytest.param(kex.NetworkException("OMS unreachable"), BrokerUnavailable, AmbiguousError,
                 id="network-503"),
    pytest.param(kex.DataException("Unknown Content-Type (text/html)"), BrokerUnavailable,
                 AmbiguousError, id="data-502"),
    pytest.param(requests.ConnectTimeout("connect timed out"), BrokerUnavailable,
                 BrokerUnavailable, id="connect-timeout"),
    pytest.param(_refused(), BrokerUnavailable, BrokerUnavailable, id="connection-refused"),
    pytest.param(requests.exceptions.SSLError("handshake"), BrokerUnavailable,
                 BrokerUnavailable, id="ssl-handshake"),
    pytest.param(_aborted(), BrokerUnavailable, AmbiguousError, id="connection-aborted"),
    pytest.param(requests.ReadTimeout("read timed out"), BrokerUnavailable, AmbiguousError,
                 id="read-timeout"),
    pytest.param(requests.exceptions.ChunkedEncodingError("truncated"), BrokerUnavailable,
                 AmbiguousError, id="chunked-body"),
    pytest.param(requests.exceptions.MissingSchema("no scheme"), ConfigError, ConfigError,
                 id="bad-root-url"),
]  # fmt: skip


@pytest.mark.parametrize(("exc", "for_get", "for_order"), TABLE)
def test_classification_table(exc, for_get, for_order):
    got_get = classify(exc, request_sent=True, idempotent=True)
    got_order = classify(exc, request_sent=True, idempotent=False)
    assert type(got_get) is for_get
    assert type(got_order) is for_order
    assert is_retryable(got_get) == issubclass(for_get, BrokerUnavailable | RateLimited)


@pytest.mark.parametrize("exc", [_aborted(), requests.ReadTimeout("x"), kex.DataException("x")])
def test_nothing_is_ambiguous_when_the_request_was_not_sent(exc):
    assert type(classify(exc, request_sent=False, idempotent=False)) is BrokerUnavailable


def test_rejection_carries_kite_error_type_and_message():
    err = classify(
        kex.InputException("Quantity should be a multiple of lot size", code=400),
        request_sent=True,
        idempotent=False,
        operation="POST /orders/regular",
    )
    assert isinstance(err, BrokerRejected)
    assert err.error_type == "InputException"
    assert "POST /orders/regular" in str(err)
    assert "lot size" in str(err)
    assert "400" in str(err)


def test_rate_limited_by_broker_has_a_retry_after():
    err = classify(kex.NetworkException("Too many requests", code=429), request_sent=True,
                   idempotent=True)  # fmt: skip
    assert isinstance(err, RateLimited)
    assert err.retry_after > 0


def test_unknown_kite_error_type_becomes_general_and_is_rejected():
    # kiteconnect turns unknown error_type strings (MarginException, ...) into GeneralException.
    err = classify(kex.GeneralException("Insufficient funds", code=400), request_sent=True,
                   idempotent=False)  # fmt: skip
    assert isinstance(err, BrokerRejected)
    assert err.error_type == "GeneralException"


def test_already_classified_errors_pass_through():
    original = CircuitOpen("open", retry_after=3.0)
    assert classify(original, request_sent=True, idempotent=False) is original


def test_other_exceptions_are_bugs_not_broker_errors():
    with pytest.raises(TypeError):
        classify(KeyError("content-type"), request_sent=True, idempotent=True)


@pytest.mark.parametrize(
    ("err", "retryable", "outage"),
    [
        (BrokerUnavailable("5xx"), True, True),
        (AmbiguousError("timeout"), False, True),
        (RateLimited("429"), True, False),
        (CircuitOpen("open", retry_after=1.0), True, False),
        (BrokerRejected("bad"), False, False),
        (AuthError("token"), False, False),
    ],
)
def test_retryable_and_outage_predicates(err, retryable, outage):
    assert is_retryable(err) is retryable
    assert is_outage(err) is outage


# --- the same classification on exceptions raised by a real requests call -------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_real_connection_refused_is_retryable_even_for_orders():
    with pytest.raises(requests.ConnectionError) as caught:
        requests.post(f"http://127.0.0.1:{_closed_port()}/orders/regular", timeout=2)
    err = classify(caught.value, request_sent=True, idempotent=False)
    assert isinstance(err, BrokerUnavailable)


def test_real_read_timeout_on_an_order_is_ambiguous():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        # The kernel completes the handshake from the backlog; nobody ever answers: the request
        # is sent and the response never comes.
        server.listen(1)
        port = server.getsockname()[1]
        with pytest.raises(requests.ReadTimeout) as caught:
            requests.post(f"http://127.0.0.1:{port}/orders/regular", data={"q": 1}, timeout=0.3)
    assert isinstance(classify(caught.value, request_sent=True, idempotent=False), AmbiguousError)
    assert isinstance(classify(caught.value, request_sent=True, idempotent=True), BrokerUnavailable)


def test_importing_the_kite_adapter_does_not_import_twisted():
    # kiteconnect's package imports KiteTicker (Twisted, installs a reactor): only a process
    # that builds a REST client pays for it, never one that merely builds its Runtime.
    probe = (
        "import sys, ticker_tasks.runtime, ticker_tasks.kite.rest, ticker_tasks.kite.errors\n"
        "assert 'twisted' not in sys.modules and 'kiteconnect' not in sys.modules, 'imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
