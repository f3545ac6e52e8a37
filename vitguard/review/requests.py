"""Which outputs of a batch need a person, as review requests. Pure: no I/O, no clock beyond the schemas'.

An item goes to review when its verdict's unsafe score lies in the uncertainty band of the policy that
decided it (the built-in policy's: ``ReviewSettings.uncertain_low <= score < uncertain_high``), when that
policy's action is ``review``, when it matched a hash bank, or when it raised a near-duplicate or wave alert.
One request per item and batch, with every reason it has: a reviewer sees the item once, with the whole
context.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from vitguard.schemas.events import ImageEvent, NearDuplicateAlert, Verdict
from vitguard.schemas.review import ReviewBankMatch, ReviewReason, ReviewRequest
from vitguard.settings import ReviewSettings

__all__ = ["appeal_request", "build_review_requests", "is_uncertain", "reviewable_ref"]


def is_uncertain(score: float, settings: ReviewSettings) -> bool:
    """Whether ``score`` lies in the uncertainty band ``[uncertain_low, uncertain_high)``."""
    return settings.uncertain_low <= score < settings.uncertain_high


def reviewable_ref(ref: str | None) -> str | None:
    """The reference a review request may carry: URLs yes, inline ``data:`` images no (they are the bytes)."""
    if ref is None or ref.startswith("data:"):
        return None
    return ref


def _bank_matches(verdict: Verdict) -> list[ReviewBankMatch]:
    """The verdict's positive hash-bank matches (a negative-bank match is known safe: nothing to review)."""
    return [ReviewBankMatch(bank=m.bank, entry_id=m.entry_id, distance=m.distance, action=m.action,
                            negative=m.negative) for m in verdict.bank_matches if not m.negative]


def _reasons(verdict: Verdict, uncertain: bool, banks: Sequence[ReviewBankMatch],
             alert: NearDuplicateAlert | None) -> list[ReviewReason]:
    reasons: list[ReviewReason] = []
    if verdict.action == "review":
        reasons.append("policy")
    if uncertain:
        reasons.append("uncertain")
    if banks:
        reasons.append("bank_match")
    if alert is not None:
        reasons.append("wave" if alert.severity == "critical" else "near_duplicate")
    return reasons


def build_review_requests(
    answered: Iterable[tuple[ImageEvent | None, Verdict]],
    alerts: Sequence[NearDuplicateAlert],
    uncertain: Callable[[Verdict], bool],
) -> list[ReviewRequest]:
    """One review request per item of the batch that needs one, in the order items were answered.

    Args:
        answered: each verdict of the batch with the event it answers (for the image reference).
        alerts: the batch's near-duplicate and wave alerts.
        uncertain: whether a verdict's score lies in the uncertainty band of the policy that decided it.
    """
    alert_of = {a.content_id: a for a in alerts}
    out: list[ReviewRequest] = []
    for event, verdict in answered:
        if verdict.replay_id is not None:  # a replay's verdicts are a what-if, not a queue of work
            continue
        banks = _bank_matches(verdict)
        alert = alert_of.get(verdict.content_id)
        reasons = _reasons(verdict, uncertain(verdict), banks, alert)
        if not reasons:
            continue
        out.append(
            ReviewRequest(
                content_id=verdict.content_id,
                tenant=verdict.tenant,
                event_id=verdict.event_id,
                reasons=reasons,
                image_ref=reviewable_ref(event.image_ref if event is not None else None),
                label=verdict.label,
                unsafe_score=verdict.unsafe_score,
                top_class=verdict.top_class,
                scores=dict(verdict.scores),
                model_name=verdict.model_name,
                model_version=verdict.model_version,
                collection=verdict.collection,
                cluster_id=alert.cluster_id if alert is not None else verdict.cluster_id,
                matches=list(alert.matches) if alert is not None else [],
                wave_count=alert.wave_count if alert is not None else None,
                wave_window_s=alert.wave_window_s if alert is not None else None,
                severity=alert.severity if alert is not None else None,
                bank_matches=banks,
                pdq_hash=verdict.pdq_hash,
                metadata=dict(verdict.metadata),
                created_at=verdict.created_at,
            )
        )
    return out


def appeal_request(
    content_id: str,
    *,
    tenant: str,
    note: str | None,
    image_ref: str | None,
    previous: ReviewRequest | None,
) -> ReviewRequest:
    """A tenant's appeal: the item's last review request (if any) carried forward, with ``appeal`` added.

    The review-requests topic is compacted by content id, so the appeal must carry the whole context the
    older request had, or compaction would lose it.
    """
    if previous is None:
        return ReviewRequest(content_id=content_id, tenant=tenant, reasons=["appeal"], appeal_note=note,
                             image_ref=reviewable_ref(image_ref))
    reasons: list[ReviewReason] = [*previous.reasons, "appeal"] if "appeal" not in previous.reasons else list(
        previous.reasons)
    base = previous.model_dump(exclude={"request_id", "requested_at", "reasons", "appeal_note", "schema_version"})
    base.update(reasons=reasons, appeal_note=note, tenant=tenant)
    if image_ref is not None:
        base["image_ref"] = reviewable_ref(image_ref)
    return ReviewRequest.model_validate(base)
