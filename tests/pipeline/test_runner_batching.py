"""The runner's scheduling: adaptive batches, a slow image holds nobody, /classify shares batches fairly.

Real model (open_nsfw), real HTTP fetches from a loopback server, in-memory stores. Assertions are about
order and batch composition, never about how fast this machine is.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from vitguard.fetch import ImageFetcher
from vitguard.pipeline import Answered, DeadLettered, ListSink, RawMessage, Runner
from vitguard.schemas.events import ImageEvent
from vitguard.settings import load_settings
from vitguard.stores import InMemoryDedupStore, InMemoryEmbeddingIndex, InMemoryWaveCounter


class GatedClassifier:
    """The real classifier; records each forward pass's size; ``gate`` (when set) holds the next pass."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.info = inner, inner.info
        self.passes: list[int] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def prepare(self, data: bytes) -> Any:
        return self.inner.prepare(data)

    def predict(self, batch: Any) -> Any:
        self.passes.append(len(batch))
        self.entered.set()
        gate, self.gate = self.gate, None
        if gate is not None:
            gate.wait(30)
        return self.inner.predict(batch)


@pytest.fixture
async def photo_server(sample_photos: list[Path]) -> AsyncIterator[str]:
    release = asyncio.Event()

    async def photo(request: web.Request) -> web.Response:
        return web.Response(body=sample_photos[int(request.match_info["i"]) % len(sample_photos)].read_bytes(),
                            content_type="image/jpeg")

    async def stall(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg", "Content-Length": "100000"})
        await resp.prepare(request)  # headers, then nothing
        await release.wait()
        return resp

    app = web.Application()
    app.router.add_get("/photo/{i}", photo)
    app.router.add_get("/stall", stall)
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        release.set()
        await runner.cleanup()


def make_runner(classifier: Any, **batch: Any) -> tuple[Runner, ListSink]:
    settings = load_settings(
        fetch={"allowed_networks": ("127.0.0.0/8",), "connect_timeout_s": 1.0, "read_timeout_s": 3.0},
        batch={"max_size": 4, **batch},
    )
    sink = ListSink()
    runner = Runner(
        classifier=classifier, fetcher=ImageFetcher(settings.fetch), index=InMemoryEmbeddingIndex(),
        dedup=InMemoryDedupStore(), waves=InMemoryWaveCounter(settings.policy), sink=sink,
        policy=settings.policy, batch=settings.batch, milvus=settings.milvus,
    )
    return runner, sink


def raw(i: int, ref: str) -> RawMessage:
    value = ImageEvent(event_id=f"e{i}", content_id=f"c{i}", image_ref=ref).model_dump_json().encode()
    return RawMessage(value=value, key=f"c{i}".encode(), topic="in", partition=0, offset=i)


async def test_an_idle_model_starts_at_once_and_the_next_batch_fills_while_it_runs(
    opennsfw: Any, photo_server: str
) -> None:
    classifier = GatedClassifier(opennsfw)
    gate = classifier.gate = threading.Event()
    runner, _ = make_runner(classifier)
    first = await runner.submit(raw(0, f"{photo_server}/photo/0"))
    await asyncio.to_thread(classifier.entered.wait, 30)  # a batch of ONE started: nothing waited to fill it
    later = [await runner.submit(raw(i, f"{photo_server}/photo/{i}")) for i in range(1, 7)]
    while len(runner.ready.stream) < 6:  # all six decoded while the model is busy
        await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(first, *later)
    await runner.close()
    assert all(isinstance(r, Answered) for r in results)
    assert classifier.passes == [1, 4, 2]  # then full batches (max_size 4) from what had accumulated


async def test_a_stalled_url_does_not_hold_the_other_events(opennsfw: Any, photo_server: str) -> None:
    runner, sink = make_runner(opennsfw)
    slow = await runner.submit(raw(0, f"{photo_server}/stall"))
    fast = [await runner.submit(raw(i, f"{photo_server}/photo/{i}")) for i in range(1, 6)]
    await asyncio.gather(*fast)
    assert not slow.done()  # every neighbour was answered while the stalled fetch was still waiting
    result = await slow
    await runner.close()
    assert isinstance(result, DeadLettered) and result.dead_letter.reason == "fetch_timeout"
    assert sorted(v.content_id for v in sink.verdicts) == [f"c{i}" for i in range(1, 6)]


async def test_classify_requests_go_ahead_of_queued_stream_images(opennsfw: Any, photo_server: str,
                                                                 sample_photos: list[Path]) -> None:
    classifier = GatedClassifier(opennsfw)
    gate = threading.Event()
    classifier.gate = gate
    runner, _ = make_runner(classifier)
    stream = [await runner.submit(raw(0, f"{photo_server}/photo/0"))]
    await asyncio.to_thread(classifier.entered.wait, 30)
    stream += [await runner.submit(raw(i, f"{photo_server}/photo/{i}")) for i in range(1, 13)]
    while len(runner.ready.stream) < 12:
        await asyncio.sleep(0.01)
    request = asyncio.ensure_future(runner.classify(data=sample_photos[0].read_bytes()))
    while not runner.ready.requests:
        await asyncio.sleep(0.01)
    gate.set()
    verdict = await request
    pending_stream = sum(not f.done() for f in stream)
    await asyncio.gather(*stream)
    await runner.close()
    assert verdict.label in ("safe", "unsafe")
    assert pending_stream >= 4  # answered in the batch right after the one running, ahead of 12 queued images
    assert classifier.passes[:2] == [1, 4]


class GatedIndex(InMemoryEmbeddingIndex):
    """The in-memory index; records each upsert's size; ``gate`` (when set) holds the next upsert."""

    def __init__(self) -> None:
        super().__init__()
        self.upserts: list[list[str]] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def upsert(self, collection: str, records: Any) -> None:
        self.upserts.append([r.content_id for r in records])
        self.entered.set()
        gate, self.gate = self.gate, None
        if gate is not None:
            gate.wait(30)
        super().upsert(collection, records)


async def test_passes_queued_behind_a_busy_back_half_are_completed_as_one_group(
    opennsfw: Any, photo_server: str
) -> None:
    """A fast model makes many small passes; each back-half group pays a Milvus search and upsert, a publish
    round and a Redis round trip. Passes that queued while the back half was busy are taken as one group
    (Group.merged keeps their order)."""
    settings = load_settings(
        fetch={"allowed_networks": ("127.0.0.0/8",), "connect_timeout_s": 1.0, "read_timeout_s": 3.0},
        batch={"max_size": 2},
    )
    index, sink = GatedIndex(), ListSink()
    runner = Runner(
        classifier=opennsfw, fetcher=ImageFetcher(settings.fetch), index=index, dedup=InMemoryDedupStore(),
        waves=InMemoryWaveCounter(settings.policy), sink=sink, policy=settings.policy, batch=settings.batch,
        milvus=settings.milvus,
    )
    gate = index.gate = threading.Event()
    first = await runner.submit(raw(0, f"{photo_server}/photo/0"))
    await asyncio.to_thread(index.entered.wait, 30)  # the first group's upsert holds the back half
    later = [await runner.submit(raw(i, f"{photo_server}/photo/{i}")) for i in range(1, 7)]
    while sum(len(g.work) for g in runner.back_half.queue._queue) < 6:  # type: ignore[attr-defined]
        await asyncio.sleep(0.01)  # every later pass (of at most two) waits for the back half
    assert runner.back_half.queue.qsize() >= 3
    gate.set()
    results = await asyncio.gather(first, *later)
    await runner.close()
    assert all(isinstance(r, Answered) for r in results)
    assert [sorted(u) for u in index.upserts] == [["c0"], [f"c{i}" for i in range(1, 7)]]  # one for three passes
    assert sorted(v.content_id for v in sink.verdicts) == [f"c{i}" for i in range(7)]
