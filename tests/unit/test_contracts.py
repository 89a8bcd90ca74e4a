"""Public contracts stay in sync: README tables, settings, task registry, JSON Schema files."""

from __future__ import annotations

import json
import re
from pathlib import Path

from schemas import PUBLIC_TASKS
from schemas.export import JSON_DIR, rendered
from ticker_tasks.settings import settings_table

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _table(marker: str) -> list[list[str]]:
    block = re.search(rf"<!-- {marker}:begin -->\n(.*?)<!-- {marker}:end -->", README, re.S)
    assert block, f"README has no {marker} table"
    rows = [line for line in block.group(1).splitlines() if line.startswith("|")][2:]
    return [[cell.strip().strip("`") for cell in row.strip("|").split("|")] for row in rows]


def test_readme_configuration_table_matches_settings():
    documented = [tuple(row) for row in _table("settings")]
    assert documented == [tuple(row) for row in settings_table()]


def test_readme_task_table_matches_registry():
    documented = [row[:3] for row in _table("tasks")]
    registered = [[c.name, c.queue, c.payload.__name__] for c in PUBLIC_TASKS]
    assert documented == registered


def test_exported_json_schemas_are_current():
    for name, text in rendered().items():
        assert (JSON_DIR / name).read_text() == text, f"{name} is stale: run make schemas"


def test_public_tasks_are_registered_with_the_same_name_and_queue():
    from ticker_tasks.app import app

    app.loader.import_default_modules()
    router = app.amqp.router
    for contract in PUBLIC_TASKS:
        assert contract.name in app.tasks
        assert router.route({}, contract.name)["queue"].name == contract.queue
        schema = json.loads((JSON_DIR / f"{contract.name}.json").read_text())
        assert schema["x-queue"] == contract.queue


def _code_keys() -> set[str]:
    found: set[str] = set()
    for folder in ("ticker_tasks", "workers", "schemas"):
        for path in (ROOT / folder).rglob("*.py"):
            found |= set(re.findall(r'"(ticker_tasks:[a-z_:{}-]+)"', path.read_text()))
    return found


def test_every_redis_key_in_the_code_is_documented():
    documented = " ".join(row[0] for row in _table("redis-keys"))
    missing = [key for key in sorted(_code_keys()) if key not in documented]
    assert not missing, f"Redis keys missing from the README: {missing}"
