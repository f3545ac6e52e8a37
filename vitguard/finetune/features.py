"""Backbone features for the linear probe, extracted once in batches and cached.

The features are the pre-logits (``forward_head(x, pre_logits=True)``) before L2 normalisation: the input
of the classification head. The classifier's embedding is the same vector normalised; a head trained on
normalised vectors would see differently scaled inputs at inference and classify differently.
Images go through the classifier's own ``prepare``, the preprocessing used at inference, so the head is
trained on exactly the features it will be applied to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from vitguard.finetune.cache import FeatureCache, model_cache_key
from vitguard.finetune.data import SkippedImage
from vitguard.model.folder import decode_files

if TYPE_CHECKING:
    from vitguard.model.opennsfw import OpenNSFWClassifier
    from vitguard.model.torch_backend import TorchClassifier

    FeatureModel = TorchClassifier | OpenNSFWClassifier
    """What features are extracted from: a torch network, or open_nsfw's graph (its pooled features)."""

__all__ = ["ExtractedFeatures", "batch_features", "extract_features", "feature_identity", "forward_batch"]


def feature_identity(classifier: FeatureModel) -> dict[str, Any]:
    """Everything that changes the features: model name and weights version, preprocessing, precision."""
    info = classifier.info
    if _is_onnx(classifier):
        return {"name": info.name, "version": info.version, "input_size": list(info.input_size),
                "embedding_dim": info.embedding_dim, "features": "pooled", "precision": "fp32"}
    classifier = cast("TorchClassifier", classifier)
    return {
        "name": info.name,
        "version": info.version,
        "input_size": list(info.input_size),
        "embedding_dim": info.embedding_dim,
        "data_config": asdict(classifier.data_config),
        "features": "pre_logits",
        "precision": "fp16-autocast" if classifier.device.type == "cuda" else "fp32",
    }


def _is_onnx(classifier: FeatureModel) -> bool:
    from vitguard.model.opennsfw import OpenNSFWClassifier

    return isinstance(classifier, OpenNSFWClassifier)


def batch_features(classifier: FeatureModel, batch: NDArray[np.float32]) -> NDArray[np.float32]:
    """The un-normalised features a head on ``classifier`` takes, for a prepared batch."""
    if _is_onnx(classifier):
        return classifier.raw_features(batch)  # type: ignore[union-attr]
    return forward_batch(classifier, batch)[1]  # type: ignore[arg-type]


def forward_batch(
    classifier: TorchClassifier, batch: NDArray[np.float32]
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Logits and un-normalised pre-logits features of a prepared batch, computed as the classifier's own
    pass computes them (float32 on CPU, fp16 autocast on CUDA), with whatever head the module has now."""
    import torch

    from vitguard.model.torch_backend import forward_two_outputs

    module = classifier.module.eval()
    x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(classifier.device)
    with torch.inference_mode():
        if classifier.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type="cuda", dtype=torch.float16):
                logits, features = forward_two_outputs(module, x)
        else:
            logits, features = forward_two_outputs(module, x)
    return logits.float().cpu().numpy(), features.float().cpu().numpy()


class ExtractedFeatures:
    """Features of the readable images, which input positions they belong to, and what was skipped."""

    def __init__(self, features: NDArray[np.float32], kept: list[int], skipped: list[SkippedImage], hits: int) -> None:
        self.features = features
        self.kept = kept
        """Positions in the input ``paths`` of the rows of ``features``."""
        self.skipped = skipped
        self.cache_hits = hits


def _read(path: Path) -> tuple[bytes | None, str]:
    try:
        data = path.read_bytes()
    except OSError:
        return None, ""
    return data, hashlib.sha256(data).hexdigest()


@dataclass
class _Collected:
    """What :func:`extract_features` has gathered so far, chunk by chunk."""

    rows: dict[int, NDArray[np.float32]] = field(default_factory=dict)
    """Features by position in the input paths."""
    skipped: list[SkippedImage] = field(default_factory=list)
    hits: int = 0


@dataclass(frozen=True)
class _Pending:
    """A file that was read but whose features are not in the cache: it has to go through the model."""

    index: int
    digest: str
    data: bytes


def _cached(cache: FeatureCache | None, digest: str, dim: int) -> NDArray[np.float32] | None:
    """The cached features of a file, unless absent or of another size (then they are recomputed)."""
    if cache is None:
        return None
    vector = cache.get(digest)
    return vector if vector is not None and vector.shape == (dim,) else None


def _read_chunk(
    paths: Sequence[Path], chunk: range, cache: FeatureCache | None, dim: int, collected: _Collected
) -> list[_Pending]:
    """Read the chunk's files: cached features and unreadable files go into ``collected``; the rest is returned."""
    todo: list[_Pending] = []
    for i in chunk:
        data, digest = _read(paths[i])
        if data is None:
            collected.skipped.append(SkippedImage(paths[i], "not_an_image"))
        elif (vector := _cached(cache, digest, dim)) is not None:
            collected.rows[i] = vector
            collected.hits += 1
        else:
            todo.append(_Pending(i, digest, data))
    return todo


def _compute(
    classifier: FeatureModel,
    paths: Sequence[Path],
    todo: Sequence[_Pending],
    pool: ThreadPoolExecutor,
    cache: FeatureCache | None,
    collected: _Collected,
) -> None:
    """Decode the pending files and run the model on them; their features go into ``collected`` and the cache."""
    digests = {p.index: p.digest for p in todo}
    batch = decode_files(
        classifier.prepare,
        [paths[p.index] for p in todo],
        contents=[p.data for p in todo],
        indices=[p.index for p in todo],
        pool=pool,
    )
    collected.skipped += [SkippedImage(f.path, f.reason) for f in batch.failed]
    if not batch.decoded:
        return
    features = batch_features(classifier, batch.stack())
    for decoded, vector in zip(batch.decoded, features, strict=True):
        collected.rows[decoded.index] = vector
    if cache is not None:
        cache.put_many((digests[d.index], v) for d, v in zip(batch.decoded, features, strict=True))


def extract_features(
    classifier: FeatureModel,
    paths: Sequence[Path],
    *,
    cache_dir: Path | None = None,
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = True,
    desc: str = "extracting features",
) -> ExtractedFeatures:
    """Pre-logits features of every readable image, from the cache where possible.

    Images that cannot be read or decoded are skipped with the reason code of the
    :class:`~vitguard.errors.ImageDecodeError` that ``prepare`` raised. New features are written to the
    cache (one file per model identity under ``cache_dir``) at the end; ``cache_dir=None`` disables it.
    """
    cache = FeatureCache(cache_dir, model_cache_key(feature_identity(classifier))) if cache_dir else None
    dim = classifier.info.embedding_dim
    collected = _Collected()
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False)
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for start in range(0, len(paths), batch_size):
                chunk = range(start, min(start + batch_size, len(paths)))
                todo = _read_chunk(paths, chunk, cache, dim, collected)
                _compute(classifier, paths, todo, pool, cache, collected)
                bar.update(len(chunk))
    finally:
        bar.close()
        if cache is not None:
            cache.save()
    kept = sorted(collected.rows)
    features = np.stack([collected.rows[i] for i in kept]) if kept else np.zeros((0, dim), dtype=np.float32)
    return ExtractedFeatures(features.astype(np.float32, copy=False), kept, collected.skipped, collected.hits)
