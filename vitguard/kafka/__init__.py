"""vitguard's one Kafka layer: connection config, topic admin, offsets, produce-and-wait, typed reader,
broker limits, and the Faust consumer override.

Everything that talks to Kafka (the worker, the publisher, replay, subscribers, the CLI, tests and dev
tools) goes through these modules; broker-specific workarounds live in :mod:`vitguard.kafka.coarse_offsets`.
"""

from __future__ import annotations

from vitguard.kafka.admin import TopicAdmin, TopicNotFoundError, TopicSpec
from vitguard.kafka.config import KAFKA_LOGGER, faust_broker_kwargs, faust_credentials, librdkafka_config
from vitguard.kafka.limits import DEFAULT_MAX_MESSAGE_BYTES, read_output_limits

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "KAFKA_LOGGER",
    "TopicAdmin",
    "TopicNotFoundError",
    "TopicSpec",
    "faust_broker_kwargs",
    "faust_credentials",
    "librdkafka_config",
    "read_output_limits",
]
