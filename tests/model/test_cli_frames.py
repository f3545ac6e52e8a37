"""``vitguard classify --json`` on animations and videos made from real photos: every frame listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vitguard.cli import main
from vitguard.testing.media import (
    HIDDEN_BASE,
    HIDDEN_PHOTO,
    HIDDEN_THRESHOLD,
    animated_image,
    photo_frames,
    truncated,
    video_bytes,
)


def test_classify_json_lists_frames_and_the_worst_is_the_hidden_one(
    tmp_path: Path, sample_photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    by_name = {p.name: p for p in sample_photos}
    clip = photo_frames(by_name[HIDDEN_BASE], 9, hidden=by_name[HIDDEN_PHOTO])
    (tmp_path / "clip.gif").write_bytes(animated_image(clip))
    (tmp_path / "clip.mp4").write_bytes(video_bytes(clip, repeat=5))
    (tmp_path / "cut.mp4").write_bytes(truncated(video_bytes(clip)))
    monkeypatch.setenv("VITGUARD_POLICY_UNSAFE_THRESHOLD", str(HIDDEN_THRESHOLD))
    monkeypatch.setenv("VITGUARD_FRAMES_VIDEO_FPS", "2")
    paths = [str(tmp_path / n) for n in ("clip.gif", "clip.mp4", "cut.mp4")] + [str(by_name[HIDDEN_BASE])]
    result = CliRunner().invoke(main, ["classify", "--model", "opennsfw", "--json", *paths])
    assert result.exit_code == 1  # the cut-off MP4
    assert "cut.mp4" in result.stderr and "corrupt_video" in result.stderr
    records = {Path(r["path"]).name: r for r in map(json.loads, result.stdout.strip().splitlines())}
    gif, mp4, still = records["clip.gif"], records["clip.mp4"], records[HIDDEN_BASE]
    assert [f["index"] for f in gif["frames"]] == list(range(9))
    assert [f["time_s"] for f in mp4["frames"]][:5] == [0.0, 0.5, 1.0, 1.5, 2.0]
    for record in (gif, mp4):
        worst = max(record["frames"], key=lambda f: f["unsafe_score"])
        assert record["label"] == "unsafe" and record["unsafe_score"] == worst["unsafe_score"]
        assert worst["index"] == (4 if record is gif else 20)
    assert "frames" not in still and still["label"] == "safe"
