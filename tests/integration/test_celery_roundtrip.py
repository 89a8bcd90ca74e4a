"""A task round trip through a real worker process and a real broker (Redis and RabbitMQ)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from kombu import Connection

from tests.support.services import IN_CI, rabbitmq_url
from tests.support.workers import celery_worker, producer_app
from ticker_tasks.queues import QUEUES


def _rabbitmq_available(url: str) -> bool:
    try:
        with Connection(url, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
        return True
    except OSError:
        return False


@pytest.fixture
def worker_env(postgres_url, redis_service):
    return {
        "TICKER_REDIS_URL": redis_service.url,
        "TICKER_DATABASE_URL": postgres_url,
    }


def _round_trip(app, log: Path) -> None:
    echo = uuid.uuid4().hex
    result = app.send_task("ticker_tasks.maintenance.ping", kwargs={"echo": echo})
    try:
        value = result.get(timeout=90)
    except Exception:
        print(log.read_text() if log.exists() else "(no worker log)")
        raise
    assert value["echo"] == echo
    assert value["database"] is True
    assert value["redis"] is True
    # The task ran in the worker's pool child, not in this process.
    assert value["worker_pid"] != os.getpid()


def test_round_trip_through_redis_broker(worker_env, tmp_path):
    # Given a real prefork worker consuming the maintenance queue from Redis
    log = tmp_path / "worker.log"
    with celery_worker(["maintenance"], env=worker_env, log_path=log):
        # When a producer sends the public ping task by name
        # I expect the worker's answer, having used the database and Redis
        _round_trip(producer_app(), log)


def test_round_trip_through_rabbitmq_broker(worker_env, tmp_path):
    url = rabbitmq_url()
    if not _rabbitmq_available(url):
        if IN_CI:
            pytest.fail(f"RabbitMQ is not reachable at {url}")
        pytest.skip(f"RabbitMQ is not reachable at {url}")
    app = producer_app(url)
    with app.connection_for_write() as connection:
        for queue in app.conf.task_queues:
            bound = queue(connection.default_channel)
            bound.declare()
            bound.purge()
    log = tmp_path / "worker.log"
    env = {**worker_env, "TICKER_BROKER_URL": url}
    with celery_worker(["maintenance"], env=env, log_path=log):
        _round_trip(app, log)


def test_public_task_names_route_to_declared_queues():
    app = producer_app()
    declared = {queue.name for queue in app.conf.task_queues}
    assert declared == set(QUEUES)
    router = app.amqp.router
    assert router.route({}, "ticker_tasks.maintenance.ping")["queue"].name == "maintenance"
    assert router.route({}, "ticker_tasks.orders.place")["queue"].name == "orders"
    assert router.route({}, "ticker_tasks.ticks.process_batch")["queue"].name == "ticks"
    assert router.route({}, "ticker_tasks.backfill.run")["queue"].name == "backfill"
