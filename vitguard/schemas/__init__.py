"""Event contracts (pydantic v2) and their JSON Schema export."""

from __future__ import annotations

from vitguard.schemas.events import (
    SCHEMA_VERSION,
    BankMatch,
    BankMatchAlert,
    DeadLetter,
    ImageEvent,
    Match,
    NearDuplicateAlert,
    Timings,
    Verdict,
    decode_key,
    parse_image_event,
    utc_now,
    validate_image_event,
)
from vitguard.schemas.export import EVENT_MODELS, export_json_schemas
from vitguard.schemas.retro import RetroMatch, RetroTrigger

__all__ = [
    "EVENT_MODELS",
    "SCHEMA_VERSION",
    "BankMatch",
    "BankMatchAlert",
    "DeadLetter",
    "ImageEvent",
    "Match",
    "NearDuplicateAlert",
    "RetroMatch",
    "RetroTrigger",
    "Timings",
    "Verdict",
    "decode_key",
    "export_json_schemas",
    "parse_image_event",
    "utc_now",
    "validate_image_event",
]
