"""Wiring a :class:`~vitguard.pipeline.runtime.runner.Runner` to the real services named in the settings."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from vitguard.model.types import Classifier
from vitguard.pipeline.runtime.runner import Runner
from vitguard.pipeline.types import OutputTopics, Sink
from vitguard.stores.interfaces import DedupStore, EmbeddingIndex, WaveCounter

if TYPE_CHECKING:
    from vitguard.fetch import ImageFetcher
    from vitguard.settings import BatchSettings, Settings

__all__ = ["build_runner", "output_topics", "publish_timeout_s", "sized_for_device"]

_log = logging.getLogger(__name__)


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
    from vitguard.stores.cluster_rows import RedisClusterRows

    if settings.review.enabled:  # review requests: needs `vitguard review topics` first
        kwargs.setdefault("review", settings.review)
    if settings.redis.cluster_rows_ttl_s > 0:
        kwargs.setdefault("cluster_rows", RedisClusterRows(settings.redis))
    classifier = classifier or load_classifier(settings.model)
    batch, max_in_flight = sized_for_device(settings, classifier)
    return Runner(
        classifier=classifier,
        fetcher=fetcher or ImageFetcher(settings.fetch),
        index=index or MilvusEmbeddingIndex(settings.milvus),
        dedup=dedup or RedisDedupStore(settings.redis),
        waves=waves or RedisWaveCounter(settings.redis, settings.policy),
        sink=sink,
        topics=topics or output_topics(settings),
        policy=settings.policy,
        batch=batch,
        milvus=settings.milvus,
        frames=settings.frames,
        hash_pdq=settings.banks.enabled,
        publish_timeout_s=publish_timeout_s(settings),
        max_in_flight=max_in_flight,
        **kwargs,
    )


def output_topics(settings: Settings) -> OutputTopics:
    """The worker's output topics (review requests only when review is on)."""
    t = settings.topics
    return OutputTopics(t.verdicts, t.alerts, t.dead_letters, t.review_requests if settings.review.enabled else "",
                        settings.policy.shadow_topic or "")


def publish_timeout_s(settings: Settings) -> float:
    """Longest one round of acknowledgements may take (the runner's, and the producer's delivery timeout)."""
    return max(settings.kafka.request_timeout_s, 5.0)


def sized_for_device(settings: Settings, classifier: Any) -> tuple[BatchSettings, int]:
    """The batch settings and in-flight bound for ``classifier``'s device.

    A classifier that prefers larger batches than ``VITGUARD_BATCH_MAX_SIZE`` (the torch backend on CUDA:
    ``VITGUARD_MODEL_CUDA_BATCH_SIZE``, 256) gets them, with room for two batches in flight and no short
    passes for /classify (``request_max_size`` 0), unless the operator set those settings; on the CPU nothing
    changes.
    """
    batch, in_flight = settings.batch, settings.worker.max_in_flight
    preferred = getattr(classifier, "preferred_batch_size", None)
    if not isinstance(preferred, int) or preferred <= batch.max_size or "max_size" in batch.model_fields_set:
        return batch, in_flight
    if "max_in_flight" not in settings.worker.model_fields_set:
        in_flight = max(in_flight, 2 * preferred)
    update: dict[str, int] = {"max_size": preferred}
    if "request_max_size" not in batch.model_fields_set:
        update["request_max_size"] = 0  # small passes waste the device: requests take half of full ones
    _log.info("batches of up to %d images for the model's device (%d in flight at most)", preferred, in_flight)
    return batch.model_copy(update=update), in_flight
