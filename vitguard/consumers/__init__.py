"""The Faust side of the pipeline: the app with its thin agent, web views, and the worker process."""

from __future__ import annotations

from vitguard.consumers.app import WorkerRuntime, create_app
from vitguard.consumers.sink import KafkaSink
from vitguard.consumers.topics import ensure_topics
from vitguard.consumers.worker import run_worker
from vitguard.kafka.faust.offsets import OffsetTracker, abandon

__all__ = ["KafkaSink", "OffsetTracker", "WorkerRuntime", "abandon", "create_app", "ensure_topics", "run_worker"]
