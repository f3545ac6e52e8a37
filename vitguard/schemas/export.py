"""Export the event contracts as JSON Schema files for downstream teams."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from vitguard.schemas.events import (
    SCHEMA_VERSION,
    BankMatchAlert,
    DeadLetter,
    ImageEvent,
    NearDuplicateAlert,
    Verdict,
)
from vitguard.schemas.retro import RetroMatch
from vitguard.schemas.review import ReviewAuditRecord, ReviewDecision, ReviewRequest, VerdictCorrection

__all__ = ["EVENT_MODELS", "INPUTS", "export_json_schemas", "json_schema"]

EVENT_MODELS: dict[str, type[BaseModel]] = {
    "image-event": ImageEvent,
    "verdict": Verdict,
    "near-duplicate-alert": NearDuplicateAlert,
    "bank-match-alert": BankMatchAlert,
    "retro-match": RetroMatch,
    "dead-letter": DeadLetter,
    "review-request": ReviewRequest,
    "review-decision": ReviewDecision,
    "verdict-correction": VerdictCorrection,
    "review-audit-record": ReviewAuditRecord,
}


INPUTS = frozenset({"image-event"})
"""What producers write and vitguard reads: described as the worker validates them (optional fields optional);
the rest as vitguard writes them."""


def json_schema(name: str) -> dict[str, object]:
    """The JSON Schema 2020-12 document of one event contract."""
    model = EVENT_MODELS[name]
    schema = model.model_json_schema(mode="validation" if name in INPUTS else "serialization")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"urn:vitguard:{name}:{SCHEMA_VERSION}",
            **schema}


def export_json_schemas(out_dir: Path) -> list[Path]:
    """Write one ``<name>.schema.json`` (JSON Schema 2020-12) per event into ``out_dir``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in EVENT_MODELS:
        path = out_dir / f"{name}.schema.json"
        path.write_text(json.dumps(json_schema(name), indent=2, sort_keys=False) + "\n")
        written.append(path)
    return written
