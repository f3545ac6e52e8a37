"""Reviewed items as a labelled image folder: the layout ``vitguard finetune`` reads (``DATA/<label>/*``).

Each item's latest decision gives its label (``confirm_unsafe`` -> the unsafe class, ``overturn_safe`` ->
the safe class); its image is fetched through the same SSRF-guarded fetcher and limits as the worker's,
from the reference in its review request. A ``manifest.jsonl`` records, per file, the decision it came
from. Exporting again into the same folder is safe: an item whose label changed moves to its new class.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from vitguard.errors import FetchError
from vitguard.fetch import ImageFetcher
from vitguard.schemas.review import ReviewDecision, ReviewRequest

__all__ = ["ExportReport", "export_dataset", "file_stem", "latest_decisions"]

_FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


@dataclass
class ExportReport:
    """What an export wrote, per class, and what it left out (content id -> reason code)."""

    written: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def file_stem(content_id: str) -> str:
    """A file name for a content id: readable, file-system safe, and unique (a hash suffix)."""
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", content_id)[:80].lstrip(".") or "item"
    return f"{readable}-{hashlib.sha1(content_id.encode(), usedforsecurity=False).hexdigest()[:10]}"


def latest_decisions(decisions: Iterable[ReviewDecision]) -> dict[str, ReviewDecision]:
    """Each item's most recent decision (by ``decided_at``)."""
    out: dict[str, ReviewDecision] = {}
    for d in decisions:
        prev = out.get(d.content_id)
        if prev is None or d.decided_at >= prev.decided_at:
            out[d.content_id] = d
    return out


async def export_dataset(
    decisions: Iterable[ReviewDecision],
    requests: Mapping[str, ReviewRequest],
    out_dir: Path,
    fetcher: ImageFetcher,
    *,
    unsafe_label: str = "NSFW",
    safe_label: str = "SFW",
) -> ExportReport:
    """Write ``out_dir/<label>/<item>.<ext>`` for each reviewed item whose image can still be fetched.

    Args:
        decisions: every decision (only each item's latest counts).
        requests: the latest review request per content id (for the image reference).
        out_dir: the dataset folder (created).
        fetcher: the SSRF-guarded fetcher, with its size limits and timeouts.
        unsafe_label: class folder of confirmed items; it must be one of the policy's unsafe labels for
            fine-tuning to treat it as unsafe.
        safe_label: class folder of overturned items.
    """
    if unsafe_label == safe_label:
        raise ValueError("the unsafe and the safe class need different names")
    for label in (unsafe_label, safe_label):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", label):
            raise ValueError(f"class name {label!r}: letters, digits and ._- only")
    report = ExportReport(written={unsafe_label: 0, safe_label: 0})
    manifest: list[dict[str, str]] = []
    for cid, decision in sorted(latest_decisions(decisions).items()):
        label = unsafe_label if decision.decision == "confirm_unsafe" else safe_label
        request = requests.get(cid)
        if request is None or request.image_ref is None:
            report.skipped[cid] = "no_image_ref"
            continue
        try:
            data = (await fetcher.fetch(request.image_ref)).data
        except FetchError as exc:
            report.skipped[cid] = exc.reason
            continue
        try:
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or ""
                img.verify()
        except Exception:  # any decoder error: the bytes are not an image Pillow can read
            report.skipped[cid] = "not_an_image"
            continue
        stem = file_stem(cid)
        for other in (unsafe_label, safe_label):  # a relabelled item leaves its old class
            for stale in (out_dir / other).glob(f"{stem}.*"):
                stale.unlink()
        target = out_dir / label / f"{stem}{_FORMAT_SUFFIX.get(fmt, '.img')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        report.written[label] += 1
        manifest.append({
            "file": str(target.relative_to(out_dir)), "content_id": cid, "label": label,
            "decision_id": decision.decision_id, "decision": decision.decision, "reviewer": decision.reviewer,
            "reason": decision.reason, "decided_at": decision.decided_at.isoformat(),
        })
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
    return report
