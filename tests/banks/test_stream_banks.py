"""Hash banks in the stream: a banked photo's verdict carries the match, a force_unsafe bank makes it unsafe,
a bank-match alert is published, negative banks keep items out of clustering, /classify shows the same."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from PIL import Image

from tests.pipeline.conftest import jpeg, near_duplicates
from tests.pipeline.test_runner import file_ref, make_processor, messages
from vitguard.banks import Bank, BankEntry, BankMatcher, MemoryBankStore, PdqSignal, build_snapshot


def _matcher(sample_photos: list[Path]) -> BankMatcher:
    store = MemoryBankStore()
    store.create_bank(Bank(name="known-bad", action="force_unsafe"))
    store.create_bank(Bank(name="cleared", kind="negative"))
    store.add_entries([
        BankEntry(bank="known-bad", entry_id="kb-1", signal=PdqSignal.hash_bytes(sample_photos[0].read_bytes()).hex),
        BankEntry(bank="cleared", entry_id="ok-1", signal=PdqSignal.hash_bytes(sample_photos[1].read_bytes()).hex),
    ])
    return BankMatcher(build_snapshot(store.read()))


async def test_stream_verdicts_alerts_and_classify_carry_bank_matches(
    opennsfw: Any, image_root: Path, sample_photos: list[Path]
) -> None:
    processor, sink, index = make_processor(opennsfw, image_root, policy={"near_duplicate_threshold": 0.5})
    processor.completer.matcher = _matcher(sample_photos)
    (image_root / "resized-copy.jpg").write_bytes(near_duplicates(sample_photos[0])["resized"])
    for i in (1, 2):
        (image_root / f"photo-{i}.jpg").write_bytes(jpeg(Image.open(sample_photos[i]), quality=95))
    refs = [file_ref(image_root, "resized-copy.jpg"), file_ref(image_root, "photo-1.jpg"),
            file_ref(image_root, "photo-2.jpg")]
    outcome = await processor.process(messages(refs))
    by_id = {v.content_id: v for v in outcome.verdicts}

    banked = by_id["c0"]
    assert banked.label == "unsafe" and banked.label_source == "bank"
    assert [(m.bank, m.entry_id) for m in banked.bank_matches] == [("known-bad", "kb-1")]
    assert banked.pdq_hash is not None and banked.pdq_quality is not None and banked.pdq_quality >= 50
    (alert,) = sink.bank_alerts
    assert (alert.content_id, alert.action_taken, alert.severity) == ("c0", "force_unsafe", "critical")

    cleared = by_id["c1"]
    assert cleared.bank_matches[0].negative and cleared.cluster_id is None
    assert (cleared.label, cleared.label_source) == ("safe", "bank")  # a negative bank allows
    assert by_id["c2"].bank_matches == [] and by_id["c2"].pdq_hash is not None

    verdict = await processor.classify(data=(image_root / "resized-copy.jpg").read_bytes(), content_id="req-1")
    assert verdict.label == "unsafe" and [m.entry_id for m in verdict.bank_matches] == ["kb-1"]
    await processor.close()


async def test_every_sampled_frame_of_a_video_and_an_animation_is_matched_and_the_match_names_its_frame(
    opennsfw: Any, image_root: Path, sample_photos: list[Path]
) -> None:
    from vitguard.testing.media import animated_image, photo_frames, video_bytes

    processor, sink, _ = make_processor(opennsfw, image_root)
    banked = Image.open(sample_photos[0]).convert("RGB").resize((320, 240))
    store = MemoryBankStore()
    store.create_bank(Bank(name="known-bad", action="force_unsafe"))
    store.add_entries([BankEntry(bank="known-bad", entry_id="kb-1", signal=PdqSignal.hash_image(banked).hex)])
    processor.completer.matcher = BankMatcher(build_snapshot(store.read()))
    frames = photo_frames(Image.open(sample_photos[2]), 9, hidden=banked, hidden_at=6, size=(320, 240))
    (image_root / "clip.mp4").write_bytes(video_bytes(frames, fps=3))
    (image_root / "loop.gif").write_bytes(animated_image(frames))
    (image_root / "clean.gif").write_bytes(animated_image(frames[:5]))
    outcome = await processor.process(messages([file_ref(image_root, n) for n in ("clip.mp4", "loop.gif",
                                                                                  "clean.gif")]))
    by_id = {v.content_id: v for v in outcome.verdicts}
    for cid in ("c0", "c1"):
        v = by_id[cid]
        assert v.media is not None and v.media.frames_classified >= 3
        assert [(m.entry_id, m.frame) for m in v.bank_matches] == [("kb-1", 6)], cid  # one match, its frame
        assert v.label == "unsafe" and v.label_source == "bank"
        assert v.pdq_hash is not None and PdqSignal.distance(v.pdq_hash, PdqSignal.hash_image(banked).hex) <= 31
    clean = by_id["c2"]
    assert clean.bank_matches == [] and clean.pdq_hash is not None
    assert sorted(a.content_id for a in sink.bank_alerts) == ["c0", "c1"]
    await processor.close()


def test_a_video_whose_frames_all_match_counts_once_towards_the_flood_guard() -> None:
    from vitguard.banks import FloodRule
    from vitguard.banks.signal import PdqHash
    from vitguard.pipeline.stages.match import match_items

    store = MemoryBankStore()
    store.create_bank(Bank(name="known-bad", action="force_unsafe"))
    hash_hex = "f8f8" * 16
    store.add_entries([BankEntry(bank="known-bad", entry_id="kb-1", signal=hash_hex)])
    matcher = BankMatcher(build_snapshot(store.read()), flood=FloodRule(min_matches=3), clock=lambda: 0.0)
    import random

    from tests.banks.conftest import flip

    rng = random.Random(7)

    def video() -> list[tuple[int, PdqHash]]:  # ten frames, all one image near the entry (a different one each)
        frame = PdqHash(flip(hash_hex, 24, rng), 100)
        return [(k, frame) for k in range(10)]

    [(rep, matches)] = match_items(matcher, [video()])
    assert [(m.entry_id, m.frame, m.quarantined) for m in matches] == [("kb-1", 0, False)] and rep is not None
    [(_, again)], [(_, third)] = match_items(matcher, [video()]), match_items(matcher, [video()])
    assert not again[0].quarantined and third[0].quarantined  # the third *item* floods, not the third frame


async def test_a_cached_verdict_is_matched_against_the_banks_as_they_are_now(
    opennsfw: Any, image_root: Path, sample_photos: list[Path]
) -> None:
    """The verdict cache keeps the model's verdict and the PDQ hash: an image seen before its hash was banked
    is matched when it comes again, and one whose entry was removed is the model's again."""
    processor, _, _ = make_processor(opennsfw, image_root)
    (image_root / "photo.jpg").write_bytes(sample_photos[0].read_bytes())
    ref = file_ref(image_root, "photo.jpg")
    hash_hex = PdqSignal.hash_bytes(sample_photos[0].read_bytes()).hex
    store = MemoryBankStore()
    store.create_bank(Bank(name="known-bad", action="force_unsafe"))
    processor.completer.matcher = matcher = BankMatcher(build_snapshot(store.read()))

    (first,) = (await processor.process(messages([ref], start=0))).verdicts
    assert not first.from_cache and first.bank_matches == [] and first.label_source == "model"
    store.add_entries([BankEntry(bank="known-bad", entry_id="kb-1", signal=hash_hex)])
    matcher.update(build_snapshot(store.read()))
    (second,) = (await processor.process(messages([ref], start=1))).verdicts
    assert second.from_cache and [m.entry_id for m in second.bank_matches] == ["kb-1"]
    assert (second.label, second.label_source) == ("unsafe", "bank")
    store.remove_entries("known-bad", ["kb-1"])
    matcher.update(build_snapshot(store.read()))
    (third,) = (await processor.process(messages([ref], start=2))).verdicts
    assert third.from_cache and third.bank_matches == []
    assert (third.label, third.label_source) == (first.label, "model")
    await processor.close()


async def test_a_cached_video_is_matched_on_every_frame_and_an_overturned_item_stays_out_of_waves(
    opennsfw: Any, image_root: Path, sample_photos: list[Path]
) -> None:
    """A video's cache entry once kept its verdict's one hash: a frame banked after the first upload went
    unmatched on every re-upload for the cache's lifetime. And a cached unsafe item cleared since (negative
    bank) went on counting towards waves and near-duplicate alerts."""
    from vitguard.testing.media import photo_frames, video_bytes

    processor, sink, _ = make_processor(opennsfw, image_root, policy={"unsafe_threshold": 0.0})  # all unsafe
    banked = Image.open(sample_photos[0]).convert("RGB").resize((320, 240))
    frames = photo_frames(Image.open(sample_photos[2]), 9, hidden=banked, hidden_at=6, size=(320, 240))
    (image_root / "clip.mp4").write_bytes(video_bytes(frames, fps=3))
    (image_root / "twin.jpg").write_bytes(jpeg(Image.open(sample_photos[1]), quality=95))
    (image_root / "twin-copy.jpg").write_bytes(jpeg(Image.open(sample_photos[1]), quality=90))
    store = MemoryBankStore()
    store.create_bank(Bank(name="known-bad", action="force_unsafe"))
    store.create_bank(Bank(name="cleared", kind="negative"))
    processor.completer.matcher = matcher = BankMatcher(build_snapshot(store.read()))
    refs = [file_ref(image_root, n) for n in ("clip.mp4", "twin.jpg", "twin-copy.jpg")]

    first = {v.content_id: v for v in (await processor.process(messages(refs, start=0))).verdicts}
    frame_hex = PdqSignal.hash_image(banked).hex
    assert first["c0"].bank_matches == [] and first["c0"].pdq_hash is not None
    assert PdqSignal.distance(first["c0"].pdq_hash, frame_hex) > 31  # the verdict's hash is another frame's
    assert first["c2"].cluster_id == first["c1"].cluster_id is not None
    alerts_before = len(sink.alerts)

    store.add_entries([BankEntry(bank="known-bad", entry_id="kb-1", signal=frame_hex),
                       BankEntry(bank="cleared", entry_id="ok-1", signal=first["c2"].pdq_hash or "")])
    matcher.update(build_snapshot(store.read()))
    again = {v.content_id: v for v in (await processor.process(messages(refs[:1] + refs[2:], start=10))).verdicts}
    video, copy = again["c10"], again["c11"]
    assert video.from_cache and [(m.entry_id, m.frame) for m in video.bank_matches] == [("kb-1", 6)]
    assert (video.label, video.label_source) == ("unsafe", "bank")
    assert copy.from_cache and copy.bank_matches[0].negative
    assert "c11" not in {a.content_id for a in sink.alerts[alerts_before:]}  # the cleared copy raised none
    await processor.close()


async def test_one_decode_feeds_the_model_and_the_hash_and_no_banks_means_no_hashing(
    opennsfw: Any, sample_photos: list[Path]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from vitguard.pipeline.results import Decoded, Fetched, Parsed, StageTimes
    from vitguard.pipeline.stages.decode import decode_image
    from vitguard.pipeline.types import RawMessage
    from vitguard.schemas.events import ImageEvent

    data = sample_photos[0].read_bytes()
    event = ImageEvent(event_id="e1", content_id="c1", image_ref="https://example.test/x")
    fetched = Fetched(Parsed(RawMessage(b"{}", None, "in", 0, 0), event), data, "0" * 64, "http", StageTimes())
    with ThreadPoolExecutor(2) as pool:
        hashed = await decode_image(fetched, opennsfw, pool)
        unhashed = await decode_image(fetched, opennsfw, pool, hash_pdq=False)
        assert isinstance(hashed, Decoded) and isinstance(unhashed, Decoded)
        pdq, no_pdq = await hashed.hash(), await unhashed.hash()
    assert np.array_equal(hashed.tensor, opennsfw.prepare(data))  # the same tensor as the model's own decode
    assert pdq is not None and pdq.hex == PdqSignal.hash_image(opennsfw.preprocessor.decode(data)).hex
    assert PdqSignal.distance(pdq.hex, PdqSignal.hash_bytes(data).hex) <= 12  # close to a full-size hash
    assert no_pdq is None and np.array_equal(unhashed.tensor, opennsfw.prepare(data))


async def test_with_the_banks_off_nothing_is_hashed(opennsfw: Any, image_root: Path, sample_photos: list[Path]) -> None:
    processor, _, _ = make_processor(opennsfw, image_root)
    processor.front.hash_pdq = False
    (image_root / "photo.jpg").write_bytes(sample_photos[0].read_bytes())
    (verdict,) = (await processor.process(messages([file_ref(image_root, "photo.jpg")]))).verdicts
    assert verdict.pdq_hash is None and verdict.bank_matches == []
    await processor.close()


async def test_classify_requests_report_bank_matches_but_never_feed_the_flood_guard(
    opennsfw: Any, image_root: Path, sample_photos: list[Path]
) -> None:
    """Issue 28: fifty POST /classify calls with copies of a banked image quarantined its force_unsafe entry,
    after which a stream upload of the same image got the model's label (alert 'suspended') for an hour:
    anyone who can call the HTTP API could switch a bank entry off. Requests now read the guard, never count."""
    from vitguard.banks import FloodRule

    processor, sink, _ = make_processor(opennsfw, image_root)
    matcher = _matcher(sample_photos)
    matcher.flood = type(matcher.flood)(FloodRule(min_matches=3))
    processor.completer.matcher = matcher
    banked = sample_photos[0].read_bytes()
    for i in range(10):
        verdict = await processor.classify(data=banked, content_id=f"req-{i}")
        assert verdict.label == "unsafe" and [(m.entry_id, m.quarantined) for m in verdict.bank_matches] == [
            ("kb-1", False)]
    assert matcher.flood.quarantined_keys(time.time()) == []  # ten requests, nothing counted
    (image_root / "upload.jpg").write_bytes(banked)
    outcome = await processor.process(messages([file_ref(image_root, "upload.jpg")]))
    (verdict,) = outcome.verdicts
    assert verdict.label == "unsafe" and verdict.label_source == "bank"  # the entry still forces unsafe
    assert [a.action_taken for a in sink.bank_alerts] == ["force_unsafe"]
    await processor.close()


async def test_a_tenants_policy_decides_what_each_bank_does_for_its_items(
    opennsfw: Any, image_root: Path, sample_photos: list[Path]
) -> None:
    """Issue 32: one fleet, one set of banks; a policy may ignore a bank or turn its force_unsafe into flag_only."""
    from vitguard.pipeline.types import RawMessage
    from vitguard.schemas.events import ImageEvent

    processor, sink, _ = make_processor(opennsfw, image_root)
    processor.completer.matcher = _matcher(sample_photos)
    assert processor.policies.offer("""
version: b1
default_policy: standard
policies:
  standard: {rules: {sexual: [{threshold: 0.5, action: block}]}}
  community:
    rules: {sexual: [{threshold: 0.5, action: block}]}
    banks: {known-bad: flag_only, cleared: ignore}
tenants: {community: community}
""", source="test")
    for i in (0, 1):
        (image_root / f"photo-{i}.jpg").write_bytes(jpeg(Image.open(sample_photos[i]), quality=95))
    events = [(f"photo-{i}.jpg", tenant) for tenant in ("acme", "community") for i in (0, 1)]
    raws = [RawMessage(value=ImageEvent(event_id=f"e{n}", content_id=f"c{n}", tenant=tenant,
                                        image_ref=file_ref(image_root, name)).model_dump_json().encode(),
                       key=f"c{n}".encode(), topic="in", partition=0, offset=n)
            for n, (name, tenant) in enumerate(events)]
    by_id = {v.content_id: v for v in (await processor.process(raws)).verdicts}
    banked, cleared, flagged, ignored = (by_id[f"c{n}"] for n in range(4))
    assert (banked.label, banked.label_source, banked.action) == ("unsafe", "bank", "block")
    assert (cleared.label, cleared.label_source, cleared.action) == ("safe", "bank", "allow")
    assert [(m.bank, m.action) for m in flagged.bank_matches] == [("known-bad", "flag_only")]
    assert flagged.label_source == "model" and flagged.policy == "community"
    assert ignored.bank_matches == [] and ignored.label_source == "model"
    assert sorted((a.content_id, a.action_taken) for a in sink.bank_alerts) == [
        ("c0", "force_unsafe"), ("c2", "flag_only")]
    await processor.close()
