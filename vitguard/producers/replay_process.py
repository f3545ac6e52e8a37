"""Back-testing: moderate replayed events in-process with another model, away from production outputs.

:class:`ProcessHandler` feeds replayed records to the pipeline's
:class:`~vitguard.pipeline.Runner` in batches. What keeps production untouched:

* verdicts go to the replay's ``verdict_topic`` (which must differ from the production one); alerts and
  dead letters go to their own topics only when named, otherwise they are counted and dropped;
* every verdict carries ``replay_id`` (set on the event before processing) and the model's version; the
  original event id is kept, so back-test verdicts join production verdicts on ``event_id``;
* Redis state (redelivery guard, verdict cache, wave counters) lives under a key prefix of its own per
  replay id, so the replay neither skips events production already saw, nor reuses cached verdicts of
  another model, nor inflates production wave counts; a record the same replay processes twice (after a
  crash) is still recognised and skipped;
* Milvus upserts go to the model's own collection, keyed by content id, so they stay idempotent.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vitguard.errors import ConfigError, InputError
from vitguard.producers.replay import SourceRecord
from vitguard.schemas.events import parse_image_event
from vitguard.settings import Settings

if TYPE_CHECKING:
    from vitguard.consumers.sink import KafkaSink
    from vitguard.pipeline import OutMessage, Runner

__all__ = [
    "BacktestSink",
    "ProcessHandler",
    "backtest_settings",
    "build_backtest_processor",
    "check_backtest_topics",
]


def backtest_settings(settings: Settings, *, replay_id: str, model_spec: str) -> Settings:
    """``settings`` with the replay's model and a Redis key prefix of its own (see the module docstring)."""
    model = settings.model.model_copy(update={"spec": model_spec})
    redis = settings.redis.model_copy(update={"key_prefix": f"{settings.redis.key_prefix}replay:{replay_id}:",
                                              "cluster_rows_ttl_s": 0})  # a what-if keeps no cluster rows
    return settings.model_copy(update={"model": model, "redis": redis})


class BacktestSink:
    """The pipeline's Kafka sink restricted to the replay's topics: kinds without a topic (an empty topic
    name in the runner's :class:`~vitguard.pipeline.OutputTopics`) are dropped and counted instead of
    reaching production."""

    def __init__(self, inner: KafkaSink) -> None:
        self.inner = inner
        self.dropped: Counter[str] = Counter()

    async def send(self, messages: Sequence[OutMessage]) -> list[BaseException | None]:
        for m in messages:
            if not m.topic:
                kind = "dead_letters" if b'"reason"' in m.value and b'"payload"' in m.value else "alerts"
                self.dropped[f"{kind}_not_published"] += 1
        return await self.inner.send(messages)


def check_backtest_topics(
    settings: Settings, verdict_topic: str, alert_topic: str | None = None, dead_letter_topic: str | None = None
) -> None:
    """Refuse output topics that are production topics.

    Raises:
        ConfigError: one of them is named in ``settings.topics``.
    """
    production = set(settings.topics.all())
    for name, topic in (("--verdict-topic", verdict_topic), ("--alert-topic", alert_topic),
                        ("--dead-letter-topic", dead_letter_topic)):
        if topic is not None and topic in production:
            raise ConfigError(f"{name} {topic!r} is a production topic; a back-test must write elsewhere")


def build_backtest_processor(
    settings: Settings,
    *,
    replay_id: str,
    model_spec: str,
    verdict_topic: str,
    alert_topic: str | None = None,
    dead_letter_topic: str | None = None,
) -> tuple[Runner, BacktestSink]:
    """A batch processor with the replay's model, Redis prefix and output topics.

    Raises:
        ConfigError: an output topic is a production topic.
        ModelLoadError: the model spec cannot be loaded.
    """
    from vitguard.consumers.sink import KafkaSink
    from vitguard.pipeline import OutputTopics, build_runner

    check_backtest_topics(settings, verdict_topic, alert_topic, dead_letter_topic)
    scoped = backtest_settings(settings, replay_id=replay_id, model_spec=model_spec)
    topics = OutputTopics(verdicts=verdict_topic, alerts=alert_topic or "", dead_letters=dead_letter_topic or "")
    sink = BacktestSink(KafkaSink(scoped.kafka, topics))
    return build_runner(scoped, sink, topics=topics), sink


class ProcessHandler:
    """A :class:`~vitguard.producers.replay.RecordHandler` that moderates records in batches.

    ``flush`` processes the partial batch; :meth:`Runner.process` returns only after the batch's
    outputs are acknowledged, which is what a replay checkpoint needs.
    """

    def __init__(self, processor: Runner, replay_id: str, batch_size: int = 16) -> None:
        from vitguard.pipeline import RawMessage

        self._raw_message = RawMessage
        self.processor = processor
        self.replay_id = replay_id
        self.batch_size = batch_size
        self._batch: list[RawMessage] = []
        self._loop = asyncio.new_event_loop()
        self.counts: Counter[str] = Counter()

    def handle(self, record: SourceRecord) -> str | None:
        value = record.value
        if value is not None:
            try:
                event = parse_image_event(value)
            except InputError:
                pass  # the processor dead-letters it with the right reason
            else:
                value = event.model_copy(update={"replay_id": self.replay_id}).model_dump_json().encode("utf-8")
        self._batch.append(self._raw_message(value, record.key, record.topic, record.partition, record.offset))
        if len(self._batch) >= self.batch_size:
            self._run()
        return None

    def flush(self) -> None:
        if self._batch:
            self._run()

    def _run(self) -> None:
        batch, self._batch = self._batch, []
        outcome = self._loop.run_until_complete(self.processor.process(batch))
        self.counts["verdicts"] += len(outcome.verdicts)
        self.counts["unsafe"] += sum(1 for v in outcome.verdicts if v.label == "unsafe")
        self.counts["alerts"] += len(outcome.alerts)
        self.counts["dead_letters"] += len(outcome.dead_letters)
        self.counts["skipped_already_processed"] += len(outcome.skipped)

    def close(self) -> None:
        """Process what is left, then release the processor and the event loop."""
        try:
            self.flush()
        finally:
            try:
                self._loop.run_until_complete(self.processor.close())
            finally:
                self._loop.close()
