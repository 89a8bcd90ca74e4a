"""Order update task (queue ``orders``): ``ticker_tasks.orders.update``, first version.

The streamer forwards every ticker text frame of type ``order`` as an
:class:`schemas.ticks.OrderUpdate`. This version *records* the raw update; reconciling the
order's own state is the order lifecycle's job (a later issue):

1. Redis stream :data:`UPDATES_STREAM` (``ticker_tasks:orders:updates``), trimmed with
   ``MAXLEN ~ TICKER_ORDER_UPDATES_MAXLEN``; fields ``account_id``, ``order_id``, ``status``,
   ``update_timestamp``, ``filled_quantity``, ``received_at`` (epoch seconds) and ``data``
   (Kite's payload as JSON text).
2. When the order is ours (an :class:`~ticker_tasks.db.models.Order` of that account with
   ``broker_order_id`` = ``order_id``), an :class:`~ticker_tasks.db.models.OrderEvent` row with
   ``source="ws"``, ``at`` = receive time and ``payload = {"update_key": ..., "data": ...}``.

Idempotency: an update is identified by (``order_id``, ``status``,
``exchange_update_timestamp`` or else ``order_timestamp``, ``filled_quantity``; the last one
tells apart two partial fills reported within the same second). Both steps are idempotent on
their own, so a retry after a failure between them completes the missing one: the stream
entry is added only when ``SET NX`` of ``ticker_tasks:orders:seen:{digest}`` (TTL
:data:`SEEN_TTL_S`) succeeds, in the same Lua script; the event row is inserted only when no
``ws`` event of the order carries the same ``update_key`` (checked under a row lock on the
order, so duplicates running at once do not both insert).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from typing import Any, Final

import redis
from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from schemas.ticks import OrderUpdate
from ticker_tasks.app import app
from ticker_tasks.db.models import Order, OrderEvent
from ticker_tasks.errors import ServiceUnavailable
from ticker_tasks.metrics import Metrics
from ticker_tasks.tasks.base import BaseTask
from ticker_tasks.tasks.retry import retry

log = logging.getLogger(__name__)

ORDER_UPDATE: Final = "ticker_tasks.orders.update"
UPDATES_STREAM: Final = "ticker_tasks:orders:updates"
SEEN_KEY: Final = "ticker_tasks:orders:seen:{digest}"
#: How long an update is remembered for deduplication (redeliveries come within minutes).
SEEN_TTL_S: Final = 3 * 86_400
EVENT_SOURCE: Final = "ws"

# KEYS: seen, stream. ARGV: ttl, maxlen, then the entry's field/value pairs.
_RECORD_ONCE: Final = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return false
end
local entry = {}
for i = 3, #ARGV do entry[#entry + 1] = ARGV[i] end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(entry))
"""


def update_key(update: OrderUpdate) -> str:
    """The identity of an update: what makes a second delivery a duplicate."""
    filled = update.data.get("filled_quantity", "")
    parts = (update.order_id, update.status, update.update_timestamp, str(filled))
    return "|".join(parts)


def record_in_stream(client: redis.Redis, update: OrderUpdate, *, maxlen: int) -> bool:
    """Append the update to :data:`UPDATES_STREAM` unless already there; True when added.

    Raises:
        redis.RedisError: Redis is unreachable (nothing was recorded).
    """
    key = update_key(update)
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    fields = {
        "account_id": update.account_id,
        "order_id": update.order_id,
        "status": update.status,
        "update_timestamp": update.update_timestamp,
        "filled_quantity": str(update.data.get("filled_quantity", "")),
        "received_at": repr(update.received_at),
        "data": json.dumps(update.data, separators=(",", ":"), default=str),
    }
    script = client.register_script(_RECORD_ONCE)
    flat = [item for pair in fields.items() for item in pair]
    keys = [SEEN_KEY.format(digest=digest), UPDATES_STREAM]
    added = script(keys=keys, args=[SEEN_TTL_S, maxlen, *flat])
    return added is not None


def record_event(sessions: sessionmaker[Session], update: OrderUpdate) -> bool:
    """Add an ``OrderEvent`` when the order is ours and the update is new; True when added.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: The database failed (nothing was written).
    """
    key = update_key(update)
    with sessions.begin() as session:
        order_id = session.scalars(
            select(Order.order_id)
            .where(Order.account_id == update.account_id)
            .where(Order.broker_order_id == update.order_id)
            .with_for_update()
        ).first()
        if order_id is None:
            return False
        payloads = session.scalars(
            select(OrderEvent.payload)
            .where(OrderEvent.order_id == order_id)
            .where(OrderEvent.source == EVENT_SOURCE)
            .where(OrderEvent.status == update.status)
        ).all()
        if any(payload.get("update_key") == key for payload in payloads):
            return False
        session.add(
            OrderEvent(
                order_id=order_id,
                status=update.status,
                source=EVENT_SOURCE,
                at=dt.datetime.fromtimestamp(update.received_at, dt.UTC),
                payload={"update_key": key, "data": update.data},
            )
        )
    return True


def _reject(client: redis.Redis, detail: str) -> dict[str, Any]:
    Metrics(client).incr("order_updates_rejected", reason="invalid")
    log.warning("rejected order update: %s", detail[:200])
    return {"rejected": "invalid"}


@app.task(
    name=ORDER_UPDATE,
    bind=True,
    acks_late=True,
    # Both records are idempotent: running an update again is safe.
    reject_on_worker_lost=True,
)
def update(self: BaseTask, *args: Any, **payload: Any) -> dict[str, Any]:
    """Record one raw Kite order update (see :class:`schemas.ticks.OrderUpdate`).

    Returns:
        ``{"stream": added, "event": added}``, or ``{"rejected": reason}`` for a bad payload
        (counted in ``order_updates_rejected``, logged on one line, never retried).
    """
    runtime = self.runtime
    try:
        if args:
            raise ValueError(f"{len(args)} positional arguments")
        parsed = OrderUpdate.model_validate(payload)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "payload"
        return _reject(runtime.redis, f"{where}: {first.get('msg', 'invalid')}")
    except ValueError as exc:
        return _reject(runtime.redis, str(exc))
    try:
        event = record_event(runtime.sessions, parsed)
    except OperationalError as exc:
        raise retry(self, ServiceUnavailable(f"database: {exc.orig}")) from exc
    try:
        stream = record_in_stream(
            runtime.redis, parsed, maxlen=runtime.settings.order_updates_maxlen
        )
    except redis.RedisError as exc:
        raise retry(self, ServiceUnavailable(f"redis: {exc}")) from exc
    return {"stream": stream, "event": event}
