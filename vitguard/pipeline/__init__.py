"""The streaming pipeline: pure batch logic (parsing, policy, clustering, alerts) and the batch processor.

Entry point for anything that moderates a stream (the Faust agent, ``vitguard replay``, tests):
:class:`BatchProcessor` and its ``process(list[RawMessage]) -> BatchOutcome``.
"""

from __future__ import annotations

from vitguard.pipeline.processor import BatchProcessor, PreparedBatch, build_processor
from vitguard.pipeline.sinks import KafkaSink, ListSink, OutputTopics, encode_outputs
from vitguard.pipeline.types import BatchOutcome, RawMessage, Sink

__all__ = [
    "BatchOutcome",
    "BatchProcessor",
    "KafkaSink",
    "ListSink",
    "OutputTopics",
    "PreparedBatch",
    "RawMessage",
    "Sink",
    "build_processor",
    "encode_outputs",
]
