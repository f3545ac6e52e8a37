"""Publishing outputs through the Faust app's own producer, with one delivery result per message."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from vitguard.pipeline.types import OutMessage

__all__ = ["FaustSink"]


class FaustSink:
    """A :class:`~vitguard.pipeline.types.Sink` over Faust topics (raw bytes keys and values).

    ``topic.send`` buffers a message and returns a future that resolves when the broker acknowledged it (or
    fails with the broker's error); a message the producer refuses outright (e.g. larger than its max
    request size) raises from ``send`` itself. Both end up as that message's entry in the result.
    """

    def __init__(self, app: Any) -> None:
        self._app = app
        self._topics: dict[str, Any] = {}

    def _topic(self, name: str) -> Any:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                                    value_serializer="raw")
            self._topics[name] = topic
        return topic

    async def send(self, messages: Sequence[OutMessage]) -> list[BaseException | None]:
        pending: list[Any] = []
        for m in messages:
            if not m.topic:
                pending.append(None)
                continue
            try:
                pending.append(await self._topic(m.topic).send(key=m.key, value=m.value))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                pending.append(exc)
        results: list[BaseException | None] = []
        for p in pending:
            if p is None or isinstance(p, BaseException):
                results.append(p)
                continue
            try:
                await p
                results.append(None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                results.append(exc)
        return results
