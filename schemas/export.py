"""Export the JSON Schema of every public payload to ``schemas/json/`` (``python -m``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from schemas.registry import PUBLIC_TASKS

JSON_DIR = Path(__file__).resolve().parent / "json"


def rendered() -> dict[str, str]:
    """File name -> JSON Schema text of every public task payload."""
    files: dict[str, str] = {}
    for contract in PUBLIC_TASKS:
        schema = contract.payload.model_json_schema()
        schema["$id"] = f"{contract.name}.json"
        schema["x-task-name"] = contract.name
        schema["x-queue"] = contract.queue
        files[f"{contract.name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files


def main() -> int:
    """Write the files; ``--check`` only reports whether they are current."""
    check = "--check" in sys.argv[1:]
    stale = []
    for name, text in rendered().items():
        path = JSON_DIR / name
        if not path.exists() or path.read_text() != text:
            stale.append(name)
            if not check:
                path.write_text(text)
    if check and stale:
        print("stale JSON Schema files: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
