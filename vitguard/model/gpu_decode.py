"""JPEG decode on the GPU (nvJPEG, through ``torchvision.io.decode_jpeg``) and timm's eval preprocessing in
torch, so a batch of encoded uploads becomes the network's input without leaving the device.

The same steps as the torch-free :class:`~vitguard.model.preprocess.Preprocessor`, in the same order and
with the same arithmetic: decode to upright 8-bit RGB, resize with the checkpoint's interpolation to the
same size (shortest edge, ``crop_pct``, or the crop mode's rule), centre crop or pad, then
``x * (1 / (255 std)) + (-mean / std)``. Resizing runs on uint8 with antialiasing, as Pillow does, so the
two paths differ by rounding noise (pinned by a parity test on CPU, where torchvision's CPU decoder runs
through this very code; with ``nearest`` a few rows pick the neighbouring sample).

Untrusted bytes are checked before any pixel is decoded: Pillow reads the header (format, size, mode,
EXIF orientation), so the pixel limit, the smallest side and decompression bombs are refused exactly as on
the CPU path. Only baseline/progressive RGB or greyscale JPEGs go to the device; every other format, a
CMYK JPEG, and any JPEG the device decoder rejects go through :func:`~vitguard.model.preprocess.decode_image`
on the CPU, which either decodes them or raises the same ``ImageDecodeError`` reason code as the stream.
Draft mode (DCT downscaling of large JPEGs) is a CPU saving only: the device decodes at full size.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from vitguard.errors import ImageDecodeError
from vitguard.model.preprocess import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    DataConfig,
    decode_image,
    resamples_around_crop,
    sniff_format,
)

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICE_INTERPOLATIONS", "TensorPreprocessor", "resize_plan"]

DEVICE_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
"""Interpolations torchvision resizes tensors with; a checkpoint asking for another (lanczos, box,
hamming) cannot use the device path (:meth:`TensorPreprocessor.supports`)."""

_ORIENTATION = 0x0112
_DEVICE_MODES = ("RGB", "L")


def resize_plan(width: int, height: int, config: DataConfig) -> tuple[int, int]:
    """(width, height) an image is resized to before the centre crop: the :class:`Preprocessor`'s rule
    (timm's eval transform) for each crop mode."""
    _, target_h, target_w = config.input_size
    scale_h, scale_w = math.floor(target_h / config.crop_pct), math.floor(target_w / config.crop_pct)
    if config.crop_mode == "squash":
        return scale_w, scale_h
    if config.crop_mode == "border":
        ratio = max(height / scale_h, width / scale_w)
        return round(width / ratio), round(height / ratio)
    if scale_h == scale_w:  # torchvision Resize(int): shortest edge to the size, the other truncated
        if width <= height:
            return scale_w, int(scale_w * height / width)
        return int(scale_h * width / height), scale_h
    ratio = min(height / scale_h, width / scale_w)
    return round(width / ratio), round(height / ratio)


def _strip_window(image: torch.Tensor, new_w: int, new_h: int, target_w: int,
                  target_h: int) -> tuple[torch.Tensor, int, int]:
    """A strip's resize would not fit on the device (8 x 5,000,000 to 384 x 240,000,000): the source window
    the centre crop comes from, a few pixels wider for the filter's taps, and the size to resize it to (the
    centre of that is the crop, give or take a grey level where the window's edges round)."""
    _, height, width = image.shape
    sx, sy = new_w / width, new_h / height
    margin_x, margin_y = 4 + math.ceil(2 / sx), 4 + math.ceil(2 / sy)  # bicubic reaches 2 output px, antialiased
    cx, cy = (new_w - target_w) / 2 / sx, (new_h - target_h) / 2 / sy
    x0 = max(0, math.floor(cx) - margin_x)
    x1 = min(width, math.ceil(cx + target_w / sx) + margin_x)
    y0 = max(0, math.floor(cy) - margin_y)
    y1 = min(height, math.ceil(cy + target_h / sy) + margin_y)
    window = image[:, y0:y1, x0:x1]
    return window, max(target_w, round((x1 - x0) * sx)), max(target_h, round((y1 - y0) * sy))


class TensorPreprocessor:
    """Encoded images to a normalised ``(N, C, H, W)`` float32 batch on ``device``.

    Args:
        config: the checkpoint's preprocessing.
        device: where decoding (JPEG) and preprocessing run: ``cuda`` (nvJPEG) or ``cpu`` (torchvision's
            libjpeg decoder, the same code path: what the parity test runs).
        max_pixels, min_side: the same limits as the CPU path.

    Raises:
        ValueError: the config's interpolation has no tensor implementation (see :meth:`supports`).
    """

    def __init__(
        self,
        config: DataConfig,
        *,
        device: str | torch.device = "cpu",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_side: int = DEFAULT_MIN_SIDE,
    ) -> None:
        import torch
        from torchvision.transforms import InterpolationMode

        if not self.supports(config):
            raise ValueError(
                f"interpolation {config.interpolation!r} has no tensor resize; use the CPU Preprocessor "
                f"(device decode supports {', '.join(DEVICE_INTERPOLATIONS)})"
            )
        self.config = config
        self.device = torch.device(device)
        self.max_pixels = max_pixels
        self.min_side = min_side
        # Pillow's NEAREST samples pixel centres: torchvision's NEAREST_EXACT, not its legacy NEAREST
        self._interpolation = {"nearest": InterpolationMode.NEAREST_EXACT, "bilinear": InterpolationMode.BILINEAR,
                               "bicubic": InterpolationMode.BICUBIC}[config.interpolation]
        std = torch.tensor(config.std, dtype=torch.float32)
        mean = torch.tensor(config.mean, dtype=torch.float32)
        self._mul = (1.0 / (255.0 * std)).view(3, 1, 1).to(self.device)
        self._add = (-mean / std).view(3, 1, 1).to(self.device)
        fill = [round(255 * m) for m in config.mean] if config.crop_mode == "border" else [0, 0, 0]
        self._fill = torch.tensor(fill, dtype=torch.uint8).view(3, 1, 1).to(self.device)

    @staticmethod
    def supports(config: DataConfig) -> bool:
        """Whether this config can be preprocessed as tensors (its interpolation exists in torchvision)."""
        return config.interpolation in DEVICE_INTERPOLATIONS

    # ------------------------------------------------------------------ decode

    def decode(self, datas: Sequence[bytes]) -> list[torch.Tensor | ImageDecodeError]:
        """Each input as an upright uint8 RGB ``(3, H, W)`` tensor on the device, or the reason it is refused.

        JPEGs that pass the header checks are decoded together in one device call; the rest (and any the
        device decoder rejects) go through the CPU decoder one by one.
        """
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        out: list[torch.Tensor | ImageDecodeError | None] = [None] * len(datas)
        device_jobs: list[tuple[int, int]] = []  # (index, EXIF orientation)
        for i, data in enumerate(datas):
            orientation = self._device_candidate(data)
            if orientation is None:
                out[i] = self._cpu_decode(data)
            else:
                device_jobs.append((i, orientation))
        if device_jobs:
            encoded = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i, _ in device_jobs]
            try:
                decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError:  # one bad image fails the whole call: retry each alone
                decoded = []
                for tensor in encoded:
                    try:
                        decoded.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=self.device))
                    except RuntimeError:
                        decoded.append(None)
            for (i, orientation), image in zip(device_jobs, decoded, strict=True):
                out[i] = _orient(image, orientation) if image is not None else self._cpu_decode(datas[i])
        return [x for x in out if x is not None]

    def _device_candidate(self, data: bytes) -> int | None:
        """The EXIF orientation of a JPEG the device may decode (limits checked from the header), else None."""
        if sniff_format(data) != "JPEG":
            return None
        try:
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
                if (header.format != "JPEG" or header.mode not in _DEVICE_MODES
                        or width * height > self.max_pixels or min(width, height) < self.min_side):
                    return None  # the CPU decoder refuses it with the right reason code, or converts it
                try:
                    orientation = int(header.getexif().get(_ORIENTATION, 1))
                except Exception:  # a broken EXIF block must not lose an otherwise fine image (as on CPU)
                    orientation = 1
        except Exception:
            return None
        return orientation if orientation in range(1, 9) else 1

    def _cpu_decode(self, data: bytes) -> torch.Tensor | ImageDecodeError:
        import torch

        try:
            image = decode_image(data, max_pixels=self.max_pixels, min_side=self.min_side)
        except ImageDecodeError as exc:
            return exc
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # a writable copy: torch wants one
        return pixels.permute(2, 0, 1).to(self.device)

    # ------------------------------------------------------------------ preprocess

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """One upright uint8 ``(3, H, W)`` image to the network's normalised ``(3, h, w)`` float32 input."""
        import torch
        from torchvision.transforms.v2 import functional as tvf

        _, height, width = image.shape
        new_w, new_h = resize_plan(width, height, self.config)
        _, target_h, target_w = self.config.input_size
        if resamples_around_crop((new_w, new_h), (target_w, target_h), self.config.crop_mode):
            image, new_w, new_h = _strip_window(image, new_w, new_h, target_w, target_h)
        if (new_w, new_h) != tuple(image.shape[:0:-1]):
            image = tvf.resize(image, [new_h, new_w], interpolation=self._interpolation, antialias=True)
        image = self._center_crop(image, target_w, target_h)
        out: torch.Tensor = torch.addcmul(self._add, image.to(torch.float32), self._mul)
        return out

    def _center_crop(self, image: torch.Tensor, width: int, height: int) -> torch.Tensor:
        """The CPU path's centre crop: pad with the fill colour when smaller, then crop (same rounding)."""
        _, img_h, img_w = image.shape
        if (img_w, img_h) == (width, height):
            return image
        if img_w < width or img_h < height:
            pad_w, pad_h = max(width - img_w, 0), max(height - img_h, 0)
            canvas = self._fill.expand(3, img_h + pad_h, img_w + pad_w).clone()
            canvas[:, pad_h // 2 : pad_h // 2 + img_h, pad_w // 2 : pad_w // 2 + img_w] = image
            image, img_h, img_w = canvas, img_h + pad_h, img_w + pad_w
        left = int(round((img_w - width) / 2.0))
        top = int(round((img_h - height) / 2.0))
        return image[:, top : top + height, left : left + width]

    def batch(self, datas: Sequence[bytes]) -> tuple[torch.Tensor, dict[int, ImageDecodeError]]:
        """Decode and preprocess ``datas``: the stacked inputs of those that decoded (in order), and the
        refusals by index. The batch has ``len(datas) - len(refusals)`` rows."""
        import torch

        refused: dict[int, ImageDecodeError] = {}
        rows: list[torch.Tensor] = []
        for i, decoded in enumerate(self.decode(datas)):
            if isinstance(decoded, ImageDecodeError):
                refused[i] = decoded
            else:
                rows.append(self.preprocess(decoded))
        if not rows:
            return torch.empty((0, *self.config.input_size), dtype=torch.float32, device=self.device), refused
        return torch.stack(rows), refused

    def __call__(self, data: bytes) -> NDArray[np.float32]:
        """One image to a host ``(C, H, W)`` array (the :class:`ImagePreprocessor` contract, for parity
        checks; the batch path keeps tensors on the device).

        Raises:
            ImageDecodeError: as :func:`~vitguard.model.preprocess.decode_image`.
        """
        decoded = self.decode([data])[0]
        if isinstance(decoded, ImageDecodeError):
            raise decoded
        out: NDArray[np.float32] = self.preprocess(decoded).cpu().numpy()
        return out


def _orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Pillow's ``exif_transpose`` on a ``(C, H, W)`` tensor."""
    if orientation == 2:  # FLIP_LEFT_RIGHT
        return image.flip(2)
    if orientation == 3:  # ROTATE_180
        return image.flip(1, 2)
    if orientation == 4:  # FLIP_TOP_BOTTOM
        return image.flip(1)
    if orientation == 5:  # TRANSPOSE
        return image.transpose(1, 2)
    if orientation == 6:  # ROTATE_270 (clockwise)
        return image.rot90(-1, (1, 2))
    if orientation == 7:  # TRANSVERSE
        return image.transpose(1, 2).flip(1, 2)
    if orientation == 8:  # ROTATE_90 (counter-clockwise)
        return image.rot90(1, (1, 2))
    return image
