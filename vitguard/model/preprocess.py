"""Decoding untrusted image bytes and turning them into the tensor a checkpoint expects.

Two halves, both pure functions of their input:

* :func:`decode_image` turns bytes into an RGB :class:`PIL.Image.Image`, refusing everything that is not a
  safely decodable image with an :class:`~vitguard.errors.ImageDecodeError` and a stable reason code. The
  pixel count is checked from the header, before any pixel is decoded, so a decompression bomb costs nothing.
* :class:`Preprocessor` reproduces timm's eval transform (``timm.data.create_transform`` for a resolved data
  config: resize with the checkpoint's interpolation, centre crop by ``crop_pct``, normalise) with Pillow and
  numpy only, so it is cheap to call from a thread pool and identical in every backend.

Large JPEGs are decoded in Pillow's draft mode (DCT-domain downscaling by 1/2, 1/4 or 1/8) to no less than
the resize target, which makes a 12 MP photo several times cheaper to decode; the result differs from a full
decode only by interpolation-level noise.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

from vitguard.errors import ImageDecodeError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIDE",
    "MAX_RESIZED_AREA",
    "REDUCED_SCALE",
    "DataConfig",
    "Preprocessor",
    "decode_image",
    "resamples_around_crop",
    "sniff_format",
    "to_rgb",
    "upright",
]

DEFAULT_MAX_PIXELS = 40_000_000
"""Same default as ``ModelSettings.max_pixels``."""
REDUCED_SCALE = "vitguard_reduced_scale"
"""Key in a decoded image's ``info``: it was decoded at a reduced scale (a JPEG in draft mode)."""

DEFAULT_MIN_SIDE = 8
"""Same default as ``ModelSettings.min_side``: below this an image carries nothing a classifier can judge."""

CropMode = Literal["center", "squash", "border"]

_INTERPOLATION: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_WHITE = (255, 255, 255)
_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


@dataclass(frozen=True)
class DataConfig:
    """The preprocessing a checkpoint was trained with: timm's resolved data config as a value object."""

    input_size: tuple[int, int, int]
    """(channels, height, width) of the network input."""
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    crop_pct: float = 0.875
    crop_mode: CropMode = "center"

    @classmethod
    def from_timm(cls, config: Mapping[str, Any]) -> DataConfig:
        """Build from the dict ``timm.data.resolve_data_config`` returns (or a checkpoint's pretrained_cfg)."""
        size = tuple(int(v) for v in config["input_size"])
        if len(size) != 3:
            raise ValueError(f"input_size must be (channels, height, width), got {config['input_size']!r}")
        interpolation = str(config.get("interpolation") or "bicubic")
        if interpolation not in _INTERPOLATION:
            interpolation = "bicubic"  # timm's 'random' etc. only make sense in training
        crop_mode = str(config.get("crop_mode") or "center")
        if crop_mode not in ("center", "squash", "border"):
            raise ValueError(f"crop_mode {crop_mode!r} is not one of center, squash, border")
        return cls(
            input_size=(size[0], size[1], size[2]),
            interpolation=interpolation,
            mean=tuple(float(v) for v in config.get("mean", cls.mean)),
            std=tuple(float(v) for v in config.get("std", cls.std)),
            crop_pct=float(config.get("crop_pct") or 0.875),
            crop_mode=crop_mode,  # type: ignore[arg-type]
        )

    def as_timm(self) -> dict[str, Any]:
        """The dict form timm's ``create_transform(**config)`` accepts (e.g. for training transforms)."""
        return asdict(self)


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode untrusted bytes to an upright RGB image.

    Args:
        data: the encoded image.
        max_pixels: width x height above which the image is refused, read from the header before decoding.
        min_side: images whose shorter side is below this are refused.
        draft_size: when given and the image is a JPEG at least twice as large in both directions, decode
            it at a reduced scale that is still no smaller than this (Pillow draft mode).

    Raises:
        ImageDecodeError: ``not_an_image`` (empty, unknown format, truncated or corrupt data),
            ``unsupported_image`` (an image format, variant or pixel mode Pillow cannot decode, e.g. HEIC),
            ``decompression_bomb`` (too many pixels) or ``image_too_small``.
    """
    image = _open(data)
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            "decompression_bomb", f"{width}x{height} image has more than the {max_pixels} pixels allowed"
        )
    if min(width, height) < min_side:
        raise ImageDecodeError("image_too_small", f"{width}x{height} image is smaller than {min_side} px")

    reduced = False
    if draft_size is not None and image.format == "JPEG":
        if width >= 2 * draft_size[0] and height >= 2 * draft_size[1]:
            image.draft(None, draft_size)
            reduced = image.size != (width, height)
    _load_first_frame(image)
    out = to_rgb(upright(image))
    if reduced:  # the PDQ hash needs the full-resolution pixels (pipeline/stages/decode.py)
        out.info[REDUCED_SCALE] = True
    return out


def _open(data: bytes) -> Image.Image:
    """Pillow's lazy open (the header only), its failures as reason codes."""
    if not data:
        raise ImageDecodeError("not_an_image", "empty image data")
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("decompression_bomb", f"image refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        known = sniff_format(data)
        if known is None:
            raise ImageDecodeError("not_an_image", "data is not in any image format Pillow recognises") from exc
        if known == "PNG" and len(data) >= 24 and (data[16:20] == b"\0\0\0\0" or data[20:24] == b"\0\0\0\0"):
            raise ImageDecodeError("image_too_small", "PNG header declares a zero-size image") from exc
        raise ImageDecodeError(
            "unsupported_image", f"{known} data that Pillow cannot open (unsupported variant or corrupt header)"
        ) from exc
    except Exception as exc:  # Pillow raises many types (SyntaxError, struct.error, ...) on garbage headers
        raise ImageDecodeError("not_an_image", f"corrupt image header: {exc}") from exc


def _load_first_frame(image: Image.Image) -> None:
    """Decode the pixels (the first frame of an animation), its failures as reason codes."""
    try:
        image.seek(0)
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("decompression_bomb", f"image refused as a decompression bomb: {exc}") from exc
    except OSError as exc:
        message = str(exc)
        if "not available" in message or "not supported" in message or "unsupported" in message.lower():
            raise ImageDecodeError("unsupported_image", f"cannot decode {image.format} image: {message}") from exc
        raise ImageDecodeError("not_an_image", f"truncated or corrupt {image.format} data: {message}") from exc
    except Exception as exc:
        raise ImageDecodeError("not_an_image", f"corrupt {image.format} data: {exc}") from exc


def upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (a no-op without one, or on an image already transposed)."""
    try:
        # exif_transpose copies the image even when there is nothing to do (~1.5 ms for 512x512): ask first
        if image.getexif().get(_ORIENTATION, 1) not in range(2, 9):
            return image
        transposed = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not lose an otherwise fine image
        return image
    return transposed if transposed is not None else image


_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"BM", "BMP"),
    (0, b"8BPS", "PSD"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (0, b"\xff\x0a", "JPEG XL"),
    (0, b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (8, b"WEBP", "WebP"),
)
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}


def sniff_format(data: bytes) -> str | None:
    """The image format a file's magic bytes announce, whether or not Pillow can decode it."""
    for offset, magic, name in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return name
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "HEIF/AVIF"
    return None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: transparency composited on white, 16-bit scaled, palettes expanded.

    Raises:
        ImageDecodeError: ``unsupported_image`` for a mode Pillow cannot convert.
    """
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    try:
        if mode in _SIXTEEN_BIT_MODES:
            return _high_depth_to_rgb(image)
        if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageDecodeError("unsupported_image", f"cannot convert {mode} image to RGB: {exc}") from exc


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit greyscale: Pillow's own conversion clips at 255, so scale the full range instead."""
    values = np.asarray(image, dtype=np.float32)
    if image.mode == "F":
        peak = 1.0 if values.size and float(values.max()) <= 1.0 else 255.0
    else:
        peak = 65535.0 if values.size and float(values.max()) > 255 else 255.0
    grey = np.clip(values * (255.0 / peak), 0, 255).round().astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


class Preprocessor:
    """timm's eval transform for one :class:`DataConfig`, in Pillow and numpy; thread-safe (no state)."""

    def __init__(
        self,
        config: DataConfig,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_side: int = DEFAULT_MIN_SIDE,
        draft: bool = True,
    ) -> None:
        self.config = config
        self.max_pixels = max_pixels
        self.min_side = min_side
        _, height, width = config.input_size
        self._target = (height, width)
        self._scale = (math.floor(height / config.crop_pct), math.floor(width / config.crop_pct))
        self._resample = _INTERPOLATION[config.interpolation]
        side = max(self._scale)
        self._draft_size = (side, side) if draft else None
        std = np.asarray(config.std, dtype=np.float32)
        mean = np.asarray(config.mean, dtype=np.float32)
        if std.shape != (3,) or mean.shape != (3,):
            raise ValueError("mean and std need three values (RGB input)")
        # (x / 255 - mean) / std as one multiply-add
        self._mul_chw = (1.0 / (255.0 * std)).astype(np.float32)[:, None, None]
        self._add_chw = (-mean / std).astype(np.float32)[:, None, None]

    def __call__(self, data: bytes) -> NDArray[np.float32]:
        """Decode and preprocess encoded bytes; see :func:`decode_image` for the errors."""
        return self.from_decoded(self.decode(data))

    def decode(self, data: bytes) -> Image.Image:
        """The upright RGB image :meth:`from_decoded` takes (a JPEG decoded at a reduced scale when that is
        still at least the model's resize); the decode stage hashes this same image (PDQ)."""
        return decode_image(data, max_pixels=self.max_pixels, min_side=self.min_side, draft_size=self._draft_size)

    def decode_full(self, data: bytes) -> Image.Image:
        """The same decode at full resolution (never the draft mode): what the PDQ hash of a large JPEG is
        computed from, bit-exact with the reference hashers that banks come from."""
        return decode_image(data, max_pixels=self.max_pixels, min_side=self.min_side)

    def from_decoded(self, image: Image.Image) -> NDArray[np.float32]:
        """The tensor of an image from :meth:`decode`."""
        return self.from_image(image, converted=True)

    def from_image(self, image: Image.Image, *, converted: bool = False) -> NDArray[np.float32]:
        """Preprocess an already decoded image to a ``(C, H, W)`` float32 array (EXIF orientation applied).

        Raises:
            ImageDecodeError: ``image_too_small`` or ``unsupported_image``, as for encoded bytes.
        """
        if not converted:
            if min(image.size) < self.min_side:
                raise ImageDecodeError(
                    "image_too_small", f"{image.size[0]}x{image.size[1]} image is smaller than {self.min_side} px"
                )
            image = to_rgb(upright(image))
        rgb = image
        pixels = np.asarray(self._resize_crop(rgb))  # uint8 HWC
        out = np.empty((3, *self._target), dtype=np.float32)
        np.multiply(pixels.transpose(2, 0, 1), self._mul_chw, out=out)  # straight into contiguous CHW
        out += self._add_chw
        return out

    def _resize_crop(self, image: Image.Image) -> Image.Image:
        target_h, target_w = self._target
        scale_h, scale_w = self._scale
        width, height = image.size
        mode = self.config.crop_mode
        if mode == "squash":
            size = (scale_w, scale_h)
        elif mode == "border":
            ratio = max(height / scale_h, width / scale_w)
            size = (round(width / ratio), round(height / ratio))
        elif scale_h == scale_w:
            # torchvision Resize(int): shortest edge to the size, the other truncated to keep the ratio
            if width <= height:
                size = (scale_w, int(scale_w * height / width))
            else:
                size = (int(scale_h * width / height), scale_h)
        else:
            ratio = min(height / scale_h, width / scale_w)
            size = (round(width / ratio), round(height / ratio))
        size = (max(1, size[0]), max(1, size[1]))
        if size != image.size and resamples_around_crop(size, (target_w, target_h), mode):
            # resample only the centre the crop keeps, from the matching source box: within a few grey levels
            # of resize-then-crop (Pillow rounds a box's enlargement a little differently)
            left, top = int(round((size[0] - target_w) / 2.0)), int(round((size[1] - target_h) / 2.0))
            fx, fy = width / size[0], height / size[1]
            box = (left * fx, top * fy, (left + target_w) * fx, (top + target_h) * fy)
            return image.resize((target_w, target_h), self._resample, box=box)
        if size != image.size:
            image = image.resize(size, self._resample)
        return _center_crop(image, target_w, target_h, self._fill() if mode == "border" else (0, 0, 0))

    def _fill(self) -> tuple[int, int, int]:
        mean = self.config.mean
        return (round(255 * mean[0]), round(255 * mean[1]), round(255 * mean[2]))


MAX_RESIZED_AREA = 4
"""Past this many times the crop's area (a strip: 4:1 and narrower), preprocessing resamples only around
the crop instead of resizing the whole image first."""


def resamples_around_crop(size: tuple[int, int], crop: tuple[int, int], crop_mode: str) -> bool:
    """Whether resizing to ``size`` (w, h) before a centre crop of ``crop`` (w, h) is a strip's, to be done
    around the crop only (the CPU and the device path): an 8 x 5,000,000 PNG "resized" to 384 x 240,000,000
    would need hundreds of GB; ordinary shapes keep the exact resize-then-crop of timm's transforms."""
    return (crop_mode != "border" and size[0] >= crop[0] and size[1] >= crop[1]
            and size[0] * size[1] > MAX_RESIZED_AREA * crop[0] * crop[1])


def _center_crop(image: Image.Image, width: int, height: int, fill: tuple[int, int, int]) -> Image.Image:
    """torchvision's CenterCrop (and timm's CenterCropOrPad), padding with ``fill`` when the image is smaller."""
    img_w, img_h = image.size
    if (img_w, img_h) == (width, height):
        return image
    if img_w < width or img_h < height:
        pad_w, pad_h = max(width - img_w, 0), max(height - img_h, 0)
        canvas = Image.new("RGB", (img_w + pad_w, img_h + pad_h), fill)
        canvas.paste(image, (pad_w // 2, pad_h // 2))
        image, (img_w, img_h) = canvas, canvas.size
    left = int(round((img_w - width) / 2.0))
    top = int(round((img_h - height) / 2.0))
    return image.crop((left, top, left + width, top + height))
