"""Retro-hunt matches: an item vitguard judged safe earlier that is now close to something known unsafe.

A retro-hunt starts from a *trigger* (a reviewer confirmed an item unsafe, an unsafe cluster became a wave, or
an operator asked) and searches what was stored before for items labelled ``safe`` within the near-duplicate
threshold. Each such item is one :class:`RetroMatch` on the alerts topic (``alert_type`` ``retro_match``), so
the platform can re-review or take down what already went live.

``retro_match_id`` is derived from the trigger and the matched item, so a hunt that runs again (a restart
before its progress was committed, a wave alerting twice, an operator repeating a hunt) publishes the same id:
consumers deduplicate on it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vitguard.schemas.events import MAX_ID_LEN, Identifier, _Event, utc_now

__all__ = ["RetroMatch", "RetroTrigger", "TriggerKind", "retro_match_id"]

TriggerKind = Literal["review_confirmed", "wave", "on_demand", "bank_entry"]


class RetroTrigger(BaseModel):
    """What started a hunt."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: TriggerKind = Field(
        description=(
            "review_confirmed: a reviewer confirmed the item unsafe; wave: an unsafe cluster became a wave; "
            "on_demand: `vitguard retro-hunt --from-content-id` (or `--hash`: `pdq_hash` set, 1.7); bank_entry: a "
            "positive bank gained an entry, hunted by PDQ hash over the items' stored hashes (1.6)."
        )
    )
    trigger_id: str = Field(
        max_length=MAX_ID_LEN,
        description="The decision id (review_confirmed), the wave alert's id (wave), or the operator's hunt id.",
    )
    content_id: Identifier = Field(
        description=(
            "The item hunted from: its stored embedding is the query (bank_entry: `bank:<bank>:<entry id>`, the "
            "entry's hash is the query; on_demand by hash: `pdq:<hash>`)."
        )
    )
    cluster_id: str | None = Field(None, max_length=MAX_ID_LEN, description="The wave's cluster (wave only).")
    bank: str | None = Field(None, max_length=MAX_ID_LEN, exclude_if=lambda v: v is None,
                             description="The bank (bank_entry only, 1.6).")
    entry_id: str | None = Field(None, max_length=MAX_ID_LEN, exclude_if=lambda v: v is None,
                                 description="The new entry (bank_entry only, 1.6).")
    pdq_hash: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", exclude_if=lambda v: v is None,
                                 description="The hash hunted by: the entry's (bank_entry, 1.6) or the operator's "
                                             "(on_demand by hash, 1.7).")

    def dedup_key(self) -> str:
        """What one hunt is, for ``retro_match_id``: a wave is hunted per cluster (every alert of one wave
        finds the same items once), the others per item hunted from."""
        if self.kind == "wave" and self.cluster_id:
            return f"wave:{self.cluster_id}"
        if self.kind == "bank_entry":
            return f"bank_entry:{self.bank}|{self.entry_id}|{self.pdq_hash}"
        return f"{self.kind}:{self.content_id}"


def retro_match_id(trigger: RetroTrigger, matched_content_id: str) -> str:
    """The stable id of one match: SHA-256 of the hunt's key and the matched item, 32 hex digits."""
    text = f"{trigger.dedup_key()}|{matched_content_id}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class RetroMatch(_Event):
    """An item judged safe before is within the near-duplicate threshold of something now known unsafe."""

    alert_type: Literal["retro_match"] = Field("retro_match", description="Which alert this is.")
    retro_match_id: str = Field(
        pattern=r"^[0-9a-f]{32}$",
        description="Stable per trigger and matched item: a repeated hunt publishes the same id (deduplicate on it).",
    )
    trigger: RetroTrigger = Field(description="What started the hunt.")
    content_id: Identifier = Field(description="The matched item, judged safe earlier.")
    tenant: Identifier = Field(description="Its tenant.")
    similarity: float = Field(
        ge=-1, le=1,
        description=(
            "Cosine similarity to the item hunted from (a hash hunt: of the two hashes as +-1 vectors, "
            "1 - hash_distance / 128)."
        ),
    )
    threshold: float = Field(ge=-1, le=1, description="The similarity floor the hunt used.")
    hash_distance: int | None = Field(
        None, ge=0, le=256, exclude_if=lambda v: v is None,
        description="A hash hunt's Hamming distance between the entry's and the item's PDQ hashes (1.6).",
    )
    old_label: Literal["safe"] = Field(description="The matched item's stored label when it was found.")
    old_unsafe_score: float = Field(ge=0, le=1, description="The unsafe score it was judged with.")
    model_version: str = Field(description="The model that judged it.")
    collection: str = Field(description="The vector collection searched (one per model).")
    uploaded_at: datetime = Field(description="When the matched item was uploaded.")
    judged_at: datetime = Field(description="When vitguard judged it.")
    severity: Literal["warning"] = Field("warning", description="A person should look: the item may be live.")
    found_at: datetime = Field(default_factory=utc_now, description="When the hunt found it.")
