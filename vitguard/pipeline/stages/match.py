"""The match stage: a group's PDQ hashes against the hash banks, in one call; and what a match changes.

Runs once per group, after inference and before index (:mod:`~vitguard.pipeline.runtime.completion`). Pure apart
from the matcher's flood-guard counters, which only stream events move (a /classify request reads them): no
Kafka, no Faust.

What a match does (the rules, in one place):

- **force_unsafe** (positive bank, entry not quarantined): the verdict is ``unsafe`` whatever the score, and
  ``label_source`` is ``bank``; a critical :class:`~vitguard.schemas.events.BankMatchAlert`.
- **flag_only** (positive bank), or force_unsafe on a **quarantined** entry (the flood guard): the model's
  label stands; a warning alert says so (``action_taken`` flag_only or suspended).
- **negative bank**: the item is known safe: its label is ``safe`` (``label_source`` ``bank``), it is left out
  of near-duplicate clustering and waves (:func:`skips_clustering`), no bank alert. An active force_unsafe
  match still wins over a negative one (see :func:`apply_matches`).

Every verdict carries its ``bank_matches``, its PDQ hash and quality. An animation or a video is matched frame
by frame (each sampled frame's PDQ hash, computed in the expand stage); its matches say which frame.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

from vitguard.banks.matcher import BankMatcher
from vitguard.banks.signal import PdqHash
from vitguard.schemas.events import BankMatch, BankMatchAlert, Verdict

__all__ = [
    "ItemHashes",
    "apply_matches",
    "bank_alert",
    "match_group",
    "match_items",
    "skips_clustering",
    "under_policy",
]


def match_group(matcher: BankMatcher | None, hashes: Sequence[PdqHash | None]) -> list[list[BankMatch]]:
    """Each item's bank matches (``[]`` without a matcher, a hash, or enough quality); one matcher call."""
    return [matches for _, matches in match_items(matcher, [[(None, h)] for h in hashes])]


ItemHashes = Sequence[tuple[int | None, PdqHash | None]]
"""One item's hashes: ``(None, hash)`` for a still image, ``(frame index, hash)`` per sampled frame."""


def match_items(matcher: BankMatcher | None, items: Sequence[ItemHashes],
                read_only: Sequence[bool] | None = None) -> list[tuple[PdqHash | None, list[BankMatch]]]:
    """Each item's PDQ hash and bank matches, every frame of every item in one matcher call.

    An animation's or a video's matches are its frames', one per bank entry (the closest frame's, with its
    ``frame``); its hash is the hash of the frame behind its closest match, else of its best-quality frame.
    ``read_only`` (per item): its matches do not count towards the flood guard (a /classify request).
    """
    found = iter(_match_frames(matcher, items, read_only))
    return [_item_matches(hashes, found) for hashes in items]


def _match_frames(matcher: BankMatcher | None, items: Sequence[ItemHashes],
                  read_only: Sequence[bool] | None) -> list[list[BankMatch]]:
    """The bank matches of every frame of every item, in order, from one matcher call (``[]`` each without a
    matcher). The matcher counts an item's frames once towards the flood guard: it gets each frame's item."""
    pdqs = [h for hashes in items for _, h in hashes]
    if matcher is None or not pdqs:
        return [[] for _ in pdqs]
    owners = [k for k, hashes in enumerate(items) for _ in hashes]
    counts = None if read_only is None else [not read_only[k] for k in owners]
    return matcher.match_batch([h.hex if h else None for h in pdqs], [h.quality if h else None for h in pdqs],
                               items=owners, counts=counts)


class _Closest(NamedTuple):
    """An item's closest match to one bank entry, and the hash of the frame behind it."""

    match: BankMatch
    pdq: PdqHash | None


def _rank(closest: _Closest) -> tuple[int, bool, str, str]:
    """Closest first; at one distance a positive bank's match before a negative one's, then by bank and entry."""
    m = closest.match
    return (m.distance, m.negative, m.bank, m.entry_id)


def _quality(pdq: PdqHash) -> int:
    return pdq.quality


def _item_matches(hashes: ItemHashes, found: Iterator[list[BankMatch]]) -> tuple[PdqHash | None, list[BankMatch]]:
    """One item's hash and matches, closest first, its frames' matches taken from ``found`` (one list a frame).

    Each bank entry is kept once, from the frame closest to it; the hash is that of the frame behind the
    closest match, else (no match) the best-quality frame's."""
    closest: dict[tuple[str, str], _Closest] = {}
    for (frame, pdq), matches in zip(hashes, found, strict=False):  # not strict: ``found`` goes on to the next item
        for m in matches:
            key = (m.bank, m.entry_id)
            held = closest.get(key)
            if held is None or m.distance < held.match.distance:
                closest[key] = _Closest(
                    m if frame is None else m.model_copy(update={"frame": frame}), pdq)
    if closest:
        ranked = sorted(closest.values(), key=_rank)
        return ranked[0].pdq, [c.match for c in ranked]
    return max([h for _, h in hashes if h is not None], key=_quality, default=None), []


def under_policy(matches: Sequence[BankMatch], banks: Mapping[str, str]) -> list[BankMatch]:
    """An item's matches as its policy has them (``banks``: per bank, force_unsafe, flag_only or ignore): an
    ignored bank's matches go; a positive bank's action is the policy's. The flood guard counted them all."""
    if not banks:
        return list(matches)
    out = []
    for m in matches:
        rule = banks.get(m.bank)
        if rule == "ignore":
            continue
        if rule is not None and not m.negative and rule != m.action:
            m = m.model_copy(update={"action": rule})
        out.append(m)
    return out


def _forcing(matches: Sequence[BankMatch]) -> bool:
    return any(m.action == "force_unsafe" and not m.negative and not m.quarantined for m in matches)


def skips_clustering(matches: Sequence[BankMatch]) -> bool:
    """A negative-bank match (and no positive one): not clustered as a near-duplicate, not counted in waves."""
    return any(m.negative for m in matches) and not any(not m.negative for m in matches)


def apply_matches(verdict: Verdict, pdq: PdqHash | None, matches: Sequence[BankMatch]) -> Verdict:
    """``verdict`` with its PDQ hash, bank matches and the banks' say on its label: an active force_unsafe
    match makes it unsafe (action block); otherwise a negative-bank match (an allow-list) makes it safe (action
    allow). Both from ``bank``.

    A force_unsafe match wins over a negative one: a known-bad entry is specific evidence of banned content,
    while allow-lists exist to stop the model's false positives; an image in both is a conflict, and a
    moderation service fails closed on it (the alert still names both)."""
    update: dict[str, object] = {"bank_matches": list(matches)}
    if pdq is not None:
        update |= {"pdq_hash": pdq.hex, "pdq_quality": pdq.quality}
    if _forcing(matches):
        update |= {"label": "unsafe", "label_source": "bank", "action": "block"}
    elif any(m.negative for m in matches):
        update |= {"label": "safe", "label_source": "bank", "action": "allow"}
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
