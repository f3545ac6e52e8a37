"""The streaming pipeline: stages (:mod:`~vitguard.pipeline.stages`, in flow order) composed by a runtime
(:mod:`~vitguard.pipeline.runtime`).

Entry point for anything that moderates a stream (the Faust agent, ``vitguard replay``, ``POST /classify``,
tests): :class:`Runner` — ``submit(raw) -> future`` per event, ``process(list[RawMessage]) -> BatchOutcome``
for a batch, ``classify(...)`` for one image now. Each dependency's failure policy is in
:mod:`~vitguard.pipeline.runtime.failure`.
"""

from __future__ import annotations

from vitguard.pipeline.results import Answered, DeadLettered, ItemResult, Skipped
from vitguard.pipeline.runtime.build import build_runner
from vitguard.pipeline.runtime.runner import Runner
from vitguard.pipeline.runtime.sinks import ListSink
from vitguard.pipeline.types import BatchOutcome, OutMessage, OutputTopics, RawMessage, Sink

__all__ = [
    "Answered",
    "BatchOutcome",
    "DeadLettered",
    "ItemResult",
    "ListSink",
    "OutMessage",
    "OutputTopics",
    "RawMessage",
    "Runner",
    "Sink",
    "Skipped",
    "build_runner",
]
