"""A still PNG or GIF goes through the expand stage (it could have been an animation) and still gets its PDQ hash."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vitguard.media import FrameLimits
from vitguard.pipeline.results import Decoded, Fetched, Parsed, StageTimes
from vitguard.pipeline.stages.decode import hash_decoded, prepare_decoded
from vitguard.pipeline.stages.expand import expand_item
from vitguard.pipeline.types import RawMessage
from vitguard.schemas.events import ImageEvent


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP"])
async def test_a_still_png_gif_or_webp_is_hashed(opennsfw: Any, sample_photos: list[Path], fmt: str) -> None:
    out = io.BytesIO()
    Image.open(sample_photos[0]).convert("RGB").save(out, fmt)
    data = out.getvalue()
    event = ImageEvent(event_id="e1", content_id="c1", image_ref="https://example.test/x")
    fetched = Fetched(Parsed(RawMessage(b"{}", None, "in", 0, 0), event), data, "0" * 64, "http", StageTimes())
    with ThreadPoolExecutor(1) as pool:
        result = await expand_item(fetched, opennsfw, pool, FrameLimits())
        assert isinstance(result, Decoded)
        pdq = await result.hash()  # computed in the pool while the batch is in inference
    assert pdq is not None
    direct = hash_decoded(prepare_decoded(opennsfw, data)[1])
    assert direct is not None and pdq.hex == direct.hex


@pytest.mark.parametrize(("fmt", "side"), [
    *(("JPEG", side) for side in (256, 640, 1024, 1411, 2048)),  # draft-mode decodes from 1,024 px up
    ("PNG", 256), ("PNG", 1024),  # never reduced: a control
])
def test_the_worker_s_pdq_hash_is_the_reference_hash_at_every_size(
    opennsfw: Any, sample_photos: list[Path], fmt: str, side: int
) -> None:
    """Issue 28: the worker hashed a large JPEG's reduced-scale decode (the model's draft mode), 12-14 bits from
    the reference hash of the same file, of a 31-bit match budget; banks come from systems that hash full
    images. The hash is now computed from the full-resolution pixels, bit-exact with ``pdqhash``."""
    import numpy as np

    from vitguard.banks.signal import PdqSignal

    worst = 0
    for photo in sample_photos[:4]:
        image = Image.open(photo).convert("RGB")
        image = image.resize((side, round(side * image.size[1] / image.size[0])), Image.Resampling.BICUBIC)
        out = io.BytesIO()
        image.save(out, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
        data = out.getvalue()
        got = hash_decoded(prepare_decoded(opennsfw, data)[1])
        reference = PdqSignal.hash_pixels_reference(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
        assert got is not None
        worst = max(worst, bin(int(got.hex, 16) ^ int(reference.hex, 16)).count("1"))
    assert worst == 0
