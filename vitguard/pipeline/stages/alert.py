"""The alert stage: count unsafe items on their clusters (waves) and build the near-duplicate alerts.

Each unsafe item that joined an existing cluster is a near-duplicate; the wave counter (Redis, through
:class:`~vitguard.pipeline.runtime.failure.RedisPolicy`) says whether the cluster is in a wave and whether the
cooldown lets this one alert. Without Redis every near-duplicate alerts as a lone one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vitguard.pipeline.core import build_alert
from vitguard.pipeline.runtime.failure import RedisPolicy
from vitguard.policies.compiled import PolicyBook
from vitguard.schemas.events import ImageEvent, NearDuplicateAlert
from vitguard.settings import PolicySettings
from vitguard.stores.interfaces import SearchHit, WaveCounter, WaveState

__all__ = ["NO_WAVE", "Candidate", "alert_batch"]

NO_WAVE = WaveState(count=1, is_wave=False, alert=True)


@dataclass(frozen=True)
class Candidate:
    """An unsafe item with a cluster: ``is_new`` when it started the cluster (counted, not alerted)."""

    event: ImageEvent
    cluster_id: str
    matches: Sequence[SearchHit]
    is_new: bool
    policy: str | None = None
    """The policy that judged it (which alerts it raises is the policy's say)."""


async def alert_batch(
    candidates: Sequence[Candidate],
    *,
    waves: WaveCounter,
    redis: RedisPolicy,
    policy: PolicySettings,
    model_name: str,
    now_s: float,
    book: PolicyBook | None = None,
) -> list[tuple[NearDuplicateAlert | None, bool]]:
    """For each candidate (same order): its alert or None, and whether the wave cooldown suppressed it. Every
    candidate is counted in one round trip (it was one per candidate), alerting or not: its policy (``book``)
    decides whether a near-duplicate raises an alert; a wave's alert goes out whatever the item's policy (the
    wave counter has given it the cluster's turn, and a wave is the fleet's concern)."""
    if not candidates:
        return []
    items = [(c.cluster_id, c.event.content_id, now_s) for c in candidates]
    states = await redis.call("wave_record", lambda: waves.record_many(items), [NO_WAVE] * len(candidates))
    out: list[tuple[NearDuplicateAlert | None, bool]] = []
    for c, state in zip(candidates, states, strict=True):
        if c.is_new or (not state.is_wave and not _alerts(book, c)):
            out.append((None, False))
        elif state.is_wave and not state.alert:
            out.append((None, True))
        else:
            out.append((build_alert(c.event, cluster_id=c.cluster_id, matches=c.matches, state=state, policy=policy,
                                    model_name=model_name), False))
    return out


def _alerts(book: PolicyBook | None, c: Candidate) -> bool:
    policy = book.named(c.policy) if book is not None else None
    return policy is None or policy.alerts_on(max((m.similarity for m in c.matches), default=0.0))
