"""vitguard as a diffusers safety checker (vitguard.integrations.diffusers), offline: a tiny StableDiffusion
pipeline built from random configs runs end to end with it; its call contract is the stock checker's; flagged
images are replaced (black or blurred) and the rest untouched; hash banks flag as they do for uploads; with a
publisher, every generated image is published as an upload event to a real broker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitguard.banks import Bank, BankEntry, BankMatcher, MemoryBankStore, build_snapshot
from vitguard.banks.signal import PdqSignal
from vitguard.integrations.diffusers import VitguardSafetyChecker
from vitguard.kafka.reader import read_to_end
from vitguard.model import load_classifier
from vitguard.schemas.events import parse_image_event
from vitguard.settings import PolicySettings
from vitguard.testing.diffusion import generate, stock_safety_checker, tiny_pipeline

pytestmark = pytest.mark.slow  # builds diffusion pipelines and runs open_nsfw

NEVER = 1.01  # no unsafe score reaches it
ALWAYS = 0.0


@pytest.fixture(scope="module")
def classifier():  # type: ignore[no-untyped-def]
    return load_classifier("opennsfw")


def checker(classifier, threshold: float, **kw) -> VitguardSafetyChecker:  # type: ignore[no-untyped-def]
    return VitguardSafetyChecker(classifier, policy=PolicySettings(), threshold=threshold, **kw)


def test_a_pipeline_with_the_checker_blacks_out_what_it_flags_and_leaves_the_rest(classifier) -> None:  # type: ignore[no-untyped-def]
    plain = generate(tiny_pipeline(None), 3)
    flagging = checker(classifier, ALWAYS)
    flagged = generate(tiny_pipeline(flagging), 3)
    assert flagged.nsfw_content_detected == [True, True, True]
    assert all(np.asarray(img).max() == 0 for img in flagged.images)  # black, as the stock checker does
    assert len(flagging.last_verdicts) == 3 and all(v.label == "unsafe" for v in flagging.last_verdicts)

    passing = checker(classifier, NEVER)
    kept = generate(tiny_pipeline(passing), 3)
    assert kept.nsfw_content_detected == [False, False, False]
    for mine, theirs in zip(kept.images, plain.images, strict=True):
        assert np.array_equal(np.asarray(mine), np.asarray(theirs))  # untouched, pixel for pixel
    scores = [v.unsafe_score for v in passing.last_verdicts]
    assert scores == [v.unsafe_score for v in flagging.last_verdicts]  # one model, one policy: only the line moved


def test_the_call_contract_is_the_stock_checkers() -> None:
    stock = stock_safety_checker()
    mine = checker(load_classifier("opennsfw"), NEVER)
    clip_input = torch.rand(2, 3, 32, 32)
    tensor = torch.rand(2, 3, 64, 64) * 2 - 1
    array = np.random.default_rng(0).random((2, 64, 64, 3)).astype(np.float32)
    for images in (tensor, array):
        theirs_images, theirs_flags = stock(images=_copy(images), clip_input=clip_input)
        my_images, my_flags = mine(images=_copy(images), clip_input=clip_input)
        assert type(my_images) is type(theirs_images)
        assert tuple(my_images.shape) == tuple(theirs_images.shape) and my_images.dtype == theirs_images.dtype
        assert isinstance(my_flags, list) and len(my_flags) == len(theirs_flags) == 2
        assert all(isinstance(f, bool) for f in my_flags + theirs_flags)


def _copy(images):  # type: ignore[no-untyped-def]
    return images.clone() if isinstance(images, torch.Tensor) else images.copy()


def _photos(sample_photos: list[Path]) -> list[Image.Image]:
    return [Image.open(p).convert("RGB").resize((160, 160)) for p in sample_photos[:4]]


def test_one_batch_one_verdict_each_and_only_the_flagged_image_replaced(classifier, sample_photos: list[Path]) -> None:  # type: ignore[no-untyped-def]
    photos = _photos(sample_photos)
    scores = [v.unsafe_score for v in checker(classifier, NEVER).check(photos).verdicts]
    top = int(np.argmax(scores))
    line = (scores[top] + sorted(scores)[-2]) / 2  # only the highest-scoring photo is at or above it
    for replacement in ("black", "blur"):
        result = checker(classifier, line, replacement=replacement).check(photos)
        assert result.has_nsfw_concepts == [i == top for i in range(len(photos))], (scores, line)
        for i, (before, after) in enumerate(zip(photos, result.images, strict=True)):
            pixels, original = np.asarray(after, dtype=np.float32), np.asarray(before, dtype=np.float32)
            if i != top:
                assert after is before
            elif replacement == "black":
                assert pixels.max() == 0
            else:  # blurred: not the photo, not black, its colours kept on average
                assert np.abs(pixels - original).mean() > 5 and abs(pixels.mean() - original.mean()) < 8
    ids = [v.content_id for v in result.verdicts]
    assert len(set(ids)) == len(ids) and all(i.startswith("gen-") for i in ids)


def test_a_force_unsafe_bank_entry_flags_an_image_the_model_passes(classifier, sample_photos: list[Path]) -> None:  # type: ignore[no-untyped-def]
    photos = _photos(sample_photos)
    known = PdqSignal.hash_pixels(np.asarray(photos[1]))
    store = MemoryBankStore()
    store.create_bank(Bank(name="known-bad", action="force_unsafe"))
    store.add_entries([BankEntry(bank="known-bad", entry_id="e1", signal=known.hex)])
    banked = checker(classifier, NEVER, banks=BankMatcher(build_snapshot(store.read())))
    result = banked.check(photos)
    assert result.has_nsfw_concepts == [False, True, False, False]
    verdict = result.verdicts[1]
    assert (verdict.label, verdict.label_source, verdict.pdq_hash) == ("unsafe", "bank", known.hex)
    assert [(m.bank, m.entry_id, m.distance) for m in verdict.bank_matches] == [("known-bad", "e1", 0)]


def test_with_a_publisher_every_generated_image_is_an_upload_event(
    classifier, kafka_bootstrap: str, new_topic: Callable[..., str]  # type: ignore[no-untyped-def]
) -> None:
    from vitguard.producers.publisher import UploadEventPublisher
    from vitguard.settings import load_settings

    kafka = load_settings(kafka={"bootstrap_servers": kafka_bootstrap}).kafka
    topic = new_topic(1, "generated")
    publisher = UploadEventPublisher(kafka, topic)
    streaming = checker(classifier, NEVER, publisher=publisher, tenant="imagegen")
    out = generate(tiny_pipeline(streaming), 2)
    publisher.close()
    events = [parse_image_event(r.value or b"") for r in read_to_end(kafka, topic)]
    assert [e.content_id for e in events] == [v.content_id for v in streaming.last_verdicts]
    assert all(e.tenant == "imagegen" and e.metadata == {"source": "diffusers"} for e in events)
    import base64
    import io

    for event, image in zip(events, out.images, strict=True):  # the pixels the pipeline returned, losslessly
        data = base64.b64decode(event.image_ref.split(",", 1)[1])
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), np.asarray(image))


def test_the_policy_document_in_force_judges_by_tenant_or_by_name(classifier, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Issue 32: without an explicit threshold the checker judges under the document of VITGUARD_POLICY_FILE."""
    doc = tmp_path / "policies.yaml"
    doc.write_text("version: g1\ndefault_policy: open\npolicies:\n"
                   "  open: {rules: {sexual: [{threshold: 1.0, action: block}]}}\n"
                   "  strict: {rules: {sexual: [{threshold: 0.0, action: blur}]}}\n"
                   "tenants: {kids: strict}\n")
    images = [Image.new("RGB", (64, 64), (i * 40, 90, 200)) for i in range(2)]
    settings = PolicySettings(file=doc)
    by_tenant = VitguardSafetyChecker(classifier, policy=settings, tenant="kids").check(images)
    assert by_tenant.has_nsfw_concepts == [True, True]
    assert {(v.policy, v.policy_version, v.action) for v in by_tenant.verdicts} == {("strict", "g1", "blur")}
    default = VitguardSafetyChecker(classifier, policy=settings).check(images)
    assert default.has_nsfw_concepts == [False, False] and default.verdicts[0].policy == "open"
    named = VitguardSafetyChecker(classifier, policy=settings, policy_name="strict").check(images)
    assert named.has_nsfw_concepts == [True, True]
    with pytest.raises(ValueError, match="no such policy"):
        VitguardSafetyChecker(classifier, policy=settings, policy_name="nobody")
