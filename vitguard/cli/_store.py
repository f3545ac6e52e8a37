"""Opening the store from the command line (``vitguard search``, ``clusters``, ``retro-hunt`` without
``--worker``): ``VITGUARD_MILVUS_URI`` (a Milvus server, or a Lite file no worker holds), and the collection the
configured model writes unless ``--collection`` names one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vitguard.model.types import Classifier
    from vitguard.settings import Settings
    from vitguard.stores import MilvusEmbeddingIndex

__all__ = ["opened_store"]


@contextmanager
def opened_store(settings: Settings, collection: str | None,
                 classifier: Classifier | None = None) -> Iterator[tuple[MilvusEmbeddingIndex, str]]:
    """The index and its collection, opened; closed on leaving. Without ``collection`` the model names it
    (``classifier`` when the caller loaded it already, else the configured model, loaded here)."""
    from vitguard.stores import MilvusEmbeddingIndex

    if collection is None:
        from vitguard.stores.naming import collection_name

        if classifier is None:
            from vitguard.model import load_classifier

            classifier = load_classifier(settings.model)
        collection = collection_name(settings.milvus.collection_prefix, classifier.info)
    index = MilvusEmbeddingIndex(settings.milvus)
    try:
        index.open_collection(collection)
        yield index, collection
    finally:
        index.close()
