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
from vitguard.schemas.review import ReviewAuditRecord, ReviewDecision, ReviewRequest, VerdictCorrection

__all__ = ["EVENT_MODELS", "export_json_schemas"]

EVENT_MODELS: dict[str, type[BaseModel]] = {
    "image-event": ImageEvent,
    "verdict": Verdict,
    "near-duplicate-alert": NearDuplicateAlert,
    "bank-match-alert": BankMatchAlert,
    "dead-letter": DeadLetter,
    "review-request": ReviewRequest,
    "review-decision": ReviewDecision,
    "verdict-correction": VerdictCorrection,
    "review-audit-record": ReviewAuditRecord,
}


def export_json_schemas(out_dir: Path) -> list[Path]:
    """Write one ``<name>.schema.json`` (JSON Schema 2020-12) per event into ``out_dir``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in EVENT_MODELS.items():
        schema = model.model_json_schema(mode="serialization")
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"urn:vitguard:{name}:{SCHEMA_VERSION}",
            **schema,
        }
        path = out_dir / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=False) + "\n")
        written.append(path)
    return written
