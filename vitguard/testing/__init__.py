"""Helpers for tests of vitguard and of the systems around it: real local services, tiny models, workers.

Documented for users' own integration tests (see the README's Development section). Nothing in the
worker's runtime path imports this package.
"""

from __future__ import annotations

from vitguard.testing.models import make_tiny_checkpoint
from vitguard.testing.services import (
    LocalService,
    create_topics,
    docker_available,
    free_port,
    kafka_reachable,
    redis_reachable,
    start_broker,
    start_redis,
    wait_for,
)
from vitguard.testing.worker import OutputReader, Outputs, WorkerProcess, publish_raw, settings_env

__all__ = [
    "LocalService",
    "OutputReader",
    "Outputs",
    "WorkerProcess",
    "create_topics",
    "docker_available",
    "free_port",
    "kafka_reachable",
    "make_tiny_checkpoint",
    "publish_raw",
    "redis_reachable",
    "settings_env",
    "start_broker",
    "start_redis",
    "wait_for",
]
