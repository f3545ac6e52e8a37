"""Preprocessing parity with timm, every awkward-but-valid image, and every undecodable input's reason code."""

from __future__ import annotations

import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from timm.data import create_transform

from vitguard.errors import ImageDecodeError
from vitguard.model.preprocess import DataConfig, Preprocessor, decode_image

MARQO = {
    "input_size": (3, 384, 384), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3,
    "crop_pct": 1.0, "crop_mode": "center",
}
IMAGENET = {
    "input_size": (3, 224, 224), "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "crop_mode": "center",
}
SMALL = {**MARQO, "input_size": (3, 32, 32)}
OTHER_CROPS = [
    {**MARQO, "input_size": (3, 224, 224), "crop_pct": 0.9, "crop_mode": "squash"},
    {**MARQO, "input_size": (3, 224, 224), "crop_mode": "border"},
    {**IMAGENET, "input_size": (3, 192, 256), "crop_pct": 0.95},
    {**MARQO, "input_size": (3, 224, 224), "crop_pct": 1.1},  # crop larger than the resize: zero padding
]


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def _timm(config: dict, data: bytes) -> np.ndarray:
    transform = create_transform(**config, is_training=False)
    return transform(Image.open(io.BytesIO(data)).convert("RGB")).numpy()


@pytest.mark.parametrize("config", [MARQO, IMAGENET], ids=["marqo-384", "imagenet-224"])
def test_parity_with_timm_create_transform(config: dict, sample_photos: list[Path]) -> None:
    preprocess = Preprocessor(DataConfig.from_timm(config))
    for photo in sample_photos:  # real JPEG/PNG photos, portrait/landscape/square, colour and greyscale
        data = photo.read_bytes()
        ours = preprocess(data)
        assert ours.shape == config["input_size"] and ours.dtype == np.float32
        np.testing.assert_allclose(ours, _timm(config, data), atol=1e-5, err_msg=photo.name)


@pytest.mark.parametrize("config", OTHER_CROPS, ids=["squash", "border", "non-square", "pad"])
def test_parity_other_crop_modes(config: dict, sample_photos: list[Path]) -> None:
    preprocess = Preprocessor(DataConfig.from_timm(config), draft=False)  # geometry only; draft is tested below
    for photo in sample_photos[:4]:
        data = photo.read_bytes()
        np.testing.assert_allclose(preprocess(data), _timm(config, data), atol=1e-5, err_msg=photo.name)


def test_large_jpeg_draft_mode_stays_within_interpolation_tolerance(sample_photos: list[Path]) -> None:
    photo = Image.open(sample_photos[0]).convert("RGB").resize((2400, 1800), Image.Resampling.BICUBIC)
    data = _encode(photo, "JPEG", quality=90)
    ours = Preprocessor(DataConfig.from_timm(MARQO))(data)
    reference = _timm(MARQO, data)  # full-resolution decode
    # "interpolation tolerance": no further from timm than timm's own bilinear resize is from its bicubic one
    tolerance = np.abs(_timm({**MARQO, "interpolation": "bilinear"}, data) - reference)
    diff = np.abs(ours - reference)
    assert diff.mean() < tolerance.mean()
    assert diff.max() <= tolerance.max() + 1e-6


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    decoded = decode_image(_encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert decoded.size == (20, 40)
    r, _, b = decoded.getpixel((10, 5))  # top after rotation: the former left half
    assert b > 200 and r < 60


def test_alpha_is_composited_on_white() -> None:
    image = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (0, 0, 8, 16))
    decoded = decode_image(_encode(image, "PNG"))
    assert decoded.mode == "RGB"
    assert decoded.getpixel((12, 8)) == (255, 255, 255)
    assert decoded.getpixel((2, 8)) == (255, 0, 0)
    tensor = Preprocessor(DataConfig.from_timm(SMALL)).from_image(image)
    assert tensor[:, 16, 28].tolist() == pytest.approx([1.0, 1.0, 1.0])  # white is +1 with mean/std 0.5


def test_palette_with_transparency_and_la() -> None:
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.paste(1, (0, 0, 8, 16))
    decoded = decode_image(_encode(palette, "PNG", transparency=0))
    assert decoded.getpixel((12, 8)) == (255, 255, 255) and decoded.getpixel((2, 8)) == (10, 200, 30)
    la = Image.new("LA", (16, 16), (50, 255))
    assert decode_image(_encode(la, "PNG")).getpixel((3, 3)) == (50, 50, 50)


def test_cmyk_greyscale_and_sixteen_bit() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red
    r, g, b = decode_image(_encode(cmyk, "JPEG", quality=95)).getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60
    grey = Image.new("L", (16, 16), 77)
    assert decode_image(_encode(grey, "PNG")).getpixel((1, 1)) == (77, 77, 77)
    deep = Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16))
    data = _encode(deep, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    value = decode_image(data).getpixel((4, 4))
    assert value == (156, 156, 156)  # 40000/65535 of the range, not clipped to 255


def test_first_frame_of_animation() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    r, g, b = decode_image(data).getpixel((8, 8))
    assert r > 200 and g < 50 and b < 50


def test_prepare_is_thread_safe(sample_photos: list[Path]) -> None:
    preprocess = Preprocessor(DataConfig.from_timm(SMALL))
    blobs = [p.read_bytes() for p in sample_photos] * 3
    serial = [preprocess(b) for b in blobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(preprocess, blobs))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


# --- undecodable inputs -------------------------------------------------------------------------------


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _jpeg(size: tuple[int, int] = (64, 64)) -> bytes:
    rng = np.random.default_rng(0)
    return _encode(Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)), "JPEG")


def _reason(data: bytes, **limits: int) -> str:
    with pytest.raises(ImageDecodeError) as info:
        Preprocessor(DataConfig.from_timm(SMALL), **limits)(data)
    assert info.value.message and "\n" not in info.value.message
    return info.value.reason


def test_not_an_image() -> None:
    rng = np.random.default_rng(1)
    assert _reason(b"") == "not_an_image"
    assert _reason(rng.bytes(4096)) == "not_an_image"
    assert _reason(b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect/></svg>') == "not_an_image"
    assert _reason(b"hello, this is plain text\n" * 20) == "not_an_image"
    jpeg = _jpeg()
    assert _reason(jpeg[: len(jpeg) // 2]) == "not_an_image"  # truncated
    png = _encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")
    assert _reason(png[:-40]) == "not_an_image"
    assert _reason(_png_header(64, 64)) == "not_an_image"  # header, no pixel data


def test_unsupported_image() -> None:
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    assert _reason(heic) == "unsupported_image"
    tiff = bytearray(_encode(Image.new("RGB", (16, 16)), "TIFF"))
    ifd = struct.unpack("<I", tiff[4:8])[0]
    for i in range(struct.unpack("<H", tiff[ifd : ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack("<H", tiff[entry : entry + 2])[0] == 259:  # Compression
            tiff[entry + 8 : entry + 10] = struct.pack("<H", 34712)  # JPEG 2000 in TIFF: no decoder
    assert _reason(bytes(tiff)) == "unsupported_image"


def test_decompression_bomb_checked_before_decoding() -> None:
    # header-only files: decoding them would fail, so the refusal must come from the header
    assert _reason(_png_header(7000, 7000)) == "decompression_bomb"  # over the 40 MP default
    assert _reason(_png_header(50_000, 50_000)) == "decompression_bomb"  # over Pillow's own hard limit
    assert _reason(_jpeg((64, 64)), max_pixels=4000) == "decompression_bomb"


def test_image_too_small() -> None:
    assert _reason(_png_header(0, 0)) == "image_too_small"
    assert _reason(_encode(Image.new("RGB", (4, 64)), "PNG")) == "image_too_small"
    assert _reason(_encode(Image.new("RGB", (1, 1)), "GIF")) == "image_too_small"
    assert Preprocessor(DataConfig.from_timm(SMALL), min_side=1)(_encode(Image.new("RGB", (1, 1)), "PNG")).shape == (
        3, 32, 32,
    )


def test_prepare_image_matches_prepare_bytes(sample_photos: list[Path]) -> None:
    preprocess = Preprocessor(DataConfig.from_timm(SMALL))
    image = Image.new("RGB", (60, 30), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 CCW on display
    data = _encode(image, "PNG", exif=exif.tobytes())
    from_bytes = preprocess(data)
    from_pil = preprocess.from_image(Image.open(io.BytesIO(data)))
    np.testing.assert_allclose(from_pil, from_bytes, atol=1e-6)
    photo = sample_photos[0].read_bytes()
    np.testing.assert_allclose(preprocess.from_image(Image.open(io.BytesIO(photo))), preprocess(photo), atol=1e-6)
    with pytest.raises(ImageDecodeError) as info:
        preprocess.from_image(Image.new("RGB", (3, 3)))
    assert info.value.reason == "image_too_small"


def test_opennsfw_resamples_only_the_centre_it_keeps_with_the_reference_pixels(sample_photos: list[Path]) -> None:
    """open_nsfw's reference resizes to 256 x 256 and crops the centre 224; vitguard resamples only that centre
    from the matching source box. The pixels are the reference's, at every size tried (a last-bit float
    difference may move one grey level in a few pixels)."""
    from vitguard.model.opennsfw import OpenNSFWPreprocessor

    ours = OpenNSFWPreprocessor(jpeg_reencode=False)
    mean_bgr = np.array([104, 117, 123], dtype=np.float32)[:, None, None]
    tried = identical = 0
    for path in sample_photos:
        photo = Image.open(path).convert("RGB")
        for scale in (1.0, 0.37, 0.81, 1.7):
            image = photo.resize((round(photo.width * scale), round(photo.height * scale)))
            reference = np.asarray(
                image.resize((256, 256), resample=Image.Resampling.BILINEAR).crop((16, 16, 240, 240)))
            expected = reference.transpose(2, 0, 1)[::-1] - mean_bgr
            got = ours.from_image(image)
            assert got.shape == (3, 224, 224)
            difference = np.abs(got - expected)
            assert difference.max() <= 1, (path.name, scale)
            assert (difference > 0).mean() < 0.05, (path.name, scale)
            tried += 1
            identical += bool(difference.max() == 0)
    assert identical >= tried - 1


def test_a_strip_is_resampled_only_where_the_crop_keeps(sample_photos: list[Path]) -> None:
    """Shortest edge to 384 made an 8 x 5,000,000 PNG (40 MP: within the limit, a few KB on the wire) a
    384 x 240,000,000 resize, hundreds of GB: the worker was killed for memory and its event crashed every
    restart. A strip is now resampled only where the crop keeps: near resize-then-crop's pixels (Pillow's
    resize of a box rounds a few differently when it enlarges along the strip)."""
    preprocess = Preprocessor(DataConfig.from_timm(MARQO))
    for path in sample_photos[:4]:
        for shape in [(48, 3000), (3000, 48), (100, 1000)]:
            strip = Image.open(path).convert("RGB").resize(shape)
            w, h = shape
            size = (384, 384 * h // w) if w <= h else (384 * w // h, 384)
            left, top = round((size[0] - 384) / 2), round((size[1] - 384) / 2)
            resized = strip.resize(size, Image.Resampling.BICUBIC)
            reference = np.asarray(resized.crop((left, top, left + 384, top + 384)))
            grey = np.abs(preprocess.from_image(strip) - (reference.transpose(2, 0, 1) / 127.5 - 1)) * 127.5
            assert grey.max() <= 8 and grey.mean() < 0.5, (path.name, shape, grey.max(), grey.mean())

    giant = _encode(Image.new("1", (8, 5_000_000), 1), "PNG", optimize=True)
    assert len(giant) < 100_000
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        "from vitguard.model.preprocess import DataConfig, Preprocessor\n"
        f"config = DataConfig.from_timm({MARQO!r})\n"
        "print(Preprocessor(config)(sys.stdin.buffer.read()).shape)\n"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", script], input=giant, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().strip() == "(3, 384, 384)"
