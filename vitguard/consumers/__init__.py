"""The Faust side of the pipeline: the app with its moderation agent, web views and the worker runner."""

from __future__ import annotations

from vitguard.consumers.app import WorkerRuntime, abandon, create_app, faust_broker_url
from vitguard.consumers.sink import FaustSink
from vitguard.consumers.topics import ensure_topics
from vitguard.consumers.worker import run_worker

__all__ = ["FaustSink", "WorkerRuntime", "abandon", "create_app", "ensure_topics", "faust_broker_url", "run_worker"]
