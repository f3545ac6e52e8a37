"""The alert stage: count unsafe items on their clusters (waves) and build the near-duplicate alerts.

Each unsafe item that joined an existing cluster is a near-duplicate; the wave counter (Redis, through
:class:`~vitguard.pipeline.runtime.failure.RedisPolicy`) says whether the cluster is in a wave and whether the
cooldown lets this one alert. Without Redis every near-duplicate alerts as a lone one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from vitguard.pipeline.core import build_alert
from vitguard.pipeline.runtime.failure import RedisPolicy
from vitguard.policies.compiled import CompiledPolicy, PolicyBook
from vitguard.schemas.events import ImageEvent, NearDuplicateAlert
from vitguard.settings import PolicySettings
from vitguard.stores.interfaces import (
    ClusterRows,
    ClusterSighting,
    SearchHit,
    WaveCounter,
    WaveRecord,
    WaveRule,
    WaveState,
)
from vitguard.stores.wave import fleet_wave_rule

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
    rows: ClusterRows | None = None,
) -> list[tuple[NearDuplicateAlert | None, bool]]:
    """For each candidate (same order): its alert or None, and whether the wave cooldown suppressed it. Every
    candidate is counted in one round trip (it was one per candidate), alerting or not. Its policy (``book``)
    decides whether a near-duplicate raises an alert, and when the cluster is a wave for it (its wave rule, on
    the fleet's counts, with its own cooldown) and whether that alerts; a policy without a wave rule uses the
    fleet's (``policy``) and shares its cooldown."""
    if not candidates:
        return []
    fleet = fleet_wave_rule(policy)
    policies = [book.named(c.policy) if book is not None else None for c in candidates]
    records = [_record(c, p, now_s, fleet) for c, p in zip(candidates, policies, strict=True)]
    keep_s = book.longest_wave_window_s if book is not None else 0
    counting = redis.call("wave_record", lambda: waves.record_many(records, keep_s=keep_s),
                          [NO_WAVE] * len(candidates))
    if rows is None:
        states = await counting
    else:
        sightings = [_sighting(c, now_s) for c in candidates]
        keeping = redis.call("cluster_rows", lambda: rows.record_many(sightings), None)
        states, _ = await asyncio.gather(counting, keeping)
    out: list[tuple[NearDuplicateAlert | None, bool]] = []
    for c, p, r, state in zip(candidates, policies, records, states, strict=True):
        if not _alerts(c, p, state):
            out.append((None, state.is_wave and not state.alert and not c.is_new))
        else:
            out.append((build_alert(c.event, cluster_id=c.cluster_id, matches=c.matches, state=state, policy=policy,
                                    model_name=model_name, wave=r.rule or fleet, policy_name=c.policy), False))
    return out


def _alerts(c: Candidate, policy: CompiledPolicy | None, state: WaveState) -> bool:
    """Whether a candidate raises its alert: not the cluster's first item; in a wave, when its policy raises
    wave alerts and the cooldown lets it; else, when its policy raises this near-duplicate's alert."""
    if c.is_new:
        return False
    if state.is_wave:
        return state.alert and (policy is None or policy.wave_alerts)
    return policy is None or policy.alerts_on(max((m.similarity for m in c.matches), default=0.0))


def _sighting(c: Candidate, now_s: float) -> ClusterSighting:
    """A candidate for its cluster's row: uploaded at its ``created_at`` (the caller's word: never later than it
    was answered, so a forged future time cannot hold a cluster's "last upload"), answered now."""
    seen_ms = int(now_s * 1000)
    uploaded = c.event.created_at
    uploaded_ms = min(seen_ms, int(uploaded.timestamp() * 1000)) if uploaded is not None else seen_ms
    return ClusterSighting(c.cluster_id, c.event.content_id, c.event.tenant, uploaded_ms, seen_ms)


def _record(c: Candidate, policy: CompiledPolicy | None, now_s: float, fleet: WaveRule) -> WaveRecord:
    """A candidate's wave record: judged by its policy's wave rule, its cooldown that policy's own, where the
    policy has one; by the fleet's otherwise."""
    if policy is None or policy.waves is None:
        return WaveRecord(c.cluster_id, c.event.content_id, now_s)
    return WaveRecord(c.cluster_id, c.event.content_id, now_s, policy.wave_rule(fleet), policy.name)
