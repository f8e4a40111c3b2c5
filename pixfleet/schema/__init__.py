"""Published JSON Schemas of the wire envelopes.

``python -m pixfleet.schema`` regenerates the checked-in files from the models; the test suite
fails when they drift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pixfleet import signing
from pixfleet.envelope import SCHEMA_VERSION, Result, Task

SCHEMA_DIR = Path(__file__).parent


def schema_files() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema document, as generated from the models."""
    out: dict[str, dict[str, Any]] = {}
    for model in (Task, Result):
        name = f"{model.__name__.lower()}.v{SCHEMA_VERSION}.json"
        doc: dict[str, Any] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://pixfleet.dev/schema/{name}",
            **model.model_json_schema(mode="validation"),
        }
        doc["properties"][signing.SIG_FIELD] = {
            "description": "Optional HMAC-SHA256 (hex) of the canonical JSON of the message "
            "without sig; required by receivers that have a signing key (docs/security.md)",
            "pattern": signing.SIG_PATTERN,
            "title": "Sig",
            "type": "string",
        }
        out[name] = doc
    return out


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def write_all(directory: Path = SCHEMA_DIR) -> list[Path]:
    written = []
    for name, doc in schema_files().items():
        path = directory / name
        path.write_text(render(doc), encoding="utf-8")
        written.append(path)
    return written
