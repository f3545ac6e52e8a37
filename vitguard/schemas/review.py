"""Review-loop contracts: what goes to human reviewers, what they decide, and what vitguard did about it.

Four events, each on its own topic (names in :class:`~vitguard.settings.TopicSettings`):

- :class:`ReviewRequest` (``review-requests``, keyed and compacted by content id): an item a person should
  look at, with everything a reviewer needs except the image bytes (the console fetches those server-side).
- :class:`ReviewDecision` (``review-decisions``, keyed and compacted by decision id, so every decision is
  kept): a reviewer's ``confirm_unsafe`` or ``overturn_safe``.
- :class:`VerdictCorrection` (``verdict-corrections``, keyed by content id): the corrected verdict that
  downstream services act on.
- :class:`ReviewAuditRecord` (``review-audit``, append-only): what the applier did with each decision it
  read, duplicates and superseded ones included; the applier also rebuilds its idempotency ledger from it.

They share the versioning rules of :mod:`vitguard.schemas.events` (``schema_version`` 1.x). Every time must
carry its timezone (as ``ImageEvent.created_at``): one naive ``requested_at``, compared with aware ones, made
the console answer 500 and then killed its queue feed.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from vitguard.schemas.events import (
    MAX_ID_LEN,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_LEN,
    Identifier,
    Match,
    _Event,
    utc_now,
)

__all__ = [
    "ReviewAuditRecord",
    "ReviewBankMatch",
    "ReviewDecision",
    "ReviewOutcome",
    "ReviewReason",
    "ReviewRequest",
    "DecisionKind",
    "VerdictCorrection",
]

ReviewReason = Literal["uncertain", "near_duplicate", "wave", "bank_match", "appeal", "policy"]
"""Why an item is in the review queue: a score inside the uncertainty band, a near-duplicate alert, a wave
(critical) alert, a hash-bank match, a tenant's appeal, or a policy whose action for it is ``review`` (1.6)."""

DecisionKind = Literal["confirm_unsafe", "overturn_safe"]
"""What a reviewer decided: the item is unsafe (the model was right, or should have been), or it is safe."""

ReviewOutcome = Literal["applied", "duplicate", "superseded"]
"""What the applier did with a decision: applied it, had already applied that decision id, or skipped it
because a later decision on the same item had already been applied."""

MAX_NOTE_LEN = 2000
_CODE = r"^[a-z][a-z0-9_]{0,63}$"


class ReviewBankMatch(BaseModel):
    """One hash-bank entry an item matched (filled where hash banks are deployed)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bank: str = Field(max_length=MAX_ID_LEN, description="The bank's name.")
    entry_id: str = Field(max_length=MAX_ID_LEN, description="The matched entry in that bank.")
    distance: int = Field(ge=0, description="Hamming distance between the PDQ hashes, in bits.")
    action: str = Field("", max_length=64, description="The bank's action on a match (force_unsafe, flag_only).")
    negative: bool = Field(False, description="True for a negative bank (known safe).")


class ReviewRequest(_Event):
    """An item for human review. Keyed by content id: a newer request for the same item replaces the older."""

    request_id: str = Field(default_factory=lambda: uuid.uuid4().hex, max_length=MAX_ID_LEN,
                            description="Unique per request.")
    content_id: Identifier = Field(description="The item to review; Kafka key of this message.")
    tenant: Identifier = Field("default", description="Tenant the item belongs to.")
    event_id: Identifier | None = Field(None, description="The input event whose verdict raised the request.")
    reasons: list[ReviewReason] = Field(min_length=1, description="Why it needs review (one or more).")
    image_ref: str | None = Field(
        None, max_length=4096,
        description=(
            "Where the image is (the input event's reference). Only the console's server fetches it, through "
            "the SSRF-guarded fetcher; it is never handed to a reviewer's browser. Inline data: references are "
            "not copied (None)."
        ),
    )
    label: Literal["safe", "unsafe"] | None = Field(None, description="The model's verdict, when there is one.")
    unsafe_score: float | None = Field(None, ge=0, le=1, description="The verdict's unsafe score.")
    top_class: str | None = Field(None, description="The verdict's most probable class.")
    scores: dict[str, float] = Field(default_factory=dict, description="Probability per model class.")
    model_name: str | None = Field(None, description="The model that decided.")
    model_version: str | None = Field(None, description="Its weights' revision.")
    collection: str | None = Field(None, description="Vector collection holding the item's embedding.")
    cluster_id: str | None = Field(None, description="Near-duplicate cluster of the item.")
    matches: list[Match] = Field(default_factory=list, description="Known unsafe items it is close to.")
    wave_count: int | None = Field(None, ge=1, description="Items on its cluster within the wave window.")
    wave_window_s: int | None = Field(None, ge=1, description="The window wave_count counts over.")
    severity: Literal["info", "warning", "critical"] | None = Field(None, description="The alert's severity.")
    bank_matches: list[ReviewBankMatch] = Field(default_factory=list, description="Hash-bank entries it matched.")
    pdq_hash: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="The image's PDQ hash, if hashed.")
    appeal_note: str | None = Field(None, max_length=MAX_NOTE_LEN, description="The tenant's words, for appeals.")
    metadata: dict[str, str] = Field(default_factory=dict, description="The input event's metadata.")
    created_at: AwareDatetime | None = Field(None, description="When the upload happened.")
    requested_at: AwareDatetime = Field(default_factory=utc_now, description="When review was requested.")

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > MAX_METADATA_KEYS:
            raise ValueError(f"at most {MAX_METADATA_KEYS} metadata keys")
        if any(len(value) > MAX_METADATA_VALUE_LEN for value in v.values()):
            raise ValueError(f"metadata values are at most {MAX_METADATA_VALUE_LEN} characters")
        return v


class ReviewDecision(_Event):
    """A reviewer's decision on one item. Keyed by decision id; applying it twice has the effect of once."""

    decision_id: str = Field(default_factory=lambda: uuid.uuid4().hex, pattern=r"^[A-Za-z0-9._:-]{1,128}$",
                             description="Unique per decision; the idempotency key of the applier.")
    content_id: Identifier = Field(description="The item decided on.")
    decision: DecisionKind = Field(description="confirm_unsafe or overturn_safe.")
    reviewer: Identifier = Field(description="Who decided (the name the reviewer logged in with).")
    reason: str = Field(pattern=_CODE, description="Why, as a short code (false_positive, explicit, ...).")
    note: str | None = Field(None, max_length=MAX_NOTE_LEN, description="Free text from the reviewer.")
    tenant: Identifier = Field("default", description="Tenant of the item.")
    request_id: str | None = Field(None, max_length=MAX_ID_LEN, description="The request this answers, if any.")
    collection: str | None = Field(
        None, description="Vector collection holding the item (from the request); None: the applier's default."
    )
    model_name: str | None = Field(None, description="The model whose verdict was reviewed.")
    model_version: str | None = Field(None, description="Its version (overturn rates are counted per version).")
    previous_label: Literal["safe", "unsafe"] | None = Field(None, description="The model's label, if known.")
    add_to_bank: bool = Field(False, description="confirm_unsafe only: also add the item to a hash bank.")
    pdq_hash: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="The image's PDQ hash (from the request): what a bank stores."
    )
    requested_at: AwareDatetime | None = Field(None, description="When review was requested (decision latency).")
    decided_at: AwareDatetime = Field(default_factory=utc_now, description="When the reviewer decided.")


class VerdictCorrection(_Event):
    """A verdict changed by a human: downstream services act on this instead of the model's verdict."""

    content_id: Identifier = Field(description="The item; also the Kafka key of this message.")
    tenant: Identifier = Field("default", description="Tenant of the item.")
    label: Literal["safe", "unsafe"] = Field(description="The label after review.")
    previous_label: Literal["safe", "unsafe"] | None = Field(None, description="The model's label, if known.")
    decision_id: str = Field(description="The decision that made the correction.")
    decision: DecisionKind = Field(description="confirm_unsafe or overturn_safe.")
    reviewer: str = Field(description="Who decided.")
    reason: str = Field(description="The decision's reason code.")
    model_name: str | None = Field(None, description="The model whose verdict was reviewed.")
    model_version: str | None = Field(None, description="Its version.")
    decided_at: AwareDatetime = Field(description="When the reviewer decided.")
    corrected_at: AwareDatetime = Field(default_factory=utc_now, description="When vitguard applied it.")
    source: Literal["human_review"] = Field("human_review", description="Where the correction comes from.")


class ReviewAuditRecord(_Event):
    """What the applier did with one decision it read: the audit trail, and the applier's ledger."""

    decision_id: str = Field(description="The decision.")
    content_id: Identifier = Field(description="The item.")
    outcome: ReviewOutcome = Field(description="applied, duplicate or superseded.")
    effects: list[str] = Field(
        default_factory=list,
        description=(
            "What changed, as short codes: milvus_relabelled, milvus_missing, negative_bank, bank_added, "
            "bank_skipped (no banks deployed), correction_published."
        ),
    )
    decision: ReviewDecision = Field(description="The decision itself, as read.")
    applied_at: AwareDatetime = Field(default_factory=utc_now, description="When the applier handled it.")
    applier: str = Field("vitguard", max_length=MAX_ID_LEN, description="The applier's client id.")
