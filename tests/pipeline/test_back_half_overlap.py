"""The back half in two halves that overlap: the next group's Milvus calls (search, upsert) run while this
group publishes, and per event the order of side effects is unchanged: upsert, then publish, then Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.pipeline.test_runner import file_ref, make_processor, messages
from vitguard.pipeline import ListSink
from vitguard.stores import InMemoryDedupStore, InMemoryEmbeddingIndex

Log = list[tuple[str, str, float]]
"""(side effect, content id, time) in the order they happened."""


class LoggingIndex(InMemoryEmbeddingIndex):
    def __init__(self, log: Log) -> None:
        super().__init__()
        self.log = log

    def upsert(self, collection: str, records: Sequence[Any]) -> None:
        super().upsert(collection, records)
        self.log.extend(("upsert", r.content_id, time.monotonic()) for r in records)


class SlowSink(ListSink):
    """Every round of acknowledgements takes ``delay_s`` (a far broker, a slow fsync)."""

    def __init__(self, log: Log, delay_s: float) -> None:
        super().__init__()
        self.log, self.delay_s = log, delay_s

    async def send(self, messages: Sequence[Any]) -> list[BaseException | None]:
        ids = [json.loads(m.value).get("content_id", "") for m in messages if m.topic == self.topics.verdicts]
        self.log.extend(("publish-start", c, time.monotonic()) for c in ids)
        await asyncio.sleep(self.delay_s)
        results = await super().send(messages)
        self.log.extend(("publish-end", c, time.monotonic()) for c in ids)
        return results


class LoggingDedup(InMemoryDedupStore):
    def __init__(self, log: Log) -> None:
        super().__init__()
        self.log = log

    async def remember(self, event_ids: Sequence[str], verdicts: Any, model_key: str) -> None:
        await super().remember(event_ids, verdicts, model_key)
        self.log.extend(("remember", "c" + e.split("#")[0][1:], time.monotonic()) for e in event_ids)


async def test_the_next_group_is_indexed_while_this_one_publishes(
        opennsfw: Any, image_root: Path, sample_photos: list[Path]) -> None:
    log: Log = []
    processor, sink, _ = make_processor(opennsfw, image_root, index=LoggingIndex(log), dedup=LoggingDedup(log),
                                        sink=SlowSink(log, delay_s=0.5), batch={"max_size": 2})
    raws = messages([file_ref(image_root, p.name) for p in sample_photos[:4]])
    first = [await processor.submit(r) for r in raws[:2]]
    while not any(op == "publish-start" for op, _, _ in log):
        await asyncio.sleep(0.005)
    later = [await processor.submit(r) for r in raws[2:]]
    await asyncio.wait_for(asyncio.gather(*first, *later), 30)
    await processor.close()

    when = {(op, c): t for op, c, t in log}
    # the later group's upserts happened while the first group was being published
    first_published = [when[("publish-end", c)] for c in ("c0", "c1")]
    assert all(when[("upsert", c)] < min(first_published) for c in ("c2", "c3")), log
    # per event: upsert, then publish, then Redis
    for c in ("c0", "c1", "c2", "c3"):
        assert when[("upsert", c)] <= when[("publish-start", c)] < when[("publish-end", c)] <= when[("remember", c)]
    # and groups are published in order
    assert max(first_published) <= min(when[("publish-start", c)] for c in ("c2", "c3"))
    assert sorted(v.content_id for v in sink.verdicts) == ["c0", "c1", "c2", "c3"]
