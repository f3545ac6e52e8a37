"""The demo's animated GIF and short video: a hidden flagged frame, and two bad videos."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitguard.demo.samples import make_sample_set
from vitguard.media import FrameLimits, expand_frames
from vitguard.model import load_classifier


@pytest.mark.slow  # runs the demo's media pass
def test_demo_media_hide_the_flagged_photo_in_the_middle(tmp_path: Path) -> None:
    samples = make_sample_set(tmp_path, photos=3, copies=1, burst=0, media=True)
    kinds = [e.kind for e in samples.events]
    assert {"animation", "video", "bad:corrupt_video", "bad:unsupported_codec"} <= set(kinds)
    assert "animation" not in [e.kind for e in make_sample_set(tmp_path / "plain", photos=3, copies=1, burst=0).events]
    classifier = load_classifier("opennsfw")
    frames = expand_frames((tmp_path / "clip-hidden.gif").read_bytes(), FrameLimits(), classifier.prepare_image)
    assert frames is not None and len(frames) == 9
    scores = [p.scores["NSFW"] for p in classifier.predict(frames.tensors)]
    assert max(range(9), key=scores.__getitem__) == 4  # the flagged photo, hidden in frame 4
