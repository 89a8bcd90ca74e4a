"""One reused broker connection and producer publishing ``process_batch`` messages.

The message is exactly what ``app.send_task("ticker_tasks.ticks.process_batch",
kwargs=batch.to_message(), serializer="msgpack", queue="ticks")`` sends (Celery protocol 2),
through one kombu producer on one connection kept for the life of the streamer. After a
failure the connection is dropped and a fresh one is opened by the next publish (the old
socket may be half-closed). Every connect and socket operation has a short timeout and no
retry loop of its own: kombu's ``max_retries=0`` and ``retry=False`` make a dead broker fail
the publish at once, so the caller decides when to try again (asynchronously).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from kombu.exceptions import EncodeError, OperationalError

from ticker_tasks.errors import ServiceUnavailable, ValidationError

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

PROCESS_BATCH: Final = "ticker_tasks.ticks.process_batch"
TICKS_QUEUE: Final = "ticks"
#: What a broker answers without credentials: Redis replies to PING (+PONG or -NOAUTH), an
#: AMQP 0-9-1 server replies to the protocol header with Connection.Start.
_HELLO: Final = {"redis": b"PING\r\n", "amqp": b"AMQP\x00\x00\x09\x01"}


class ProbeTarget(NamedTuple):
    """An asynchronous liveness probe: connect, send ``hello``, expect any answer."""

    host: str
    port: int
    #: Bytes to send; empty: a TCP connect is the whole probe (TLS brokers).
    hello: bytes


class KombuSender:
    """Publishes tick batch messages on one connection of ``app``'s broker.

    Args:
        app: A Celery app configured from ``celeryconfig`` (queues and routes).
        timeout_s: Connect and socket timeout of the broker connection.
        url: Broker URL; default the app's ``broker_url``.
    """

    def __init__(self, app: Celery, *, timeout_s: float, url: str | None = None) -> None:
        self._app = app
        self._timeout_s = timeout_s
        self._url = url
        self._connection: Any = None
        self._producer: Any = None
        self._errors: tuple[type[BaseException], ...] = (OperationalError, OSError)
        self._target = self._resolve_target()

    def _new_connection(self) -> Any:
        timeout = self._timeout_s
        return self._app.connection_for_write(
            self._url,
            connect_timeout=timeout,
            transport_options={
                # No reconnect loop inside kombu (it would sleep on the event loop).
                "max_retries": 0,
                "interval_start": 0,
                "interval_step": 0,
                "interval_max": 0,
                # Redis transport
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
                # AMQP transport
                "read_timeout": timeout,
                "write_timeout": timeout,
            },
        )

    def _resolve_target(self) -> ProbeTarget | None:
        connection = self._new_connection()
        try:
            host = connection.hostname
            port = connection.port or connection.transport.default_port
            transport = str(connection.transport_cls)
            tls = bool(connection.ssl) or (self._url or "").startswith(("rediss", "amqps"))
        finally:
            connection.release()
        if not host or "/" in str(host) or not port:  # unix socket, in-memory transport
            return None
        hello = b"" if tls else _HELLO.get(transport, b"")
        return ProbeTarget(str(host), int(port), hello)

    def probe_target(self) -> ProbeTarget | None:
        """Where and how to probe the broker without blocking; None for unix sockets."""
        return self._target

    def publish(self, message: dict[str, Any]) -> None:
        """Send one ``process_batch`` message (msgpack, queue ``ticks``).

        Raises:
            ServiceUnavailable: The broker could not be reached or failed mid-publish (the
                message may or may not have arrived; send it again).
            ValidationError: The message cannot be serialized (never sent).
        """
        try:
            if self._producer is None:
                self._connection = self._new_connection()
                self._producer = self._app.amqp.Producer(self._connection, auto_declare=False)
                self._errors = (
                    OperationalError,
                    OSError,
                    *self._connection.connection_errors,
                    *self._connection.channel_errors,
                )
            self._app.send_task(
                PROCESS_BATCH,
                kwargs=message,
                serializer="msgpack",
                queue=TICKS_QUEUE,
                producer=self._producer,
                retry=False,
                # Nobody waits for a result: without this, every send would subscribe to the
                # result backend, whose reconnect loop blocks the event loop when Redis is away.
                ignore_result=True,
            )
        except EncodeError as exc:
            raise ValidationError(f"tick batch cannot be encoded: {exc}") from exc
        except self._errors as exc:
            self.close()
            raise ServiceUnavailable(f"broker: {exc}") from exc

    def close(self) -> None:
        """Drop the connection (the next publish opens a new one)."""
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(*self._errors):
                connection.release()
