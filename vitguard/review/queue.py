"""The review queue as the console sees it: requests minus decisions, per item. Pure state, no I/O.

The two topics are read independently, so a decision may arrive before the request it answers. An item
is pending while its latest request is newer than its latest decision. Requests for one item that arrive
while it is pending are merged: the newest one's context, every reason seen.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from vitguard.schemas.review import ReviewDecision, ReviewReason, ReviewRequest

__all__ = ["PRIORITY", "QueueItem", "ReviewQueue", "item_key"]

PRIORITY: dict[ReviewReason, int] = {"wave": 0, "appeal": 1, "bank_match": 2, "near_duplicate": 3, "uncertain": 4}
"""Lower first: a wave spreads, an appeal has a tenant waiting, a bank match is probably known content."""


def item_key(content_id: str) -> str:
    """A URL-safe handle of an item (hex), so content ids never have to be put in a URL path."""
    return hashlib.sha256(content_id.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class QueueItem:
    key: str
    request: ReviewRequest
    decision: ReviewDecision | None

    @property
    def pending(self) -> bool:
        return self.decision is None or self.decision.decided_at < self.request.requested_at

    @property
    def priority(self) -> int:
        return min(PRIORITY[r] for r in self.request.reasons)


class ReviewQueue:
    """Latest request and latest decision per content id."""

    def __init__(self) -> None:
        self._requests: dict[str, ReviewRequest] = {}
        self._decisions: dict[str, ReviewDecision] = {}
        self._by_key: dict[str, str] = {}

    def add_request(self, request: ReviewRequest) -> None:
        cid = request.content_id
        prev = self._requests.get(cid)
        if prev is not None and prev.requested_at > request.requested_at:
            prev, request = request, prev  # an older request read late: the newer keeps its context
        if prev is not None and self._still_pending(prev):
            reasons = list(dict.fromkeys([*prev.reasons, *request.reasons]))
            request = request.model_copy(update={
                "reasons": reasons, "appeal_note": request.appeal_note or prev.appeal_note,
                "image_ref": request.image_ref or prev.image_ref,
            })
        self._requests[cid] = request
        self._by_key[item_key(cid)] = cid

    def add_decision(self, decision: ReviewDecision) -> None:
        prev = self._decisions.get(decision.content_id)
        if prev is None or prev.decided_at <= decision.decided_at:
            self._decisions[decision.content_id] = decision

    def _still_pending(self, request: ReviewRequest) -> bool:
        d = self._decisions.get(request.content_id)
        return d is None or d.decided_at < request.requested_at

    def get(self, key: str) -> QueueItem | None:
        """The item with this :func:`item_key`, pending or not."""
        cid = self._by_key.get(key)
        if cid is None:
            return None
        return QueueItem(key, self._requests[cid], self._decisions.get(cid))

    def pending(self, limit: int | None = None) -> list[QueueItem]:
        """Pending items, most urgent first, then oldest first."""
        items = [QueueItem(item_key(cid), r, self._decisions.get(cid)) for cid, r in self._requests.items()]
        waiting = sorted((i for i in items if i.pending), key=lambda i: (i.priority, i.request.requested_at))
        return waiting if limit is None else waiting[:limit]

    def depth(self) -> int:
        return sum(1 for r in self._requests.values() if self._still_pending(r))

    def decided(self, limit: int = 20) -> list[QueueItem]:
        """The most recent decisions that answer a known request, newest first."""
        done = [QueueItem(item_key(cid), self._requests[cid], d) for cid, d in self._decisions.items()
                if cid in self._requests and not QueueItem("", self._requests[cid], d).pending]
        return sorted(done, key=lambda i: i.decision.decided_at if i.decision else i.request.requested_at,
                      reverse=True)[:limit]
