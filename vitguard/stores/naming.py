"""Milvus collection names: one collection per model, so embeddings of different models never mix."""

from __future__ import annotations

import hashlib
import re

from vitguard.errors import ConfigError
from vitguard.model.types import ModelInfo

__all__ = ["MAX_COLLECTION_NAME", "collection_name"]

MAX_COLLECTION_NAME = 255
_VALID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def collection_name(prefix: str, model: ModelInfo) -> str:
    """``prefix + model.collection_suffix``, made valid for Milvus.

    Milvus allows letters, digits and underscores, at most 255 characters, not starting with a digit.
    A name that would be too long keeps its start and gets a hash of the whole name, so two models still
    get two collections.

    Raises:
        ConfigError: the prefix itself is not a valid name start.
    """
    name = re.sub(r"[^A-Za-z0-9_]", "_", prefix + model.collection_suffix)
    if len(name) > MAX_COLLECTION_NAME:
        digest = hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:16]
        name = f"{name[: MAX_COLLECTION_NAME - 17]}_{digest}"
    if not _VALID.match(name):
        raise ConfigError(
            f"Milvus collection name {name[:40]!r} must start with a letter or underscore: "
            "set VITGUARD_MILVUS_COLLECTION_PREFIX to one that does"
        )
    return name
