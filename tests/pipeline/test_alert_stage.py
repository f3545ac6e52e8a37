"""The alert stage's writes beside its alerts (vitguard.pipeline.stages.alert): what each candidate's cluster row
is told. The rows themselves are tested against a real Redis in tests/stores/test_cluster_rows.py."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from vitguard.health import HealthState
from vitguard.pipeline.runtime.failure import RedisPolicy
from vitguard.pipeline.stages.alert import Candidate, alert_batch
from vitguard.schemas.events import ImageEvent
from vitguard.settings import PolicySettings
from vitguard.stores import InMemoryWaveCounter
from vitguard.stores.interfaces import ClusterSighting, SearchHit


class Recorder:
    def __init__(self) -> None:
        self.sightings: list[ClusterSighting] = []

    async def record_many(self, sightings: Sequence[ClusterSighting]) -> None:
        self.sightings.extend(sightings)


async def test_every_candidate_is_a_sighting_uploaded_no_later_than_it_was_answered() -> None:
    """Issue 31: a forged future ``created_at`` cannot hold a cluster's "last upload"."""
    now_s = 1_800_000_000.0
    events = [ImageEvent(content_id="past", image_ref="https://example.com/a.jpg", tenant="t1",
                         created_at=datetime(2026, 1, 1, tzinfo=UTC)),
              ImageEvent(content_id="future", image_ref="https://example.com/b.jpg", tenant="t2",
                         created_at=datetime(2099, 1, 1, tzinfo=UTC))]
    candidates = [Candidate(e, "c-1", [SearchHit("x", 0.99, "c-1")], is_new=False) for e in events]
    rows = Recorder()
    policy = PolicySettings()
    await alert_batch(candidates, waves=InMemoryWaveCounter(policy), redis=RedisPolicy(HealthState()), policy=policy,
                      model_name="m", now_s=now_s, rows=rows)
    seen = int(now_s * 1000)
    assert [(s.content_id, s.tenant, s.uploaded_ms, s.seen_ms) for s in rows.sightings] == [
        ("past", "t1", int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000), seen),
        ("future", "t2", seen, seen)]
