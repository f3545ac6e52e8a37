"""Device decode and preprocessing (vitguard.model.gpu_decode) against the torch-free CPU Preprocessor.

On CPU torchvision's libjpeg decoder runs through the very code the GPU uses, so parity is checked here on
every machine; the ``gpu`` tests repeat it with nvJPEG on CUDA (looser: another IDCT, float resampling).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from PIL import Image

from vitguard.errors import ImageDecodeError
from vitguard.model.gpu_decode import TensorPreprocessor, resize_plan
from vitguard.model.preprocess import DataConfig, Preprocessor
from vitguard.model.torch_backend import TorchClassifier, TorchOptions
from vitguard.settings import ModelSettings

MARQO = DataConfig((3, 384, 384), "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 1.0)
CONFIGS = [
    MARQO,
    DataConfig((3, 224, 224), "bilinear", crop_pct=0.875),
    DataConfig((3, 224, 224), "bicubic", crop_mode="border"),
    DataConfig((3, 224, 224), "bicubic", crop_mode="squash"),
    DataConfig((3, 192, 256), "nearest", crop_pct=0.9),
]


def _jpeg(image: Image.Image, **save: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


@pytest.fixture(scope="module")
def jpegs(sample_photos: list[Path]) -> list[bytes]:
    return [_jpeg(Image.open(p).convert("RGB")) for p in sample_photos]


def _close(a: np.ndarray, b: np.ndarray, mean: float = 2e-4, peak: float = 0.02) -> None:
    """At most one 8-bit level apart anywhere (1/255/std), and almost everywhere equal."""
    assert a.shape == b.shape
    diff = np.abs(a - b)
    assert diff.mean() < mean and diff.max() <= peak, (diff.mean(), diff.max())


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.crop_mode}-{c.interpolation}-{c.input_size[1]}")
def test_cpu_parity_with_the_torch_free_preprocessor(config: DataConfig, jpegs: list[bytes]) -> None:
    cpu, tensor = Preprocessor(config, draft=False), TensorPreprocessor(config)
    for data in jpegs:
        if config.interpolation == "nearest":  # the same rule, but a few rows round to the neighbouring sample
            assert np.abs(tensor(data) - cpu(data)).mean() < 0.01
        else:
            _close(tensor(data), cpu(data), peak=0.0176)  # std 0.229: one level is 0.0171


@pytest.mark.parametrize("size", [(640, 427), (300, 500), (384, 384), (100, 60)])
def test_resize_plan_matches_the_preprocessor(size: tuple[int, int]) -> None:
    # a flat image resized by the Preprocessor keeps its plan visible through the crop
    for config in CONFIGS:
        plan = resize_plan(*size, config)
        assert all(s > 0 for s in plan)
        image = Image.new("RGB", size, (90, 120, 150))
        data = _jpeg(image)
        _close(TensorPreprocessor(config)(data), Preprocessor(config, draft=False)(data), peak=0.0176)


def test_large_jpeg_against_draft_mode_stays_close(sample_photos: list[Path]) -> None:
    big = _jpeg(Image.open(sample_photos[0]).convert("RGB").resize((2400, 2400), Image.Resampling.BICUBIC))
    drafted, full = Preprocessor(MARQO)(big), Preprocessor(MARQO, draft=False)(big)
    ours = TensorPreprocessor(MARQO)(big)
    _close(ours, full, peak=0.0176)
    assert np.abs(ours - drafted).mean() < 0.02  # draft mode is the CPU path's own approximation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_pillow(orientation: int, sample_photos: list[Path]) -> None:
    image = Image.open(sample_photos[1]).convert("RGB").resize((300, 200))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _jpeg(image, exif=exif.tobytes())
    _close(TensorPreprocessor(MARQO)(data), Preprocessor(MARQO, draft=False)(data), peak=0.0080)


def test_other_formats_and_modes_fall_back_to_the_cpu_decoder(sample_photos: list[Path]) -> None:
    photo = Image.open(sample_photos[0]).convert("RGB").resize((320, 240))
    png = io.BytesIO()
    photo.save(png, "PNG")
    grey = _jpeg(photo.convert("L"))
    cmyk = io.BytesIO()
    photo.convert("CMYK").save(cmyk, "JPEG", quality=90)
    cpu, tensor = Preprocessor(MARQO, draft=False), TensorPreprocessor(MARQO)
    for data in (png.getvalue(), grey, cmyk.getvalue()):
        _close(tensor(data), cpu(data), peak=0.0080)


def test_refusals_carry_the_cpu_paths_reason_codes(jpegs: list[bytes]) -> None:
    tensor = TensorPreprocessor(MARQO, max_pixels=200_000, min_side=16)
    tiny = _jpeg(Image.new("RGB", (40, 8)))
    huge = _jpeg(Image.new("RGB", (1000, 1000)))
    truncated = jpegs[0][: len(jpegs[0]) // 3]
    cases = {b"": "not_an_image", b"plain text": "not_an_image", tiny: "image_too_small",
             huge: "decompression_bomb", jpegs[0][:200]: "not_an_image"}
    cpu = Preprocessor(MARQO, max_pixels=200_000, min_side=16, draft=False)
    for data, reason in cases.items():
        with pytest.raises(ImageDecodeError) as got:
            tensor(data)
        assert got.value.reason == reason
    # a truncated JPEG: whatever the CPU path does (decode what is there, or refuse), the device path does too
    try:
        expected: np.ndarray | str = cpu(truncated)
    except ImageDecodeError as exc:
        expected = exc.reason
    try:
        actual: np.ndarray | str = tensor(truncated)
    except ImageDecodeError as exc:
        actual = exc.reason
    assert type(actual) is type(expected)


def test_batch_keeps_order_and_reports_refusals_by_index(jpegs: list[bytes]) -> None:
    tensor = TensorPreprocessor(MARQO)
    batch, refused = tensor.batch([jpegs[0], b"nope", jpegs[1], jpegs[2]])
    assert batch.shape == (3, *MARQO.input_size)
    assert list(refused) == [1] and refused[1].reason == "not_an_image"
    _close(batch[1].numpy(), Preprocessor(MARQO, draft=False)(jpegs[1]), peak=0.0176)
    empty, refused = tensor.batch([b"nope"])
    assert empty.shape == (0, *MARQO.input_size) and list(refused) == [0]


def test_interpolations_without_a_tensor_resize_are_refused_up_front() -> None:
    config = DataConfig((3, 224, 224), "lanczos")
    assert not TensorPreprocessor.supports(config)
    with pytest.raises(ValueError, match="CPU Preprocessor"):
        TensorPreprocessor(config)


# ---------------------------------------------------------------------------- the torch backend


def _device_decoding(tiny: TorchClassifier, device: str) -> TorchClassifier:
    return TorchClassifier(tiny.module, tiny.info, tiny.data_config, device=device, device_decode=True)


def test_predict_encoded_matches_prepare_then_predict(tiny_classifier: TorchClassifier, jpegs: list[bytes]) -> None:
    clf = _device_decoding(tiny_classifier, "cpu")
    assert clf.tensor_preprocessor is not None
    datas = [jpegs[0], b"not an image", jpegs[1]]
    got = clf.predict_encoded(datas)
    assert isinstance(got[1], ImageDecodeError) and got[1].reason == "not_an_image"
    full = Preprocessor(tiny_classifier.data_config, draft=False)  # the device decodes at full size, no draft
    expected = tiny_classifier.predict(np.stack([full(d) for d in (jpegs[0], jpegs[1])]))
    for a, b in zip(expected, [got[0], got[2]], strict=True):
        assert not isinstance(b, ImageDecodeError)
        assert max(abs(a.scores[k] - b.scores[k]) for k in a.scores) < 2e-3
        assert float(a.embedding @ b.embedding) > 0.999
    # without device decode the same method prepares on the host
    host = tiny_classifier.predict_encoded(datas)
    assert isinstance(host[1], ImageDecodeError)
    assert tiny_classifier.tensor_preprocessor is None  # CPU: off unless asked for


def test_cpu_defaults_and_options_from_settings(tiny_classifier: TorchClassifier) -> None:
    assert tiny_classifier.preferred_batch_size == 16
    settings = ModelSettings.model_construct(amp="bf16", torch_compile=True, device_decode=False, cuda_batch_size=512)
    assert TorchOptions.from_settings(settings) == TorchOptions("bf16", True, False, 512)
    assert TorchOptions.from_settings(ModelSettings.model_construct()) == TorchOptions()


def test_torch_compile_wraps_the_forward_pass(tiny_classifier: TorchClassifier, jpegs: list[bytes],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    compiled: list[object] = []

    def fake_compile(fn: object, **kwargs: object) -> object:
        compiled.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    clf = TorchClassifier(tiny_classifier.module, tiny_classifier.info, tiny_classifier.data_config,
                          options=TorchOptions(torch_compile=True))
    assert len(compiled) == 1
    batch = np.stack([clf.prepare(jpegs[0])])
    assert clf.predict(batch)[0].scores == pytest.approx(tiny_classifier.predict(batch)[0].scores, abs=1e-6)


# ---------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
def test_nvjpeg_parity_with_the_cpu_preprocessor(jpegs: list[bytes]) -> None:
    for config in CONFIGS[:3]:
        gpu, cpu = TensorPreprocessor(config, device="cuda"), Preprocessor(config, draft=False)
        for data in jpegs:
            _close(gpu(data), cpu(data), mean=0.01, peak=0.15)  # another IDCT, float resampling
        batch, refused = gpu.batch([*jpegs, b"nope"])
        assert batch.device.type == "cuda" and batch.shape[0] == len(jpegs) and list(refused) == [len(jpegs)]


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["fp16", "bf16", "off"])
def test_cuda_backend_amp_pinned_staging_and_device_decode(tiny_checkpoint: Path, jpegs: list[bytes],
                                                           amp: Literal["fp16", "bf16", "off"]) -> None:
    from vitguard.model import load_classifier

    cpu = load_classifier(str(tiny_checkpoint), settings=ModelSettings.model_construct(device="cpu"))
    gpu = load_classifier(str(tiny_checkpoint), settings=ModelSettings.model_construct(device="cuda", amp=amp))
    assert isinstance(gpu, TorchClassifier) and gpu.tensor_preprocessor is not None
    assert gpu.preferred_batch_size == 256
    full = Preprocessor(gpu.data_config, draft=False)  # predict_encoded decodes at full size
    prepared = np.stack([full(d) for d in jpegs])
    expected = cpu.predict(prepared)
    tolerance = 3e-2 if amp == "bf16" else 1e-2
    for n in (len(jpegs), 2, len(jpegs)):  # the staging buffer is reused across sizes
        for a, b in zip(expected[:n], gpu.predict(prepared[:n]), strict=True):
            assert max(abs(a.scores[k] - b.scores[k]) for k in a.scores) < tolerance
            assert float(a.embedding @ b.embedding) > 0.99
    for a, c in zip(expected, gpu.predict_encoded(jpegs), strict=True):
        assert not isinstance(c, ImageDecodeError)
        assert max(abs(a.scores[k] - c.scores[k]) for k in a.scores) < tolerance + 1e-2
        assert float(a.embedding @ c.embedding) > 0.99


@pytest.mark.gpu
@pytest.mark.slow
def test_cuda_torch_compile(tiny_checkpoint: Path, jpegs: list[bytes]) -> None:
    from vitguard.model import load_classifier

    eager = load_classifier(str(tiny_checkpoint), settings=ModelSettings.model_construct(device="cuda"))
    compiled = load_classifier(str(tiny_checkpoint),
                               settings=ModelSettings.model_construct(device="cuda", torch_compile=True))
    batch = np.stack([eager.prepare(d) for d in jpegs])
    for a, b in zip(eager.predict(batch), compiled.predict(batch), strict=True):
        assert max(abs(a.scores[k] - b.scores[k]) for k in a.scores) < 1e-2


def test_a_strip_is_resized_around_its_crop_only(sample_photos: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """An 8 x 1,000,000 strip's plan is 384 x 48,000,000 (55 GB on the device): only the window around the
    crop is resized, close to the CPU path's pixels."""
    from torchvision.transforms.v2 import functional as tvf

    sizes: list[list[int]] = []
    real = tvf.resize

    def recording(image, size, *args, **kwargs):  # type: ignore[no-untyped-def]
        sizes.append(list(size))
        return real(image, size, *args, **kwargs)

    monkeypatch.setattr(tvf, "resize", recording)
    tensor, cpu = TensorPreprocessor(MARQO), Preprocessor(MARQO)
    for path in sample_photos[:3]:
        for shape in [(48, 3000), (3000, 48), (100, 1000)]:
            data = _jpeg(Image.open(path).convert("RGB").resize(shape))
            grey = np.abs(tensor(data) - cpu(data)) * 127.5
            assert grey.max() <= 8 and grey.mean() < 0.5, (path.name, shape, grey.max(), grey.mean())
    giant = io.BytesIO()
    Image.new("L", (8, 1_000_000), 200).save(giant, "PNG")
    sizes.clear()
    assert tensor(giant.getvalue()).shape == (3, 384, 384)
    assert sizes and all(h * w <= 8 * 384 * 384 for h, w in sizes), sizes
