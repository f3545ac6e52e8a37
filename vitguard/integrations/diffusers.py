"""vitguard as the safety checker of a diffusers pipeline (``pip install vitguard[diffusers]``).

::

    from vitguard.integrations.diffusers import VitguardSafetyChecker
    checker = VitguardSafetyChecker()                      # the configured model and policy (VITGUARD_*)
    pipe = StableDiffusionPipeline(..., safety_checker=checker, feature_extractor=CLIPImageProcessor())
    out = pipe(prompt)                                     # out.nsfw_content_detected: one bool per image
    checker.last_verdicts                                  # scores, label, PDQ hash, bank matches per image

:class:`VitguardSafetyChecker` is called as diffusers calls its stock ``StableDiffusionSafetyChecker``:
``checker(images=..., clip_input=...)`` returns ``(images, has_nsfw_concepts)``, the images with each flagged one
replaced (black, or blurred) and one bool per image. ``clip_input`` (the CLIP pixels the stock checker needs) is
accepted and ignored: vitguard classifies the images themselves, all of the pipeline's batch in one forward pass,
through the same model, preprocessing and policy as the worker (unsafe classes, threshold; a force_unsafe bank
match flags an image, as it does an upload). For any other pipeline, :meth:`VitguardSafetyChecker.check` takes PIL
images (or arrays) after the fact and returns the same, with the verdicts.

What the images are: a torch tensor ``(N, 3, H, W)`` in ``[-1, 1]`` (what StableDiffusion pipelines pass), a
numpy array ``(N, H, W, 3)`` in ``[0, 1]`` or uint8, or a list of PIL images. A flagged tensor image comes back
in ``[0, 1]``, as those pipelines expect (they do not denormalise flagged images): black is 0 either way.

Optionally streaming: with ``publisher`` (an :class:`~vitguard.producers.publisher.UploadEventPublisher` on the
images topic), every generated image is also published as an inline upload event, so it takes the uploads' path
through the workers: verdict topic, Milvus, hash banks, near-duplicate and wave alerts, review requests. The
in-process answer does not wait for it.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image, ImageFilter

from vitguard.pipeline.stages.match import under_policy
from vitguard.policy import resolve_unsafe_labels
from vitguard.schemas.events import BankMatch, ImageEvent

if TYPE_CHECKING:
    from vitguard.banks.matcher import BankMatcher
    from vitguard.model.types import Classifier
    from vitguard.policies.compiled import CompiledPolicy
    from vitguard.producers.publisher import UploadEventPublisher
    from vitguard.settings import PolicySettings, Settings

__all__ = ["CheckResult", "GeneratedImageVerdict", "Replacement", "VitguardSafetyChecker"]

Replacement = Literal["black", "blur"]


@dataclass(frozen=True)
class GeneratedImageVerdict:
    """What vitguard said of one generated image."""

    content_id: str
    """``gen-`` and the first 32 hex digits of SHA-256 of its pixels (with its size): stable per image."""
    label: Literal["safe", "unsafe"]
    unsafe_score: float
    scores: dict[str, float]
    flagged: bool
    """Replaced: the model's label is unsafe, or a force_unsafe bank entry matched."""
    label_source: Literal["model", "bank"] = "model"
    pdq_hash: str | None = None
    pdq_quality: int | None = None
    bank_matches: list[BankMatch] = field(default_factory=list)
    action: str = ""
    """The policy's action (allow, review, block or a custom one; block for a force_unsafe bank match)."""
    policy: str | None = None
    policy_version: str | None = None


@dataclass(frozen=True)
class CheckResult:
    """Images (flagged ones replaced), one bool per image, and the verdicts."""

    images: Any
    has_nsfw_concepts: list[bool]
    verdicts: list[GeneratedImageVerdict]


def _judge(policy: PolicySettings, settings: Settings, labels: Sequence[str], unsafe: Sequence[str],
           threshold: float | None, tenant: str, name: str | None) -> CompiledPolicy:
    """The policy that judges the images: ``threshold`` alone, else the document in force (or the settings)."""
    from vitguard.policies.compiled import threshold_policy
    from vitguard.policies.live import read_policies

    if threshold is not None:
        return threshold_policy(labels, unsafe, threshold)
    book = read_policies(policy, settings.kafka, labels, unsafe, None).book
    if name is not None and book.named(name) is None:
        raise ValueError(f"policy {name!r}: the policy document in force ({book.version}) has no such policy")
    return book.pick(tenant, None, name)


class VitguardSafetyChecker(torch.nn.Module):
    """A drop-in ``safety_checker`` for diffusers pipelines (see the module docstring).

    Args:
        classifier: a loaded vitguard classifier; default: ``VITGUARD_MODEL_SPEC``'s.
        policy: unsafe classes and threshold; default: ``VITGUARD_POLICY_*``, and the policy document of
            ``VITGUARD_POLICY_FILE`` or ``_TOPIC`` when one is set (read once: docs/policies.md).
        threshold: judge by this unsafe threshold alone (no policy document).
        replacement: ``black`` (as the stock checker) or ``blur``.
        banks: a bank matcher (hash banks loaded by the caller); None: no hashing, no bank matches.
        publisher: also publish each image as an upload event (the streaming path); None: in-process only.
        tenant: the events' tenant, whose policy of the document judges the images.
        policy_name: judge under this policy of the document instead of the tenant's.
    """

    def __init__(self, classifier: Classifier | None = None, *, policy: PolicySettings | None = None,
                 threshold: float | None = None, replacement: Replacement = "black", banks: BankMatcher | None = None,
                 publisher: UploadEventPublisher | None = None, tenant: str = "default",
                 policy_name: str | None = None) -> None:
        super().__init__()
        if replacement not in ("black", "blur"):
            raise ValueError(f"replacement is 'black' or 'blur', not {replacement!r}")
        from vitguard.settings import load_settings

        settings = load_settings()
        policy = policy or settings.policy
        if classifier is None:
            from vitguard.model import load_classifier

            classifier = load_classifier(settings.model)
        self.classifier = classifier
        info = classifier.info
        unsafe_labels = resolve_unsafe_labels(info.labels, policy, info.unsafe_labels)
        self.judge = _judge(policy, settings, info.labels, unsafe_labels, threshold, tenant, policy_name)
        """The policy every image is judged under."""
        self.replacement: Replacement = replacement
        self.banks = banks
        self.publisher = publisher
        self.tenant = tenant
        self.last_verdicts: list[GeneratedImageVerdict] = []
        # where the pipeline put its modules: `pipe.to(...)` moves this, and diffusers reads a module's
        # device and dtype (the vitguard model runs where its own settings say)
        self.register_buffer("_placement", torch.zeros(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._anchor().device

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor().dtype

    def _anchor(self) -> torch.Tensor:
        return self.get_buffer("_placement")

    def forward(self, images: Any, clip_input: Any = None) -> tuple[Any, list[bool]]:  # noqa: ARG002 - the stock signature
        """diffusers' call: ``(images, has_nsfw_concepts)``; the verdicts are in :attr:`last_verdicts`."""
        result = self.check(images)
        return result.images, result.has_nsfw_concepts

    def check(self, images: Any) -> CheckResult:
        """Classify every image in one forward pass; replace the flagged ones."""
        pixels = _to_uint8(images)
        if not pixels:
            self.last_verdicts = []
            return CheckResult(images, [], [])
        pictures = [Image.fromarray(p) for p in pixels]
        batch = np.stack([self.classifier.prepare_image(p) for p in pictures])
        predictions = self.classifier.predict(batch)
        hashes = self._hashes(pixels)
        matches = self._bank_matches(hashes)
        verdicts = [self._verdict(p, pred.scores, hashes[i], matches[i]) for i, (p, pred) in
                    enumerate(zip(pixels, predictions, strict=True))]
        self.last_verdicts = verdicts
        flagged = [v.flagged for v in verdicts]
        if self.publisher is not None:
            self._publish(pictures, verdicts)
        return CheckResult(self._replace(images, pictures, flagged), flagged, verdicts)

    # -- parts -----------------------------------------------------------------------------------------

    def _hashes(self, pixels: Sequence[NDArray[np.uint8]]) -> list[tuple[str, int] | None]:
        if self.banks is None:
            return [None] * len(pixels)
        from vitguard.banks.signal import PdqSignal

        out: list[tuple[str, int] | None] = []
        for p in pixels:
            hashed = PdqSignal.hash_pixels(p)
            out.append((hashed.hex, hashed.quality))
        return out

    def _bank_matches(self, hashes: Sequence[tuple[str, int] | None]) -> list[list[BankMatch]]:
        if self.banks is None:
            return [[] for _ in hashes]
        return self.banks.match_batch([h[0] if h else None for h in hashes], [h[1] if h else None for h in hashes],
                                      counts=[False] * len(hashes))  # a generator's checks never trip the flood guard

    def _verdict(self, pixels: NDArray[np.uint8], scores: dict[str, float], hashed: tuple[str, int] | None,
                 matches: list[BankMatch]) -> GeneratedImageVerdict:
        decision = self.judge.decide(scores)
        matches = under_policy(matches, self.judge.banks)
        forced = any(m.action == "force_unsafe" and not m.negative and not m.quarantined for m in matches)
        label: Literal["safe", "unsafe"] = "unsafe" if forced else decision.label
        return GeneratedImageVerdict(
            content_id=_content_id(pixels), label=label, unsafe_score=decision.unsafe_score, scores=dict(scores),
            flagged=label == "unsafe", label_source="bank" if forced and decision.label == "safe" else "model",
            pdq_hash=hashed[0] if hashed else None, pdq_quality=hashed[1] if hashed else None, bank_matches=matches,
            action="block" if forced else decision.action, policy=decision.policy,
            policy_version=decision.policy_version,
        )

    def _replace(self, images: Any, pictures: Sequence[Image.Image], flagged: Sequence[bool]) -> Any:
        if not any(flagged):
            return images
        if isinstance(images, list | tuple):
            return [_as_input(self._replacement(p), like) if hit else like
                    for p, like, hit in zip(pictures, images, flagged, strict=True)]
        out = images.clone() if isinstance(images, torch.Tensor) else images.copy()
        for i, (picture, hit) in enumerate(zip(pictures, flagged, strict=True)):
            if hit:
                out[i] = _as_input(self._replacement(picture), images[i])
        return out

    def _replacement(self, picture: Image.Image) -> Image.Image:
        if self.replacement == "black":
            return Image.new("RGB", picture.size)
        return picture.filter(ImageFilter.GaussianBlur(radius=max(8.0, min(picture.size) / 6)))

    def _publish(self, pictures: Sequence[Image.Image], verdicts: Sequence[GeneratedImageVerdict]) -> None:
        assert self.publisher is not None  # noqa: S101 - checked by the caller
        for picture, verdict in zip(pictures, verdicts, strict=True):
            with io.BytesIO() as buf:
                picture.save(buf, format="PNG")
                ref = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
            self.publisher.publish(ImageEvent(content_id=verdict.content_id, image_ref=ref, tenant=self.tenant,
                                              metadata={"source": "diffusers"}))
        self.publisher.poll(0)


def _content_id(pixels: NDArray[np.uint8]) -> str:
    digest = hashlib.sha256(f"{pixels.shape}".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return "gen-" + digest.hexdigest()[:32]


def _to_uint8(images: Any) -> list[NDArray[np.uint8]]:
    """Each image as ``H x W x 3`` uint8 RGB (see the module docstring for the accepted forms)."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images as a (N, 3, H, W) tensor, got {tuple(images.shape)}")
        scaled = ((images.detach().float().cpu() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return list(scaled.permute(0, 2, 3, 1).numpy())
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images as a (N, H, W, 3) array, got {images.shape}")
        if images.dtype == np.uint8:
            return list(images)
        return list((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
    if isinstance(images, list | tuple):
        return [_one_to_uint8(image) for image in images]
    raise TypeError(f"expected a tensor, an array or a list of images, got {type(images).__name__}")


def _one_to_uint8(image: Any) -> NDArray[np.uint8]:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    return _to_uint8(image[None] if isinstance(image, torch.Tensor | np.ndarray) else image)[0]


def _as_input(picture: Image.Image, like: Any) -> Any:
    """A replacement image in the form of the one it replaces (a tensor in ``[0, 1]``: see the module docstring)."""
    rgb = np.asarray(picture.convert("RGB"))
    if isinstance(like, torch.Tensor):
        return torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1).to(like.dtype).to(like.device)
    if isinstance(like, np.ndarray):
        return rgb if like.dtype == np.uint8 else (rgb.astype(np.float32) / 255).astype(like.dtype)
    return picture
