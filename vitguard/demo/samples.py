"""Sample events for the demo, the end-to-end tests and the benchmark: real photos, copies, bad events.

Photos come from scikit-image's bundled data (real photographs, all safe); when scikit-image is not
installed, procedurally drawn pictures stand in. One photo is the "flagged" one: its near-duplicates
(resized, cropped, re-encoded) and a burst of further copies show clustering and wave alerts once a
policy treats that family as unsafe. The bad events cover the reason codes that can be produced without
network access.
"""

from __future__ import annotations

import base64
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from vitguard.schemas.events import ImageEvent

__all__ = [
    "PHOTO_NAMES",
    "SAMPLE_MAX_INLINE_BYTES",
    "SampleEvent",
    "SampleSet",
    "bad_events",
    "inline_event",
    "make_sample_set",
    "media_events",
    "near_duplicate_variants",
    "photo_bytes",
]

PHOTO_NAMES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png",
               "hubble_deep_field.jpg", "immunohistochemistry.png")
"""scikit-image photos used, in order of preference; the first one is the flagged photo."""


SAMPLE_MAX_INLINE_BYTES = 64 * 1024
"""The inline-size limit (VITGUARD_FETCH_MAX_INLINE_BYTES) the demo and the tests run with, so that the
``inline_too_large`` sample stays small enough for a default-sized Kafka message."""


@dataclass(frozen=True)
class SampleEvent:
    """One message to publish: its key and value bytes, and what the demo expects of it."""

    key: bytes | None
    value: bytes
    kind: str
    """photo | near-duplicate | burst-copy | exact-reupload | redelivery | bad:<reason code>"""
    event_id: str | None = None
    content_id: str | None = None


@dataclass
class SampleSet:
    """The demo's events and the files they point at."""

    root: Path
    events: list[SampleEvent] = field(default_factory=list)
    flagged_files: list[Path] = field(default_factory=list)
    """The flagged photo and all its copies (the family a demo policy treats as unsafe)."""
    other_files: list[Path] = field(default_factory=list)

    @property
    def distinct_events(self) -> int:
        """Messages that must each get exactly one verdict or dead letter (redeliveries excluded)."""
        return sum(1 for e in self.events if e.kind != "redelivery")


def _jpeg(image: Image.Image, quality: int = 85) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def _drawn_photo(seed: int, size: int = 384) -> bytes:
    """A procedurally drawn picture: a gradient with random shapes (stand-in when scikit-image is absent)."""
    rng = random.Random(seed)  # noqa: S311 - pictures, not secrets
    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.randrange(size), rng.randrange(size)
        x1, y1 = x0 + rng.randrange(20, size // 2), y0 + rng.randrange(20, size // 2)
        color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=color)
    return _jpeg(image, 92)


def photo_bytes(count: int) -> list[tuple[str, bytes]]:
    """``count`` real photos (name, encoded bytes): scikit-image's, else drawn ones."""
    try:
        import skimage

        data_dir = Path(skimage.__file__).parent / "data"
        found = [(n, (data_dir / n).read_bytes()) for n in PHOTO_NAMES if (data_dir / n).exists()]
    except ImportError:
        found = []
    while len(found) < count:
        found.append((f"drawn-{len(found)}.jpg", _drawn_photo(len(found))))
    return found[:count]


def near_duplicate_variants(data: bytes, count: int = 4, seed: int = 0) -> list[tuple[str, bytes]]:
    """Copies a re-uploader makes: resized, mildly cropped, re-encoded, and mixes of those."""
    base = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = base.size
    fixed = [
        ("resized", _jpeg(base.resize((w * 3 // 5, h * 3 // 5)))),
        ("cropped", _jpeg(base.crop((w // 20, h // 20, w - w // 20, h - h // 20)))),
        ("reencoded", _jpeg(base, quality=40)),
        ("crop-resized", _jpeg(base.crop((w // 25, h // 30, w - w // 25, h - h // 30)).resize((320, 320)))),
    ]
    rng = random.Random(seed)  # noqa: S311
    out = fixed[:count]
    while len(out) < count:
        dx, dy = rng.randrange(w // 40 + 1), rng.randrange(h // 40 + 1)
        scale = rng.uniform(0.5, 0.9)
        copy = base.crop((dx, dy, w - dx, h - dy))
        copy = copy.resize((max(64, int(copy.width * scale)), max(64, int(copy.height * scale))))
        out.append((f"copy{len(out)}", _jpeg(copy, rng.randrange(50, 90))))
    return out


def _event(content_id: str, ref: str, kind: str, **extra: str) -> SampleEvent:
    event = ImageEvent(content_id=content_id, image_ref=ref, tenant="demo", metadata={"kind": kind, **extra})
    return SampleEvent(content_id.encode(), event.model_dump_json().encode(), kind, event.event_id, content_id)


def bad_events(root: Path) -> list[SampleEvent]:
    """One bad event per reason code that can be produced offline (the file root is ``root``).

    ``inline_too_large`` needs the fetch limit at :data:`SAMPLE_MAX_INLINE_BYTES`.
    """
    (root / "notes.txt").write_text("not an image, just text\n" * 20)
    tiny = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(tiny, "PNG")
    (root / "tiny.png").write_bytes(tiny.getvalue())
    bomb = io.BytesIO()  # 49 megapixels of one colour: ~50 KB of PNG, refused before it is decoded
    Image.new("L", (7000, 7000), 0).save(bomb, "PNG")
    (root / "bomb.png").write_bytes(bomb.getvalue())
    oversized = base64.b64encode(bytes(range(256)) * (SAMPLE_MAX_INLINE_BYTES // 256 + 64)).decode()
    events = [
        SampleEvent(b"bad-json", b'{"content_id": "bad-json", "image_ref": ', "bad:invalid_json"),
        # nested past the JSON decoder's recursion limit (a RecursionError, not a ValueError)
        SampleEvent(b"bad-nested", b'{"content_id": "bad-nested", "image_ref": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
                    "bad:invalid_json"),
        SampleEvent(b"bad-schema", json.dumps({"content_id": "bad schema!", "image_ref": "ftp://x/y.jpg"}).encode(),
                    "bad:schema_violation", content_id="bad schema!"),
    ]
    specs = [
        ("bad-outside-root", "file:///etc/hostname", "file_outside_root"),
        ("bad-missing", (root / "no-such-image.jpg").as_uri(), "fetch_not_found"),
        ("bad-not-image", (root / "notes.txt").as_uri(), "not_an_image"),
        ("bad-too-small", (root / "tiny.png").as_uri(), "image_too_small"),
        ("bad-metadata-ip", "http://169.254.169.254/latest/meta-data/", "fetch_blocked"),
        ("bad-loopback", "http://127.0.0.1:1/x.jpg", "fetch_blocked"),
        ("bad-base64", "data:image/png;base64,***not-base64***", "invalid_base64"),
        ("bad-bomb", (root / "bomb.png").as_uri(), "decompression_bomb"),
        ("bad-inline-size", f"data:image/png;base64,{oversized}", "inline_too_large"),
    ]
    for content_id, ref, reason in specs:
        sample = _event(content_id, ref, f"bad:{reason}")
        events.append(sample)
    return events


def make_sample_set(root: Path, *, photos: int = 6, copies: int = 4, burst: int = 6, bad: bool = True,
                    media: bool = False) -> SampleSet:
    """Write the demo images under ``root`` and build the events that point at them (``file://``).

    Events, in publish order: the photos, near-duplicates of the first photo, a burst of further copies
    (a wave), an exact re-upload of a photo under a new content id (a cache hit), a redelivery (the same
    event published twice), and bad events. With ``media``: also an animated GIF and a short MP4 that pan
    over the second photo with the flagged photo hidden in one frame in the middle, and two bad videos.
    """
    root.mkdir(parents=True, exist_ok=True)
    out = SampleSet(root)
    pictures = photo_bytes(photos)
    for i, (name, data) in enumerate(pictures):
        path = root / f"photo-{i}-{name}"
        path.write_bytes(data)
        (out.flagged_files if i == 0 else out.other_files).append(path)
        out.events.append(_event(f"photo-{i}", path.as_uri(), "photo", source=name))
    flagged_name, flagged = pictures[0]
    for j, (variant, data) in enumerate(near_duplicate_variants(flagged, copies + burst, seed=7)):
        path = root / f"copy-{j}-{variant}.jpg"
        path.write_bytes(data)
        out.flagged_files.append(path)
        kind = "near-duplicate" if j < copies else "burst-copy"
        out.events.append(_event(f"copy-{j}", path.as_uri(), kind, source=flagged_name, variant=variant))
    if len(pictures) > 1:
        out.events.append(_event("reupload-1", out.other_files[0].as_uri(), "exact-reupload"))
        first = out.events[1]
        out.events.append(SampleEvent(first.key, first.value, "redelivery", first.event_id, first.content_id))
    if bad:
        out.events.extend(bad_events(root))
    if media and len(pictures) > 1:
        out.events.extend(media_events(root, pictures[1][1], flagged, bad=bad))
    return out


def media_events(root: Path, base: bytes, hidden: bytes, *, bad: bool = True) -> list[SampleEvent]:
    """An animated GIF (9 frames, 0.1 s each) and a 4.5 s MP4 panning over ``base``, with ``hidden`` in the
    middle frame (GIF frame 4; video 2.0-2.5 s); with ``bad``, a cut-off MP4 and a video in a codec FFmpeg
    cannot decode."""
    from vitguard.testing.media import animated_image, photo_frames, truncated, unknown_codec_video, video_bytes

    frames = photo_frames(Image.open(io.BytesIO(base)), 9, hidden=Image.open(io.BytesIO(hidden)), size=(384, 288))
    files = [("clip-hidden.gif", animated_image(frames), "animation"),
             ("clip-hidden.mp4", video_bytes(frames, fps=10, repeat=5), "video")]
    if bad:
        files += [("clip-cut.mp4", truncated(video_bytes(frames)), "bad:corrupt_video"),
                  ("clip-alien.mkv", unknown_codec_video(frames), "bad:unsupported_codec")]
    events = []
    for name, data, kind in files:
        path = root / name
        path.write_bytes(data)
        events.append(_event(name.split(".")[0] + "-" + name.split(".")[1], path.as_uri(), kind))
    return events


def inline_event(content_id: str, data: bytes, mime: str = "image/jpeg") -> SampleEvent:
    """An event carrying its image inline (``data:`` URL)."""
    ref = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    return _event(content_id, ref, "inline")

