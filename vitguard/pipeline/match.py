"""The match stage: a group's PDQ hashes against the hash banks, in one call; and what a match changes.

Runs once per group, after inference and before index (:mod:`~vitguard.pipeline.completion`). Pure apart
from the matcher's flood-guard counters: no Kafka, no Faust.

What a match does (the rules, in one place):

- **force_unsafe** (positive bank, entry not quarantined): the verdict is ``unsafe`` whatever the score, and
  ``label_source`` is ``bank``; a critical :class:`~vitguard.schemas.events.BankMatchAlert`.
- **flag_only** (positive bank), or force_unsafe on a **quarantined** entry (the flood guard): the model's
  label stands; a warning alert says so (``action_taken`` flag_only or suspended).
- **negative bank**: the item is known safe; it is left out of near-duplicate clustering and waves
  (:func:`skips_clustering`), no bank alert. A positive match still wins over a negative one.

Every verdict carries its ``bank_matches``, its PDQ hash and quality.
"""

from __future__ import annotations

from collections.abc import Sequence

from vitguard.banks.matcher import BankMatcher
from vitguard.banks.signal import PdqHash
from vitguard.schemas.events import BankMatch, BankMatchAlert, Verdict

__all__ = ["apply_matches", "bank_alert", "match_group", "skips_clustering"]


def match_group(matcher: BankMatcher | None, hashes: Sequence[PdqHash | None]) -> list[list[BankMatch]]:
    """Each item's bank matches (``[]`` without a matcher, a hash, or enough quality); one matcher call."""
    if matcher is None:
        return [[] for _ in hashes]
    return matcher.match_batch([h.hex if h else None for h in hashes], [h.quality if h else None for h in hashes])


def _forcing(matches: Sequence[BankMatch]) -> bool:
    return any(m.action == "force_unsafe" and not m.negative and not m.quarantined for m in matches)


def skips_clustering(matches: Sequence[BankMatch]) -> bool:
    """A negative-bank match (and no positive one): not clustered as a near-duplicate, not counted in waves."""
    return any(m.negative for m in matches) and not any(not m.negative for m in matches)


def apply_matches(verdict: Verdict, pdq: PdqHash | None, matches: Sequence[BankMatch]) -> Verdict:
    """``verdict`` with its PDQ hash, bank matches and, for a force_unsafe match, the unsafe label."""
    update: dict[str, object] = {"bank_matches": list(matches)}
    if pdq is not None:
        update |= {"pdq_hash": pdq.hex, "pdq_quality": pdq.quality}
    if _forcing(matches):
        update |= {"label": "unsafe", "label_source": "bank"}
    return verdict.model_copy(update=update)


def bank_alert(verdict: Verdict, pdq: PdqHash | None, matches: Sequence[BankMatch]) -> BankMatchAlert | None:
    """The alert for a verdict's positive-bank matches, or None when it has none."""
    positive = [m for m in matches if not m.negative]
    if not positive or pdq is None:
        return None
    forcing = [m for m in positive if m.action == "force_unsafe"]
    if _forcing(positive):
        action, severity = "force_unsafe", "critical"
    elif forcing:
        action, severity = "suspended", "warning"
    else:
        action, severity = "flag_only", "warning"
    return BankMatchAlert(
        content_id=verdict.content_id, event_id=verdict.event_id, tenant=verdict.tenant, matches=positive,
        action_taken=action, quarantined=any(m.quarantined for m in positive), severity=severity,
        label=verdict.label, pdq_hash=pdq.hex, pdq_quality=pdq.quality,
    )
