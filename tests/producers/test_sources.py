"""Event sources for ``vitguard publish``: real image files, JSONL lines, URLs."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from vitguard.producers.sources import (
    SourceError,
    count_jsonl_lines,
    image_files,
    items_from_directory,
    items_from_jsonl,
    items_from_urls,
    url_content_id,
)
from vitguard.schemas.events import ImageEvent


@pytest.fixture
def photo_dir(tmp_path: Path, sample_photos: list[Path]) -> Path:
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    for p in sample_photos[:3]:
        shutil.copy(p, d / p.name)
    shutil.copy(sample_photos[3], d / "sub" / "nested photo.JPG")
    (d / "notes.txt").write_text("not an image")
    return d


def test_directory_gives_file_refs_keyed_by_content_hash(photo_dir: Path) -> None:
    items = list(items_from_directory(photo_dir, tenant="acme"))
    assert [i.origin for i in items] == sorted(p.name for p in photo_dir.iterdir() if p.suffix == ".png")
    for item in items:
        assert item.error is None and item.event is not None
        path = photo_dir / item.origin
        assert item.event.content_id == "sha256-" + hashlib.sha256(path.read_bytes()).hexdigest()[:32]
        assert item.event.image_ref == path.resolve().as_uri()
        assert item.event.tenant == "acme"
        assert item.event.metadata == {"filename": item.origin}


def test_recursive_and_name_ids(photo_dir: Path) -> None:
    items = list(items_from_directory(photo_dir, recursive=True, id_from="name"))
    ids = {i.origin: i.event.content_id for i in items if i.event}
    assert ids["sub/nested photo.JPG"] == "sub/nested_photo.JPG"
    assert len(ids) == 4


def test_inline_images_decode_back_to_the_same_picture(photo_dir: Path) -> None:
    items = list(items_from_directory(photo_dir, inline=True, max_inline_bytes=50 * 1024 * 1024))
    item = items[0]
    assert item.event is not None
    header, _, payload = item.event.image_ref.partition(",")
    assert header == "data:image/png;base64"
    raw = base64.b64decode(payload)
    assert raw == (photo_dir / item.origin).read_bytes()
    with Image.open(io.BytesIO(raw)) as img:
        assert img.size[0] > 0


def test_inline_over_the_limit_is_a_counted_failure(photo_dir: Path) -> None:
    items = list(items_from_directory(photo_dir, inline=True, max_inline_bytes=1024))
    assert items and all(i.event is None and i.reason == "inline_too_large" for i in items)
    assert items[0].error is not None and items[0].error.reason == "inline_too_large"


def test_missing_directory_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="is not a directory"):
        image_files(tmp_path / "nope")


def test_jsonl_lines_are_parsed_and_bad_lines_reported() -> None:
    good = ImageEvent(content_id="c1", image_ref="https://example.com/a.jpg").model_dump_json()
    text = f"{good}\n\nnot json\n{{\"content_id\": \"c2\"}}\n"
    items = list(items_from_jsonl(io.StringIO(text), "events.jsonl"))
    assert [i.origin for i in items] == ["events.jsonl:1", "events.jsonl:3", "events.jsonl:4"]
    assert items[0].event is not None and items[0].event.content_id == "c1"
    assert [i.reason for i in items[1:]] == ["invalid_json", "schema_violation"]
    assert "image_ref" in str(items[2].error)


def test_count_jsonl_lines(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text("a\n\n b\n")
    assert count_jsonl_lines(path) == 2
    with pytest.raises(SourceError, match="cannot read"):
        count_jsonl_lines(tmp_path / "missing.jsonl")


def test_urls_get_stable_ids_and_bad_urls_fail_locally() -> None:
    items = list(items_from_urls(["https://cdn.example.com/x.png", "ftp://nope/x.png"]))
    assert items[0].event is not None
    assert items[0].event.content_id == url_content_id("https://cdn.example.com/x.png")
    assert items[1].event is None and items[1].reason == "schema_violation"
