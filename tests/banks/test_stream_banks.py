"""Hash banks in the stream: a banked photo's verdict carries the match, a force_unsafe bank makes it unsafe,
a bank-match alert is published, negative banks keep items out of clustering, /classify shows the same."""

from __future__ import annotations

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
    assert cleared.bank_matches[0].negative and cleared.label_source == "model" and cleared.cluster_id is None
    assert by_id["c2"].bank_matches == [] and by_id["c2"].pdq_hash is not None

    verdict = await processor.classify(data=(image_root / "resized-copy.jpg").read_bytes(), content_id="req-1")
    assert verdict.label == "unsafe" and [m.entry_id for m in verdict.bank_matches] == ["kb-1"]
    await processor.close()
