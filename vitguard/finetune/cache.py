"""On-disk cache of backbone features, keyed by image content and model identity.

Extracting features is the slow part of a linear probe (a forward pass per image); training the head on
them takes seconds. The cache makes a second run on the same images (another seed, other
hyper-parameters, a larger folder) pay only for the new images. An entry is found by the SHA-256 of the
image file's bytes, so renaming or moving files costs nothing, and each model gets its own file, named by
a hash of its identity (name, weights version, input size, preprocessing), so features of different models
or preprocessing are never mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["FeatureCache", "model_cache_key"]


def model_cache_key(identity: Mapping[str, Any]) -> str:
    """A file-name-safe key for a model identity: a readable name part plus a hash of the whole identity."""
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(identity.get("name", "model")))[:60]
    return f"{name}-{hashlib.sha256(blob).hexdigest()[:16]}"


class FeatureCache:
    """Features of one model: ``{sha256 hex of image bytes: float32 vector}``, stored in one ``.npz`` file.

    Loaded whole on construction and written whole by :meth:`save` (atomically: a crash leaves the old
    file). That suits folders up to a few hundred thousand images (192-d features: ~80 MB per 100k).
    """

    def __init__(self, directory: Path, key: str) -> None:
        self.path = Path(directory) / f"{key}.npz"
        self._features: dict[str, NDArray[np.float32]] = {}
        self._dirty = False
        if self.path.exists():
            try:
                with np.load(self.path, allow_pickle=False) as data:
                    for digest, vector in zip(data["digests"].tolist(), data["features"], strict=True):
                        self._features[str(digest)] = vector.astype(np.float32)
            except (OSError, ValueError, KeyError):
                self._features = {}  # unreadable cache: start over, it only costs time

    def __len__(self) -> int:
        return len(self._features)

    def __contains__(self, digest: object) -> bool:
        return digest in self._features

    def get(self, digest: str) -> NDArray[np.float32] | None:
        return self._features.get(digest)

    def put_many(self, entries: Iterable[tuple[str, NDArray[np.float32]]]) -> None:
        for digest, vector in entries:
            self._features[digest] = np.asarray(vector, dtype=np.float32)
            self._dirty = True

    def save(self) -> None:
        """Write the cache if anything was added since it was loaded."""
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        digests = np.array(list(self._features), dtype="U64")
        features = np.stack(list(self._features.values())) if self._features else np.zeros((0, 0), np.float32)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, digests=digests, features=features)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._dirty = False
