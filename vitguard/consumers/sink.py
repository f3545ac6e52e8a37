"""Publishing a batch's outputs through the Faust app's own producer, waiting for the broker's acks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from vitguard.pipeline.sinks import OutputTopics, encode_outputs
from vitguard.schemas.events import DeadLetter, NearDuplicateAlert, Verdict

__all__ = ["FaustSink"]


class FaustSink:
    """A :class:`~vitguard.pipeline.types.Sink` over Faust topics (raw bytes keys and values).

    ``topic.send`` only buffers a message; the future it returns resolves when the broker acknowledged
    it. ``publish`` awaits every future, so the agent never asks for the next batch (which acks, and
    later commits, this one) before its outputs are durable.
    """

    def __init__(self, app: Any, topics: OutputTopics) -> None:
        self.topics = topics
        self._faust_topics = {
            name: app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
            for name in {topics.verdicts, topics.alerts, topics.dead_letters}
        }

    async def publish(
        self,
        verdicts: Sequence[Verdict],
        alerts: Sequence[NearDuplicateAlert],
        dead_letters: Sequence[DeadLetter],
    ) -> None:
        futures = []
        for topic, key, value in encode_outputs(self.topics, verdicts, alerts, dead_letters):
            futures.append(await self._faust_topics[topic].send(key=key, value=value))
        if futures:
            await asyncio.gather(*futures)
