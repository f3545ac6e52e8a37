"""The streaming pipeline: stages composed by a runner.

Entry point for anything that moderates a stream (the Faust agent, ``vitguard replay``, ``POST /classify``,
tests): :class:`Runner` — ``submit(raw) -> future`` per event, ``process(list[RawMessage]) -> BatchOutcome``
for a batch, ``classify(...)`` for one image now. The stages, in order: :mod:`~vitguard.pipeline.ingest`,
:mod:`~vitguard.pipeline.fetch`, :mod:`~vitguard.pipeline.decode`, :mod:`~vitguard.pipeline.infer`,
:mod:`~vitguard.pipeline.index`, :mod:`~vitguard.pipeline.alert`, :mod:`~vitguard.pipeline.emit`; each
dependency's failure policy is in :mod:`~vitguard.pipeline.failure`.
"""

from __future__ import annotations

from vitguard.pipeline.build import build_runner
from vitguard.pipeline.results import Answered, DeadLettered, ItemResult, Skipped
from vitguard.pipeline.runner import Runner
from vitguard.pipeline.sinks import KafkaSink, ListSink
from vitguard.pipeline.types import BatchOutcome, OutMessage, OutputTopics, RawMessage, Sink

__all__ = [
    "Answered",
    "BatchOutcome",
    "DeadLettered",
    "ItemResult",
    "KafkaSink",
    "ListSink",
    "OutMessage",
    "OutputTopics",
    "RawMessage",
    "Runner",
    "Sink",
    "Skipped",
    "build_runner",
]
