"""The stream's front half a batch at a time (:mod:`vitguard.pipeline.runtime.intake`), with the real open_nsfw
model and real image files: records submitted one per loop turn, as Faust hands them, are screened, read,
looked up and decoded together, and a failure in a batch is still one event's alone."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.pipeline.test_runner import CountingClassifier, file_ref, make_processor, messages
from vitguard import metrics
from vitguard.errors import FatalError
from vitguard.pipeline import Runner
from vitguard.pipeline.results import Answered, DeadLettered, ItemResult

STUCK = b"--vitguard-test-stuck-decoder--"
"""Bytes appended to a JPEG (decoders ignore what follows the image) that make :class:`StuckDecoder` hang."""


class StuckDecoder(CountingClassifier):
    """The real classifier, whose decode of an image carrying :data:`STUCK` does not return for ``hang_s``."""

    def __init__(self, inner: Any, hang_s: float) -> None:
        super().__init__(inner)
        self.hang_s = hang_s

    def prepare(self, data: bytes) -> Any:
        if data.endswith(STUCK):
            time.sleep(self.hang_s)
        return self.inner.prepare(data)


@pytest.fixture
def jpeg_root(image_root: Path, sample_photos: list[Path]) -> Path:
    """The sample photos (PNG files) as JPEG files too, named ``<stem>.jpg``: stills by their magic bytes."""
    from PIL import Image

    for photo in sample_photos:
        Image.open(photo).convert("RGB").save(image_root / f"{photo.stem}.jpg", "JPEG", quality=90)
    return image_root


def lookups(op: str) -> tuple[float, float]:
    """(Redis lookups, keys asked) of the front half's ``op`` so far."""
    count = metrics.REGISTRY.get_sample_value("vitguard_redis_lookup_keys_count", {"op": op}) or 0.0
    keys = metrics.REGISTRY.get_sample_value("vitguard_redis_lookup_keys_sum", {"op": op}) or 0.0
    return count, keys


async def submit_like_faust(runner: Runner, raws: list[Any]) -> list[ItemResult]:
    """Submit one record per event-loop turn (Faust's stream yields to the loop between records)."""
    futures = []
    for raw in raws:
        futures.append(await runner.submit(raw))
        await asyncio.sleep(0)
    return list(await asyncio.wait_for(asyncio.gather(*futures), 60))


async def test_records_submitted_one_by_one_are_prepared_in_batches(
        opennsfw: Any, image_root: Path, sample_photos: list[Path]) -> None:
    names = [p.name for p in sample_photos] * 4
    processor, sink, _ = make_processor(opennsfw, image_root)
    reference, _, _ = make_processor(opennsfw, image_root)
    raws = messages([file_ref(image_root, n) for n in names])
    seen_before, cached_before = lookups("seen_events"), lookups("cached_verdicts")
    results = await submit_like_faust(processor, raws)
    seen_after, cached_after = lookups("seen_events"), lookups("cached_verdicts")
    batches = processor.intake.batches
    expected = await reference.process(messages([file_ref(image_root, p.name) for p in sample_photos]))
    await processor.close()
    await reference.close()

    assert all(isinstance(r, Answered) for r in results) and len(sink.verdicts) == len(raws)
    # every event asked the guard once; one lookup per batch, and batches held several records
    assert seen_after[1] - seen_before[1] == len(raws)
    assert seen_after[0] - seen_before[0] == batches < len(raws) / 2
    assert cached_after[0] - cached_before[0] <= batches
    # the same scores as the same images prepared one batch at a time (repeats of an image come from the cache)
    scores = {v.image_sha256: v.scores for v in expected.verdicts}
    assert {v.image_sha256: v.scores for v in sink.verdicts if not v.from_cache} == scores
    assert processor.intake.in_front == 0


@pytest.mark.parametrize("kind", ["jpg", "png"])
async def test_a_decoder_that_hangs_holds_only_its_own_image(
        opennsfw: Any, jpeg_root: Path, sample_photos: list[Path], kind: str) -> None:
    """One decode job holds several images (still JPEGs, or PNGs that might be animated): the one it hangs on
    becomes its ``decode_timeout`` dead letter, the ones it finished keep their tensors, and the ones after it
    are decoded in a new job."""
    image_root = jpeg_root
    names = [f"{p.stem}.{kind}" if kind == "jpg" else p.name for p in sample_photos[:4]]
    (image_root / f"stuck.{kind}").write_bytes((image_root / names[0]).read_bytes() + STUCK)
    classifier = StuckDecoder(opennsfw, hang_s=3.0)
    processor, sink, _ = make_processor(classifier, image_root, batch={"decode_workers": 1, "decode_timeout_s": 0.5})
    names = [names[1], f"stuck.{kind}", names[2], names[3]]
    outcome = await asyncio.wait_for(processor.process(messages([file_ref(image_root, n) for n in names])), 30)
    await processor.close()

    assert [d.source_offset for d in outcome.dead_letters] == [1]
    assert outcome.dead_letters[0].reason == "decode_timeout"
    assert sorted(v.content_id for v in outcome.verdicts) == ["c0", "c2", "c3"]
    assert processor.health.fatal is None


async def test_a_bug_in_a_batch_is_blamed_on_its_event_alone(
        opennsfw: Any, image_root: Path, sample_photos: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch fails as a whole (a bug that one record triggers); its records are prepared again one by one,
    and only the record that fails alone too ends as an ``internal_error`` dead letter."""
    from vitguard.pipeline.runtime.front import FrontHalf

    screen = FrontHalf.screen

    async def buggy_screen(self: Any, items: Any) -> Any:
        if any(item.raw.offset == 2 for item in items):
            raise RuntimeError("a bug one record triggers")
        return await screen(self, items)

    monkeypatch.setattr(FrontHalf, "screen", buggy_screen)
    processor, sink, _ = make_processor(opennsfw, image_root)
    outcome = await processor.process(messages([file_ref(image_root, p.name) for p in sample_photos[:5]]))
    await processor.close()

    assert [(d.source_offset, d.reason) for d in outcome.dead_letters] == [(2, "internal_error")]
    assert sorted(v.content_id for v in outcome.verdicts) == ["c0", "c1", "c3", "c4"]
    assert processor.health.fatal is None


async def test_unreadable_and_unparsable_records_in_a_batch_are_each_their_dead_letter(
        opennsfw: Any, image_root: Path, sample_photos: list[Path]) -> None:
    processor, _, _ = make_processor(opennsfw, image_root)
    refs: list[str | bytes] = [
        file_ref(image_root, sample_photos[0].name), b"{not json", file_ref(image_root, "missing.jpg"),
        file_ref(image_root, "not-an-image.jpg"), "data:image/jpeg;base64,@@@", (image_root.parent / "x.jpg").as_uri(),
        file_ref(image_root, sample_photos[1].name),
    ]
    results = await submit_like_faust(processor, messages(refs))
    await processor.close()

    reasons = {r.raw.offset: r.dead_letter.reason for r in results if isinstance(r, DeadLettered)}
    assert reasons.keys() == {1, 2, 3, 4, 5}
    assert reasons[1] == "invalid_json" and reasons[2] == "fetch_not_found" and reasons[4] == "invalid_base64"
    assert reasons[3] in {"not_an_image", "unsupported_image"} and reasons[5] == "file_outside_root"
    assert [r.verdict.content_id for r in results if isinstance(r, Answered)] == ["c0", "c6"]


async def test_closing_starts_no_batch_for_the_records_still_waiting(
        opennsfw: Any, image_root: Path, sample_photos: list[Path]) -> None:
    """Records wait while the front half's batches are busy; closing cancels the busy ones, and the records
    still waiting start no new batch (it would run against closed clients, after the runner is gone)."""
    from tests.pipeline.test_runner import SlowDecodeClassifier

    processor, _, _ = make_processor(SlowDecodeClassifier(opennsfw, 0.5), image_root)
    for raw in messages([file_ref(image_root, p.name) for p in sample_photos] * 3):
        await processor.submit(raw)
        await asyncio.sleep(0)
    await asyncio.sleep(0.1)
    started = processor.intake.batches
    await processor.close()
    await asyncio.sleep(0.1)
    assert processor.intake.batches == started == 2


async def test_a_ready_queue_that_refuses_prepared_events_stops_the_runner(
        opennsfw: Any, image_root: Path, sample_photos: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Events handed on are out of the front half: if the ready queue refuses them (a bug in the runner), they
    are in no queue and nobody would ever answer them. That is fatal, not a batch to retry."""
    from vitguard.pipeline.runtime.batcher import ReadyQueue

    def refuse(self: Any, works: Any) -> None:
        raise RuntimeError("a bug in the ready queue")

    monkeypatch.setattr(ReadyQueue, "put_many", refuse)
    processor, _, _ = make_processor(opennsfw, image_root)
    fut = await processor.submit(messages([file_ref(image_root, sample_photos[0].name)])[0])
    with pytest.raises(FatalError, match="could not join the ready queue"):
        await asyncio.wait_for(fut, 10)
    assert processor.health.fatal is not None
    await processor.close()
