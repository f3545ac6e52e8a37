"""Decisions as the labelled folder `vitguard finetune` reads."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from PIL import Image
from review_values import T0, decision, request

from vitguard.fetch import ImageFetcher
from vitguard.finetune.data import scan_image_folder
from vitguard.review.dataset import export_dataset
from vitguard.settings import FetchSettings


async def test_latest_decision_labels_each_item_and_the_folder_scans(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    refs = {}
    for i, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200), (90, 90, 90)]):
        Image.new("RGB", (64, 48), colour).save(src / f"{i}.png")
        refs[f"up/{i}"] = (src / f"{i}.png").as_uri()
    requests = {cid: request(cid, image_ref=ref) for cid, ref in refs.items()}
    requests["gone"] = request("gone", image_ref=(src / "missing.png").as_uri())
    decisions = [
        decision("up/0", "confirm_unsafe"), decision("up/1", "confirm_unsafe"),
        decision("up/2", "confirm_unsafe"), decision("up/2", at=T0 + timedelta(hours=1)),  # changed its mind
        decision("up/3"), decision("gone"), decision("no-request"),
    ]
    out = tmp_path / "data"
    async with ImageFetcher(FetchSettings(file_root=src)) as fetcher:
        report = await export_dataset(decisions, requests, out, fetcher)
    assert report.written == {"NSFW": 2, "SFW": 2}
    assert report.skipped == {"gone": "fetch_not_found", "no-request": "no_image_ref"}
    folder = scan_image_folder(out)
    assert folder.labels == ("NSFW", "SFW") and folder.counts() == {"NSFW": 2, "SFW": 2}
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {m["content_id"]: m["label"] for m in manifest}["up/2"] == "SFW"
