"""The pipeline Runner with the real open_nsfw model, real image files, in-memory stores and a list sink."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vitguard import metrics
from vitguard.errors import FatalError, ServiceUnavailableError
from vitguard.fetch import ImageFetcher
from vitguard.health import liveness
from vitguard.pipeline import ListSink, RawMessage, Runner
from vitguard.schemas.events import ImageEvent
from vitguard.settings import load_settings
from vitguard.stores import InMemoryDedupStore, InMemoryEmbeddingIndex, InMemoryWaveCounter

ALL_UNSAFE = {"unsafe_labels": ("SFW", "NSFW"), "unsafe_threshold": 0.0}
"""A test policy that calls every image unsafe, so near-duplicate clustering runs on safe photos."""


class CountingClassifier:
    """The real classifier, counting forward passes; ``poison`` makes batches containing it fail."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.info = inner.info
        self.predict_calls: list[int] = []
        self.poison: float | None = None

    def prepare(self, data: bytes) -> Any:
        return self.inner.prepare(data)

    def predict(self, batch: Any) -> Any:
        self.predict_calls.append(len(batch))
        if self.poison is not None and any(np.isclose(t.flat[0], self.poison) for t in batch):
            raise RuntimeError("poisoned tensor")
        return self.inner.predict(batch)


class SlowDecodeClassifier(CountingClassifier):
    """The real classifier, each decode taking ``delay_s`` longer; ``decoding`` is set once one has started."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        super().__init__(inner)
        self.delay_s = delay_s
        self.decoding = threading.Event()

    def prepare(self, data: bytes) -> Any:
        self.decoding.set()
        time.sleep(self.delay_s)
        return self.inner.prepare(data)


class FlakyIndex(InMemoryEmbeddingIndex):
    """Milvus that is down for the first ``failures`` upserts."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def upsert(self, collection: str, records: Sequence[Any]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ServiceUnavailableError("milvus down (test)")
        super().upsert(collection, records)


class DeadRedis:
    """A dedup store and wave counter whose every call fails like an unreachable Redis."""

    calls = 0

    async def _fail(self, *args: Any, **kwargs: Any) -> Any:
        DeadRedis.calls += 1
        raise ServiceUnavailableError("redis down (test)")

    seen_events = mark_events = cached_verdicts = cache_verdicts = remember = record = record_many = _fail


def make_processor(
    classifier: Any, image_root: Path, *, index: Any = None, dedup: Any = None, waves: Any = None,
    policy: dict[str, Any] | None = None, batch: dict[str, Any] | None = None, sink: ListSink | None = None,
) -> tuple[Runner, ListSink, Any]:
    settings = load_settings(
        fetch={"file_root": str(image_root)}, policy=policy or {}, batch=batch or {},
        milvus={"retry_backoff_s": 0.01, "retry_backoff_max_s": 0.02},
    )
    sink = sink or ListSink()
    index = index or InMemoryEmbeddingIndex()
    processor = Runner(
        classifier=classifier, fetcher=ImageFetcher(settings.fetch), index=index,
        dedup=dedup or InMemoryDedupStore(), waves=waves or InMemoryWaveCounter(settings.policy),
        sink=sink, policy=settings.policy, batch=settings.batch, milvus=settings.milvus,
    )
    return processor, sink, index


def messages(refs: Sequence[str | bytes], start: int = 0) -> list[RawMessage]:
    out = []
    for i, ref in enumerate(refs, start):
        value = ref if isinstance(ref, bytes) else ImageEvent(
            event_id=f"e{i}", content_id=f"c{i}", image_ref=ref).model_dump_json().encode()
        out.append(RawMessage(value=value, key=f"c{i}".encode(), topic="in", partition=0, offset=i))
    return out


def tenant_messages(root: Path, uploads: Sequence[tuple[str, str]], start: int = 0) -> list[RawMessage]:
    """One event per (file name, tenant): event ``e{n}``, content ``c{n}``, offset ``n`` from ``start``."""
    return [RawMessage(value=ImageEvent(event_id=f"e{n}", content_id=f"c{n}", tenant=tenant,
                                        image_ref=file_ref(root, name)).model_dump_json().encode(),
                       key=f"c{n}".encode(), topic="in", partition=0, offset=n)
            for n, (name, tenant) in enumerate(uploads, start=start)]


def file_ref(root: Path, name: str) -> str:
    return (root / name).as_uri()


async def test_every_message_gets_one_verdict_or_one_dead_letter(opennsfw: Any, image_root: Path,
                                                                 sample_photos: list[Path]) -> None:
    processor, sink, index = make_processor(opennsfw, image_root)
    small_png = base64.b64encode((image_root / "dup-resized.jpg").read_bytes()).decode()
    refs: list[str | bytes] = [file_ref(image_root, p.name) for p in sample_photos[:3]] + [
        f"data:image/jpeg;base64,{small_png}",
        b"{broken json",
        b'{"content_id": "x1", "image_ref": "gopher://old"}',
        (image_root.parent / "outside.jpg").as_uri(),
        file_ref(image_root, "missing.jpg"),
        file_ref(image_root, "not-an-image.jpg"),
    ]
    outcome = await processor.process(messages(refs))
    await processor.close()

    assert outcome.answered == len(refs) and not outcome.skipped
    assert sink.verdicts == outcome.verdicts and sink.dead_letters == outcome.dead_letters
    assert sorted(v.content_id for v in outcome.verdicts) == ["c0", "c1", "c2", "c3"]
    for v in outcome.verdicts:
        assert v.label == "safe" and v.unsafe_score < 0.2  # scikit-image photos are safe for open_nsfw
        assert v.model_name == "opennsfw" and v.collection == processor.collection and v.embedding_id == v.content_id
        assert v.image_sha256 and v.timings.infer_ms > 0 and not v.from_cache
    reasons = {d.source_offset: d.reason for d in outcome.dead_letters}
    assert reasons[4] == "invalid_json" and reasons[5] == "schema_violation"
    assert reasons[6] == "file_outside_root" and reasons[7] == "fetch_not_found"
    assert reasons[8] in {"not_an_image", "unsupported_image"}
    assert outcome.dead_letters[0].original_bytes() == b"{broken json"
    stored = index.records(processor.collection)
    assert set(stored) == {"c0", "c1", "c2", "c3"} and index.upsert_calls == 1
    assert all(r.label == "safe" and r.cluster_id == "" for r in stored.values())


async def test_one_forward_pass_per_batch_and_cache_hits_skip_it(opennsfw: Any, image_root: Path,
                                                                 sample_photos: list[Path]) -> None:
    counting = CountingClassifier(opennsfw)
    processor, sink, _ = make_processor(counting, image_root)
    refs = [file_ref(image_root, p.name) for p in sample_photos[:4]]
    await processor.process(messages(refs))
    assert counting.predict_calls == [4]

    hits_before = metrics.REGISTRY.get_sample_value("vitguard_cache_hits_total") or 0.0

    def keys_asked(op: str) -> float:
        return metrics.REGISTRY.get_sample_value("vitguard_redis_lookup_keys_sum", {"op": op}) or 0.0

    asked_before = {op: keys_asked(op) for op in ("seen_events", "cached_verdicts")}
    again = await processor.process(messages(refs, start=10))  # same bytes, new events and content ids
    # every event asked both questions once (several may share one lookup)
    assert {op: keys_asked(op) - n for op, n in asked_before.items()} == {"seen_events": 4, "cached_verdicts": 4}
    await processor.close()
    assert counting.predict_calls == [4]  # no second forward pass
    assert len(again.verdicts) == 4 and all(v.from_cache for v in again.verdicts)
    first = {v.image_sha256: v for v in sink.verdicts[:4]}
    for v in again.verdicts:
        assert v.content_id.startswith("c1") and v.scores == first[v.image_sha256].scores
    assert metrics.REGISTRY.get_sample_value("vitguard_cache_hits_total") == hits_before + 4


async def test_a_cache_hit_is_stored_under_its_own_content_id_as_a_copy_of_its_original(
    opennsfw: Any, image_root: Path, sample_photos: list[Path]
) -> None:
    """Issue 31: every answered item is findable by its content id. A cache hit was answered with
    ``embedding_id: null`` and nothing stored, so a search by its id found nothing."""
    processor, sink, index = make_processor(opennsfw, image_root)
    refs = [file_ref(image_root, p.name) for p in sample_photos[:2]]
    await processor.process(messages(refs))
    again = messages(refs, start=10)
    again[1] = RawMessage(value=ImageEvent(event_id="e11", content_id="c11", image_ref=refs[1], tenant="other")
                          .model_dump_json().encode(), key=b"c11", topic="in", partition=0, offset=11)
    second = await processor.process(again)
    await processor.close()
    assert all(v.from_cache for v in second.verdicts)
    assert {(v.content_id, v.embedding_id, v.collection) for v in second.verdicts} == {
        ("c10", "c10", processor.collection), ("c11", "c11", processor.collection)}
    stored = index.records(processor.collection)
    assert set(stored) == {"c0", "c1", "c10", "c11"}
    for copy, original in (("c10", "c0"), ("c11", "c1")):
        assert np.array_equal(stored[copy].embedding, stored[original].embedding)
        assert (stored[copy].label, stored[copy].cluster_id) == (stored[original].label, stored[original].cluster_id)
    assert stored["c11"].tenant == "other" and stored["c1"].tenant == "default"


async def test_redelivered_events_get_no_second_verdict(opennsfw: Any, image_root: Path,
                                                        sample_photos: list[Path]) -> None:
    processor, sink, _ = make_processor(opennsfw, image_root)
    batch = messages([file_ref(image_root, p.name) for p in sample_photos[:3]] + [b"nope"])
    first = await processor.process(batch)
    second = await processor.process(batch + batch[:1])
    # the same bytes in a new record: the invalid message has no id, so it is dead-lettered again
    third = await processor.process(messages([b"nope"], start=50))
    await processor.close()
    assert first.answered == 4
    # every record answered before is remembered by its position, the invalid message's too
    assert len(second.verdicts) == 0 and len(second.skipped) == 5 and second.dead_letters == []
    assert [d.reason for d in third.dead_letters] == ["invalid_json"]
    assert len(sink.verdicts) == 3 and len(sink.dead_letters) == 2


async def test_near_duplicates_join_one_cluster_and_alert(opennsfw: Any, image_root: Path,
                                                          sample_photos: list[Path]) -> None:
    processor, sink, index = make_processor(opennsfw, image_root, policy={**ALL_UNSAFE, "wave_threshold": 50})
    originals = await processor.process(messages([file_ref(image_root, p.name) for p in sample_photos[:4]]))
    assert not originals.alerts and len({v.cluster_id for v in originals.verdicts}) == 4  # distinct photos

    copies = ["dup-resized.jpg", "dup-cropped.jpg", "dup-reencoded.jpg", "dup-crop-resize.jpg"]
    outcome = await processor.process(messages([file_ref(image_root, n) for n in copies], start=100))
    await processor.close()
    seed = next(v for v in originals.verdicts if v.content_id == "c0")
    assert {v.cluster_id for v in outcome.verdicts} == {seed.cluster_id}
    assert sorted(a.content_id for a in outcome.alerts) == ["c100", "c101", "c102", "c103"]
    for alert in outcome.alerts:
        assert alert.cluster_id == seed.cluster_id and alert.severity == "info"
        assert alert.matches and all(m.similarity >= 0.92 for m in alert.matches)
    assert any(m.content_id == "c0" for m in outcome.alerts[0].matches)
    assert {r.cluster_id for r in index.records(processor.collection).values() if r.content_id in
            {"c0", "c100", "c101", "c102", "c103"}} == {seed.cluster_id}


async def test_near_duplicates_within_one_batch_cluster_together(opennsfw: Any, image_root: Path) -> None:
    processor, _, _ = make_processor(opennsfw, image_root, policy=ALL_UNSAFE)
    names = ["dup-original.jpg", "dup-resized.jpg", "dup-cropped.jpg", "coffee.png"]
    outcome = await processor.process(messages([file_ref(image_root, n) for n in names]))
    await processor.close()
    clusters = {v.content_id: v.cluster_id for v in outcome.verdicts}
    assert clusters["c0"] == clusters["c1"] == clusters["c2"] != clusters["c3"]
    assert sorted(a.content_id for a in outcome.alerts) == ["c1", "c2"]


async def test_a_burst_escalates_to_one_critical_wave_alert(opennsfw: Any, image_root: Path) -> None:
    policy = {**ALL_UNSAFE, "wave_threshold": 3, "wave_alert_cooldown_s": 300}
    processor, _, _ = make_processor(opennsfw, image_root, policy=policy)
    copies = ["dup-original.jpg", "dup-resized.jpg", "dup-cropped.jpg", "dup-reencoded.jpg", "dup-crop-resize.jpg"]
    refs = [file_ref(image_root, n) for n in copies] * 2  # ten uploads of one image family
    outcome = await processor.process(messages(refs))
    await processor.close()
    severities = [a.severity for a in outcome.alerts]
    assert len({v.cluster_id for v in outcome.verdicts}) == 1
    # seed (no alert), 1 info/warning alert below the threshold, then ONE critical alert, the rest suppressed
    assert severities.count("critical") == 1
    assert len(outcome.alerts) == 2 and outcome.suppressed_alerts == 7
    critical = next(a for a in outcome.alerts if a.severity == "critical")
    assert critical.wave_count == 3


async def test_redis_down_does_not_stop_verdicts(opennsfw: Any, image_root: Path,
                                                 sample_photos: list[Path]) -> None:
    processor, sink, _ = make_processor(opennsfw, image_root, dedup=DeadRedis(), waves=DeadRedis(),
                                        policy=ALL_UNSAFE)
    errors_before = metrics.REGISTRY.get_sample_value(
        "vitguard_store_errors_total", {"store": "redis", "op": "seen_events"}) or 0.0
    outcome = await processor.process(messages([file_ref(image_root, p.name) for p in sample_photos[:3]]
                                               + [file_ref(image_root, "dup-resized.jpg")]))
    await processor.close()
    assert len(outcome.verdicts) == 4 and not outcome.dead_letters
    assert len(outcome.alerts) == 1 and outcome.alerts[0].wave_count == 1  # alert without the counter
    assert metrics.REGISTRY.get_sample_value(
        "vitguard_store_errors_total", {"store": "redis", "op": "seen_events"}) == errors_before + 1


async def test_milvus_outage_holds_the_batch_until_the_upsert_succeeds(opennsfw: Any, image_root: Path,
                                                                        sample_photos: list[Path]) -> None:
    index = FlakyIndex(failures=3)  # more than one round of retry_attempts=2
    processor, sink, _ = make_processor(opennsfw, image_root, index=index)
    outcome = await processor.process(messages([file_ref(image_root, p.name) for p in sample_photos[:2]]))
    await processor.close()
    assert index.failures == 0 and index.upsert_calls == 1
    assert len(outcome.verdicts) == 2 and sink.send_calls == 1


async def test_failed_publish_is_retried(opennsfw: Any, image_root: Path, sample_photos: list[Path]) -> None:
    processor, sink, _ = make_processor(opennsfw, image_root)
    sink.fail_next = 1
    outcome = await processor.process(messages([file_ref(image_root, sample_photos[0].name)]))
    await processor.close()
    assert sink.send_calls == 2 and sink.verdicts == outcome.verdicts


async def test_a_model_failure_dead_letters_only_the_failing_image(opennsfw: Any, image_root: Path,
                                                                    sample_photos: list[Path]) -> None:
    counting = CountingClassifier(opennsfw)
    poisoned = counting.prepare((image_root / sample_photos[1].name).read_bytes())
    counting.poison = float(poisoned.flat[0])
    processor, _, _ = make_processor(counting, image_root)
    outcome = await processor.process(messages([file_ref(image_root, p.name) for p in sample_photos[:3]]))
    await processor.close()
    assert sorted(v.content_id for v in outcome.verdicts) == ["c0", "c2"]
    assert [(d.content_id, d.reason) for d in outcome.dead_letters] == [("c1", "inference_failed")]


class NaNClassifier(CountingClassifier):
    """The real classifier, one image's tensor carrying an infinite pixel (an overflow upstream): the real
    model's scores and embedding for it come out NaN."""

    def __init__(self, inner: Any, bad: bytes) -> None:
        super().__init__(inner)
        self.bad = bad

    def prepare(self, data: bytes) -> Any:
        tensor = self.inner.prepare(data)
        if data == self.bad:
            tensor = tensor.copy()
            tensor.flat[0] = np.inf
        return tensor


async def test_nan_from_the_model_is_a_failed_inference_not_a_safe_verdict(
        opennsfw: Any, image_root: Path, sample_photos: list[Path]) -> None:
    """NaN read as a probability used to clamp to 0: the image went out 'safe'. It is a dead letter now."""
    bad = (image_root / sample_photos[1].name).read_bytes()
    nan_model = NaNClassifier(opennsfw, bad)
    assert np.isnan(nan_model.predict(np.stack([nan_model.prepare(bad)]))[0].scores["NSFW"])
    processor, _, index = make_processor(nan_model, image_root)
    outcome = await processor.process(messages([file_ref(image_root, p.name) for p in sample_photos[:3]]))
    await processor.close()
    assert sorted(v.content_id for v in outcome.verdicts) == ["c0", "c2"]
    assert [(d.content_id, d.reason) for d in outcome.dead_letters] == [("c1", "inference_failed")]
    assert "NaN" in outcome.dead_letters[0].message and "c1" not in index.records(processor.collection)


async def test_multi_class_checkpoint_sums_the_policy_labels(tmp_path: Path, image_root: Path,
                                                              sample_photos: list[Path]) -> None:
    from vitguard.model import load_classifier
    from vitguard.testing.models import make_tiny_checkpoint

    labels = ("drawings", "hentai", "neutral", "porn", "sexy")
    classifier = load_classifier(str(make_tiny_checkpoint(tmp_path / "tiny", labels=labels)))
    policy = {"unsafe_labels": ("hentai", "porn", "sexy"), "unsafe_threshold": 0.5}
    processor, _, index = make_processor(classifier, image_root, policy=policy)
    outcome = await processor.process(messages([file_ref(image_root, p.name) for p in sample_photos[:4]]))
    await processor.close()
    assert len(outcome.verdicts) == 4
    for v in outcome.verdicts:
        assert set(v.scores) == set(labels) and v.model_untrained is False
        assert v.unsafe_score == pytest.approx(v.scores["hentai"] + v.scores["porn"] + v.scores["sexy"], abs=1e-6)
        assert v.label == ("unsafe" if v.unsafe_score >= 0.5 else "safe")
    assert processor.collection and str(classifier.info.embedding_dim) in processor.collection


async def test_classify_one_image_without_side_effects(opennsfw: Any, image_root: Path,
                                                       sample_photos: list[Path]) -> None:
    from vitguard.errors import InputError

    processor, sink, index = make_processor(opennsfw, image_root)
    verdict = await processor.classify(data=sample_photos[0].read_bytes())
    by_ref = await processor.classify(image_ref=file_ref(image_root, sample_photos[0].name), content_id="mine")
    with pytest.raises(InputError) as bad:
        await processor.classify(data=b"garbage bytes")
    await processor.close()
    assert verdict.label == "safe" and verdict.scores == by_ref.scores and by_ref.content_id == "mine"
    assert bad.value.reason in {"not_an_image", "unsupported_image"}
    assert sink.send_calls == 0 and index.upsert_calls == 0


async def test_a_classify_request_is_decoded_ahead_of_the_streams_decode_backlog(
    opennsfw: Any, image_root: Path, sample_photos: list[Path]
) -> None:
    classifier = SlowDecodeClassifier(opennsfw, 0.05)
    processor, _, _ = make_processor(classifier, image_root, batch={"decode_workers": 1, "max_size": 4})
    refs = [file_ref(image_root, p.name) for p in sample_photos] * (20 // len(sample_photos) + 1)
    futures = [await processor.submit(m) for m in messages(refs[:20])]
    await asyncio.get_running_loop().run_in_executor(None, classifier.decoding.wait, 10)
    await asyncio.sleep(0.1)  # the other decodes (about a second of work) are queued behind the running ones
    verdict = await asyncio.wait_for(processor.classify(data=sample_photos[0].read_bytes()), 30)
    answered_before = sum(f.done() for f in futures)
    await asyncio.gather(*futures)
    await processor.close()
    assert verdict.label == "safe"
    assert answered_before <= 4, f"{answered_before} of 20 stream events were answered before the request"


async def test_a_classify_request_is_answered_while_the_streams_publish_is_failing(
    opennsfw: Any, image_root: Path, sample_photos: list[Path]
) -> None:
    processor, sink, _ = make_processor(opennsfw, image_root)
    sink.fail_next = 10**6  # every publish round fails: the stream's group is retried with backoff
    stuck = await processor.submit(messages([file_ref(image_root, sample_photos[0].name)])[0])
    while sink.send_calls == 0:
        await asyncio.sleep(0.01)
    verdict = await asyncio.wait_for(processor.classify(data=sample_photos[1].read_bytes()), 20)
    assert verdict.label == "safe" and not stuck.done()
    sink.fail_next = 0
    result = await asyncio.wait_for(stuck, 30)
    await processor.close()
    assert result.verdict.label == "safe"  # type: ignore[union-attr]


async def test_a_classify_request_is_answered_while_milvus_holds_the_stream(
    opennsfw: Any, image_root: Path, sample_photos: list[Path]
) -> None:
    index = FlakyIndex(failures=10**6)  # every upsert fails: the stream's groups hold, the batch loop backs up
    processor, _, _ = make_processor(opennsfw, image_root, index=index, batch={"max_size": 2})
    refs = [file_ref(image_root, p.name) for p in sample_photos] * (8 // len(sample_photos) + 1)
    held = [await processor.submit(m) for m in messages(refs[:8])]
    while index.failures > 10**6 - 3:
        await asyncio.sleep(0.01)
    await asyncio.sleep(1.0)  # the later passes run and queue up behind the held group
    verdict = await asyncio.wait_for(processor.classify(data=sample_photos[1].read_bytes()), 20)
    assert verdict.label == "safe" and not any(f.done() for f in held)
    # held on purpose, the policy retrying: live (a restart would only add a model load to the outage)
    live = liveness(processor.health, time.monotonic(), stall_timeout_s=0.5)
    assert live.ok and live.detail["holding"].startswith("milvus"), live
    index.failures = 0
    results = await asyncio.wait_for(asyncio.gather(*held), 60)
    await processor.close()
    assert all(r.verdict.label == "safe" for r in results)  # type: ignore[union-attr]


async def test_requests_answered_do_not_hide_a_wedged_stream_from_liveness(
    opennsfw: Any, image_root: Path, sample_photos: list[Path]
) -> None:
    processor, _, _ = make_processor(opennsfw, image_root)
    stage = processor.completer.stage
    never = asyncio.Event()

    async def hangs_on_stream_groups(group: Any) -> Any:  # a bug with no deadline, in the stream's back half
        if any(not w.request for w in group.work):
            await never.wait()
        return await stage(group)

    processor.completer.stage = hangs_on_stream_groups  # type: ignore[method-assign]
    stuck = await processor.submit(messages([file_ref(image_root, sample_photos[0].name)])[0])
    await asyncio.sleep(0.6)
    for photo in sample_photos[:3]:  # /classify keeps answering meanwhile
        assert (await asyncio.wait_for(processor.classify(data=photo.read_bytes()), 20)).label == "safe"
    probe = liveness(processor.health, time.monotonic(), stall_timeout_s=0.5)
    assert not probe.ok and not stuck.done()
    assert len(probe.reasons) == 1 and probe.reasons[0].startswith("wedged: 1 event(s) waiting"), probe.reasons
    assert probe.detail["requests_in_flight"] == 0 and probe.detail["holding"] is None
    await processor.close()


def slow_png(path: Path) -> Path:
    """A 36 MP PNG of half a megabyte: a real decode of about half a second on this project's CPUs."""
    from PIL import Image

    x = np.arange(6000, dtype=np.uint16)
    pixels = np.stack([(x[None, :] + x[:, None]) % 256, (3 * x[None, :] + 0 * x[:, None]) % 256,
                       (5 * x[:, None] + 0 * x[None, :]) % 256], axis=2).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="PNG", compress_level=1)
    return path


async def test_a_decode_past_its_deadline_is_a_dead_letter_and_the_partition_goes_on(
    opennsfw: Any, image_root: Path, sample_photos: list[Path]
) -> None:
    slow = slow_png(image_root / "slow.png")
    processor, _, _ = make_processor(opennsfw, image_root, batch={"decode_timeout_s": 0.1})
    refs = [slow.as_uri(), *(file_ref(image_root, p.name) for p in sample_photos[:2])]
    results = await asyncio.wait_for(asyncio.gather(*[await processor.submit(m) for m in messages(refs)]), 30)
    assert results[0].dead_letter.reason == "decode_timeout", results[0]  # type: ignore[union-attr]
    assert "limit 0.1 s" in results[0].dead_letter.message  # type: ignore[union-attr]
    assert [r.verdict.label for r in results[1:]] == ["safe", "safe"]  # type: ignore[union-attr]
    # the abandoned decode's thread was replaced: the pool decodes at full strength meanwhile
    later = await asyncio.wait_for(processor.classify(data=sample_photos[2].read_bytes()), 20)
    assert later.label == "safe" and processor.health.fatal is None
    await processor.close()


async def test_more_stuck_decodes_than_decode_threads_stop_the_runner(
    opennsfw: Any, image_root: Path, sample_photos: list[Path]
) -> None:

    slow = slow_png(image_root / "slow.png")
    fatal: list[BaseException] = []
    processor, _, _ = make_processor(opennsfw, image_root, batch={"decode_timeout_s": 0.1, "decode_workers": 1})
    processor.health.add_fatal_hook(fatal.append)
    futures = [await processor.submit(m) for m in messages([slow.as_uri()] * 3)]
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 30)
    # the first is abandoned (one stuck: as many as decode threads), the second too: two stuck, fatal
    assert len(fatal) == 1 and "restart the worker" in str(fatal[0]), fatal
    assert any(isinstance(r, FatalError) for r in results), results
    assert processor.health.fatal is not None
    await processor.close()


async def test_overlapping_batches_still_answer_a_redelivered_event_once(opennsfw: Any, image_root: Path,
                                                                         sample_photos: list[Path]) -> None:
    processor, sink, _ = make_processor(opennsfw, image_root)
    first = messages([file_ref(image_root, p.name) for p in sample_photos[:2]])
    second = messages([file_ref(image_root, sample_photos[2].name)], start=2) + first[:1]
    # batch k+1 is taken while batch k is still in flight: the Redis guard has not seen k yet
    one, two = await asyncio.gather(processor.process(first), processor.process(second))
    await processor.close()
    assert [v.content_id for v in one.verdicts] == ["c0", "c1"]
    assert [v.content_id for v in two.verdicts] == ["c2"] and [r.offset for r in two.skipped] == [0]
    assert sorted(v.event_id for v in sink.verdicts) == ["e0", "e1", "e2"]


class BrokenIndex(InMemoryEmbeddingIndex):
    """An index with a bug (not an outage): upsert raises something that is not ServiceUnavailableError."""

    def upsert(self, collection: str, records: Sequence[Any]) -> None:
        raise RuntimeError("bug in the adapter")


async def test_an_unexpected_error_dead_letters_the_batch_instead_of_escaping(
    opennsfw: Any, image_root: Path, sample_photos: list[Path]
) -> None:
    processor, sink, _ = make_processor(opennsfw, image_root, index=BrokenIndex())
    outcome = await processor.process(messages([file_ref(image_root, p.name) for p in sample_photos[:2]] + [b"{"]))
    await processor.close()
    assert not outcome.verdicts and sink.dead_letters == outcome.dead_letters
    assert sorted(d.reason for d in outcome.dead_letters) == ["internal_error", "internal_error", "invalid_json"]
    assert all("bug in the adapter" in d.message for d in outcome.dead_letters if d.reason == "internal_error")


async def test_a_dead_lettered_event_is_processed_again_when_redriven(opennsfw: Any, image_root: Path,
                                                                      sample_photos: list[Path]) -> None:
    processor, sink, _ = make_processor(opennsfw, image_root)
    late = image_root / "uploaded-later.png"
    batch = messages([late.as_uri()])
    first = await processor.process(batch)
    late.write_bytes(sample_photos[0].read_bytes())  # the cause is fixed; the operator re-drives the payload
    again = await processor.process([RawMessage(first.dead_letters[0].original_bytes(), b"c0", "dlq", 0, 0)])
    await processor.close()
    assert [d.reason for d in first.dead_letters] == ["fetch_not_found"]
    assert [v.event_id for v in again.verdicts] == ["e0"] and not again.skipped


async def test_a_reused_event_id_with_another_image_is_still_judged(opennsfw: Any, image_root: Path,
                                                                    sample_photos: list[Path]) -> None:
    """The redelivery guard recognises the same event, not just its id: a second event that reuses an id
    for another image (a producer bug, or someone racing a real upload) is judged, in the same batch, in
    an overlapping one and after the first was answered; a byte-for-byte redelivery still is not."""
    shared = InMemoryDedupStore()  # Redis: what every worker of the group knows
    processor, sink, _ = make_processor(opennsfw, image_root, dedup=shared)

    def event(offset: int, photo: Path, content_id: str) -> RawMessage:
        value = ImageEvent(event_id="e-reused", content_id=content_id,
                           image_ref=file_ref(image_root, photo.name)).model_dump_json().encode()
        return RawMessage(value=value, key=content_id.encode(), topic="in", partition=0, offset=offset)

    together = await processor.process([event(0, sample_photos[0], "a"), event(1, sample_photos[1], "b")])
    one, two = await asyncio.gather(processor.process([event(2, sample_photos[2], "c")]),
                                    processor.process([event(3, sample_photos[3], "d")]))
    later = await processor.process([event(4, sample_photos[1], "e")])  # a known image, another content id
    # the same event again, in a new record (a producer's retry): answered already
    retried = await processor.process([event(5, sample_photos[0], "a")])
    await processor.close()
    # another worker of the group (after a rebalance) knows them from the shared store alone
    other, other_sink, _ = make_processor(opennsfw, image_root, dedup=shared)
    handed_over = await other.process([event(6, sample_photos[0], "a"), event(7, sample_photos[2], "f")])
    await other.close()
    assert [v.content_id for v in handed_over.verdicts] == ["f"] and [r.offset for r in handed_over.skipped] == [6]
    assert [v.content_id for v in together.verdicts] == ["a", "b"]
    assert [v.content_id for v in one.verdicts + two.verdicts] == ["c", "d"]
    assert [v.content_id for v in later.verdicts] == ["e"]
    assert retried.verdicts == [] and [r.offset for r in retried.skipped] == [5]
    assert sorted(v.content_id for v in sink.verdicts) == ["a", "b", "c", "d", "e"]


async def test_a_stopping_worker_refuses_classify_requests_but_finishes_the_stream(
        opennsfw: Any, image_root: Path, sample_photos: list[Path]) -> None:
    """The stop's first step: a request being decoded fails at once (the web server's stop waits for its
    handlers), so does a new one; the stream is untouched until close."""
    classifier = SlowDecodeClassifier(opennsfw, 2.0)
    processor, _, _ = make_processor(classifier, image_root)
    request = asyncio.create_task(processor.classify(data=sample_photos[0].read_bytes()))
    await asyncio.to_thread(classifier.decoding.wait, 10)
    started = time.monotonic()
    processor.refuse_requests()
    with pytest.raises(ServiceUnavailableError, match="stopping"):
        await request
    assert time.monotonic() - started < 1.0 and processor.closed
    with pytest.raises(ServiceUnavailableError, match="stopping"):
        await processor.classify(data=sample_photos[1].read_bytes())
    classifier.delay_s = 0.0
    outcome = await processor.process(messages([file_ref(image_root, sample_photos[1].name)]))
    await processor.close()
    assert [v.content_id for v in outcome.verdicts] == ["c0"]


async def test_deeply_nested_json_is_an_invalid_json_dead_letter(opennsfw: Any, image_root: Path,
                                                                  sample_photos: list[Path]) -> None:
    """JSON nested deeper than the parser's recursion limit raised RecursionError (not a ValueError): from
    the parse, and again from the dead letter's id recovery, out of the error path itself."""
    processor, sink, _ = make_processor(opennsfw, image_root)
    nested = b"[" * 200_000 + b"]" * 200_000
    in_object = b'{"event_id": "e9", "content_id": "c9", "image_ref": "x", "metadata": ' + b'{"a":' * 100_000 + b"1" + \
        b"}" * 100_001
    good = messages([file_ref(image_root, sample_photos[0].name)], start=2)
    outcome = await processor.process(messages([nested, in_object]) + good)
    await processor.close()
    assert [(d.source_offset, d.reason) for d in outcome.dead_letters] == [(0, "invalid_json"), (1, "invalid_json")]
    assert "nested too deeply" in outcome.dead_letters[0].message
    assert [v.content_id for v in outcome.verdicts] == ["c2"] and len(sink.dead_letters) == 2


async def test_a_front_half_that_dies_stops_the_runner_instead_of_holding_its_event(
        opennsfw: Any, image_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last guard behind the one above: when even the internal_error dead letter cannot be built (a bug;
    the recursion-limit payload was one), the event's future fails with a fatal error at once instead of
    staying unanswered (its offset holding the partition's commits, its slot gone) while the worker goes on."""
    import vitguard.pipeline.runtime.intake as intake_module
    from vitguard.pipeline.runtime.front import FrontHalf

    async def broken_screen(self: Any, items: Any) -> Any:
        raise RuntimeError("a bug in the front half")

    def broken_dead_letter(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in the error path")

    monkeypatch.setattr(FrontHalf, "screen", broken_screen)
    monkeypatch.setattr(intake_module, "dead_letter", broken_dead_letter)
    processor, _, _ = make_processor(opennsfw, image_root)
    fut = await processor.submit(messages([b"{}"])[0])
    with pytest.raises(FatalError, match="front-half task died"):
        await asyncio.wait_for(fut, 10)
    assert processor.health.fatal is not None
    await processor.close()


async def test_a_policy_decides_which_near_duplicates_of_its_items_alert(opennsfw: Any, image_root: Path,
                                                                         sample_photos: list[Path]) -> None:
    """Issue 32: clusters are the fleet's; whether a near-duplicate alerts is the item's policy's say."""
    processor, _, _ = make_processor(opennsfw, image_root, policy={"wave_threshold": 50})
    assert processor.policies.offer("""
version: n1
categories: {all: [NSFW, SFW]}
default_policy: alerting
policies:
  alerting: {rules: {all: [{threshold: 0.0, action: block}]}}
  quiet: {rules: {all: [{threshold: 0.0, action: block}]}, near_duplicates: {alert: false}}
  strict-match: {rules: {all: [{threshold: 0.0, action: block}]}, near_duplicates: {min_similarity: 0.9999}}
tenants: {quiet-tenant: quiet, exact-tenant: strict-match}
""", source="test")
    seed = await processor.process(messages([file_ref(image_root, sample_photos[0].name)]))
    assert seed.verdicts[0].label == "unsafe" and not seed.alerts

    copies = ["dup-resized.jpg", "dup-cropped.jpg", "dup-reencoded.jpg"]
    tenants = ["acme", "quiet-tenant", "exact-tenant"]
    outcome = await processor.process(tenant_messages(image_root, list(zip(copies, tenants, strict=True)), start=10))
    await processor.close()
    by_id = {v.content_id: v for v in outcome.verdicts}
    assert len({by_id[c].cluster_id for c in ("c10", "c11", "c12")} | {seed.verdicts[0].cluster_id}) == 1
    assert [a.content_id for a in outcome.alerts] == ["c10"]  # quiet: none; exact: its copy is not that close


async def test_a_cache_hit_for_a_tenant_with_other_rules_is_judged_and_stored_under_them(
    opennsfw: Any, image_root: Path, sample_photos: list[Path]
) -> None:
    """Issue 32: the verdict cache holds the model's answer; a hit is judged under its own event's policy, and
    the copy stored for it carries that judgement (a search by label or a retro-hunt sees it as it was judged)."""
    processor, _, index = make_processor(opennsfw, image_root)
    assert processor.policies.offer("""
version: c1
default_policy: lenient
policies:
  lenient: {rules: {sexual: [{threshold: 1.0, action: block}]}}
  strict: {rules: {sexual: [{threshold: 0.0, action: block}]}}
tenants: {kids: strict}
""", source="test")
    ref = file_ref(image_root, sample_photos[0].name)
    first = await processor.process(messages([ref]))
    again = [RawMessage(value=ImageEvent(event_id="e9", content_id="c9", image_ref=ref, tenant="kids")
                        .model_dump_json().encode(), key=b"c9", topic="in", partition=0, offset=9)]
    second = await processor.process(again)
    await processor.close()
    (lenient,), (strict,) = first.verdicts, second.verdicts
    assert (lenient.label, lenient.action, lenient.policy) == ("safe", "allow", "lenient")
    assert strict.from_cache and (strict.label, strict.action, strict.policy) == ("unsafe", "block", "strict")
    assert strict.unsafe_score == lenient.unsafe_score and strict.scores == lenient.scores
    stored = index.records(processor.collection)
    assert (stored["c0"].label, stored["c9"].label) == ("safe", "unsafe")


async def test_each_policy_judges_waves_by_its_own_rule_on_the_fleets_cluster(opennsfw: Any, image_root: Path,
                                                                             sample_photos: list[Path]) -> None:
    """Issue 32: a policy's wave rule (threshold, window, whether it alerts) decides when the cluster is a wave for
    its items; the counts are the fleet's, and each policy with a rule has its own cooldown."""
    processor, _, _ = make_processor(opennsfw, image_root, policy={"wave_threshold": 50})
    assert processor.policies.offer("""
version: w1
categories: {all: [NSFW, SFW]}
default_policy: calm
policies:
  calm: {rules: {all: [{threshold: 0.0, action: block}]}}
  kids: {rules: {all: [{threshold: 0.0, action: block}]}, waves: {threshold: 3, window_s: 60, cooldown_s: 600}}
  mute: {rules: {all: [{threshold: 0.0, action: block}]}, waves: {threshold: 3, alert: false}}
tenants: {kids-app: kids, mute-app: mute}
""", source="test")
    uploads = [("dup-original.jpg", "acme"), ("dup-resized.jpg", "kids-app"), ("dup-cropped.jpg", "kids-app"),
               ("dup-reencoded.jpg", "kids-app"), ("dup-crop-resize.jpg", "mute-app"), ("dup-original.jpg", "acme")]
    outcome = await processor.process(tenant_messages(image_root, uploads))
    await processor.close()
    assert len({v.cluster_id for v in outcome.verdicts}) == 1
    got = [(a.content_id, a.severity, a.wave_count, a.wave_window_s, a.policy) for a in outcome.alerts]
    assert got == [
        ("c1", "warning", 2, 60, "kids"),  # 2 of kids' 3: half-way
        ("c2", "critical", 3, 60, "kids"),  # a wave for kids (the fleet's threshold is 50)
        ("c5", "info", 6, 600, "calm"),  # 6 of the fleet's 50: a lone near-duplicate for calm
    ]
    assert outcome.suppressed_alerts == 1  # c3: kids' cooldown; c4 (mute) is a wave that raises no alert
