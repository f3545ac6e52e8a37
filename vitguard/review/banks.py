"""Reviewed items into hash banks (:mod:`vitguard.banks`): overturned ones into a negative bank, confirmed
ones (when the reviewer asks) into a positive one.

The banks hold PDQ hashes, so only items whose verdict carried one (``pdq_hash``, copied into the review
request and from there into the decision) can be banked; the others are recorded as ``bank_no_hash``.
Banks are created on first use: the negative bank as ``kind=negative``, the confirmed bank as a
``flag_only`` positive bank (an operator can switch it to ``force_unsafe`` with ``vitguard banks create
--update``).
"""

from __future__ import annotations

from vitguard.banks import Bank, BankEntry, BankExistsError, BankStore
from vitguard.schemas.review import ReviewDecision

__all__ = ["StoreReviewBanks"]


class StoreReviewBanks:
    """The :class:`~vitguard.review.apply.ReviewBanks` seam over a :class:`~vitguard.banks.BankStore`.

    Args:
        store: where banks live (the compacted banks topic in production).
        negative_bank: bank of overturned items.
        confirmed_bank: bank of confirmed items added on request.
    """

    def __init__(self, store: BankStore, *, negative_bank: str, confirmed_bank: str) -> None:
        self.store = store
        self.negative_bank = negative_bank
        self.confirmed_bank = confirmed_bank
        self._known: set[str] = set()

    def add_negative(self, decision: ReviewDecision) -> str:
        return self._add(decision, Bank(name=self.negative_bank, kind="negative",
                                        description="Items reviewers overturned as safe (vitguard review)."),
                         "negative_bank")

    def add_positive(self, decision: ReviewDecision) -> str:
        return self._add(decision, Bank(name=self.confirmed_bank, kind="positive", action="flag_only",
                                        description="Items reviewers confirmed unsafe (vitguard review)."),
                         "bank_added")

    def _add(self, decision: ReviewDecision, bank: Bank, effect: str) -> str:
        if decision.pdq_hash is None:
            return "bank_no_hash"
        if bank.name not in self._known:
            try:
                self.store.create_bank(bank)
            except BankExistsError:
                pass
            self._known.add(bank.name)
        self.store.add_entries([BankEntry(
            bank=bank.name, entry_id=decision.content_id, signal=decision.pdq_hash,
            tags=("review", decision.reason),
            note=f"{decision.decision} by {decision.reviewer}, decision {decision.decision_id}"[:1000],
        )])
        return effect
