"""What a bank is: its settings, and the entries (hashes) it holds.

These are the values written to the banks topic (one record per bank and per entry, see
:mod:`vitguard.banks.state`), so they are strict pydantic models like the event contracts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vitguard.banks.signal import PDQ_DEFAULT_MATCH_DISTANCE, PdqSignal
from vitguard.schemas.events import Identifier, utc_now

__all__ = ["Bank", "BankAction", "BankEntry", "BankKind"]

BankKind = Literal["positive", "negative"]
"""positive: known bad content; negative: an allow-list (content confirmed safe, e.g. a past false match)."""
BankAction = Literal["force_unsafe", "flag_only"]
"""force_unsafe: a match makes the verdict unsafe; flag_only: the verdict and an alert carry the match."""


class Bank(BaseModel):
    """A named set of hashes and how a match against it is acted on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Identifier = Field(description="The bank's name, unique; e.g. ncmec, stopncii, our-false-positives.")
    kind: BankKind = Field("positive", description="positive (known bad) or negative (allow-list).")
    action: BankAction = Field(
        "flag_only", description="What a match does (positive banks): force_unsafe or flag_only."
    )
    match_distance: int = Field(
        PDQ_DEFAULT_MATCH_DISTANCE, ge=0, le=128,
        description="Largest Hamming distance (bits of 256) that counts as a match; HMA's default is 31.",
    )
    enabled: bool = Field(True, description="A disabled bank keeps its entries but matches nothing.")
    signal_type: Literal["pdq"] = Field("pdq", description="Kind of hash the bank holds.")
    description: str = Field("", max_length=1000, description="What the bank is, for people.")
    created_at: datetime = Field(default_factory=utc_now, description="When the bank was first created.")


class BankEntry(BaseModel):
    """One hash in a bank."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bank: Identifier = Field(description="The bank holding it.")
    entry_id: Identifier = Field(
        description="Id within the bank: the exchange's id when the list has one, else derived from the hash."
    )
    signal: str = Field(description="The canonical signal string (PDQ: 64 lower-case hex digits).")
    signal_type: Literal["pdq"] = Field("pdq", description="Kind of hash.")
    quality: int | None = Field(None, ge=0, le=100, description="PDQ quality when the list gave one.")
    tags: tuple[str, ...] = Field((), description="Tags from the list or given at import.")
    note: str = Field("", max_length=1000, description="Free text (e.g. the source file name).")
    added_at: datetime = Field(default_factory=utc_now, description="When it was added.")

    @field_validator("signal")
    @classmethod
    def _canonical(cls, v: str) -> str:
        return PdqSignal.validate_signal_str(v)

    @staticmethod
    def default_id(signal: str) -> str:
        """The entry id of a hash the list gave no id for: ``pdq-`` and the hash (re-imports are idempotent)."""
        return f"pdq-{signal}"
