"""Wiring a :class:`~vitguard.pipeline.runner.Runner` to the real services named in the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vitguard.model.types import Classifier
from vitguard.pipeline.runner import Runner
from vitguard.pipeline.types import OutputTopics, Sink
from vitguard.stores.interfaces import DedupStore, EmbeddingIndex, WaveCounter

if TYPE_CHECKING:
    from vitguard.fetch import ImageFetcher
    from vitguard.settings import Settings

__all__ = ["build_runner"]


def build_runner(
    settings: Settings,
    sink: Sink,
    *,
    topics: OutputTopics | None = None,
    classifier: Classifier | None = None,
    index: EmbeddingIndex | None = None,
    dedup: DedupStore | None = None,
    waves: WaveCounter | None = None,
    fetcher: ImageFetcher | None = None,
    **kwargs: Any,
) -> Runner:
    """A runner wired to the real services named in ``settings``; pass any dependency to override it.

    Loads the model when ``classifier`` is None (slow: seconds). Store clients connect lazily, so this
    does not fail when Milvus or Redis is down.
    """
    from vitguard.fetch import ImageFetcher
    from vitguard.model import load_classifier
    from vitguard.stores import MilvusEmbeddingIndex, RedisDedupStore, RedisWaveCounter

    t = settings.topics
    if settings.review.enabled:  # review requests: needs `vitguard review topics` first
        kwargs.setdefault("review", settings.review)
    return Runner(
        classifier=classifier or load_classifier(settings.model),
        fetcher=fetcher or ImageFetcher(settings.fetch),
        index=index or MilvusEmbeddingIndex(settings.milvus),
        dedup=dedup or RedisDedupStore(settings.redis),
        waves=waves or RedisWaveCounter(settings.redis, settings.policy),
        sink=sink,
        topics=topics or OutputTopics(t.verdicts, t.alerts, t.dead_letters,
                                      t.review_requests if settings.review.enabled else ""),
        policy=settings.policy,
        batch=settings.batch,
        milvus=settings.milvus,
        frames=settings.frames,
        hash_pdq=settings.banks.enabled,
        publish_timeout_s=max(settings.kafka.request_timeout_s, 5.0),
        max_in_flight=settings.worker.max_in_flight,
        **kwargs,
    )
