"""One topic admin: create topics, ask which exist and with how many partitions, describe configs.

Errors are read from confluent-kafka's error *codes* (``KafkaError.TOPIC_ALREADY_EXISTS``,
``UNKNOWN_TOPIC_OR_PART`` ...), never from message text, and mapped to vitguard's errors:
:class:`~vitguard.errors.ServiceUnavailableError` when the cluster does not answer,
:class:`TopicNotFoundError` when a topic is missing. Used by the worker's start-up
(:func:`vitguard.consumers.topics.ensure_topics`), the test services and every tool that checks a topic.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic  # type: ignore[attr-defined]

from vitguard.errors import ServiceUnavailableError, VitguardError
from vitguard.kafka.config import librdkafka_config
from vitguard.kafka.errors import MISSING_TOPIC_CODES, kafka_error, kafka_reason
from vitguard.settings import KafkaSettings

__all__ = [
    "TopicAdmin",
    "TopicNotFoundError",
    "TopicSpec",
    "ensure_state_topic",
]

_WAIT_POLL_S = 0.1


class TopicNotFoundError(VitguardError):
    """A topic vitguard was asked to read or write does not exist (vitguard never auto-creates topics)."""


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: name, partitions, replication factor and topic configs (``retention.ms`` ...)."""

    name: str
    partitions: int = 1
    replication_factor: int = 1
    config: Mapping[str, str] = field(default_factory=dict)


class TopicAdmin:
    """Topic administration on one cluster.

    Args:
        kafka: connection settings.
        timeout_s: per-request timeout; default ``kafka.request_timeout_s``.
        client: an ``AdminClient`` to use instead of building one (the I/O seam).
    """

    def __init__(self, kafka: KafkaSettings, *, timeout_s: float | None = None, client: Any = None) -> None:
        self.kafka = kafka
        self.timeout_s = timeout_s or kafka.request_timeout_s
        self._client: Any = client or AdminClient(librdkafka_config(kafka))

    # -- asking ----------------------------------------------------------------------------------------

    def topics(self) -> dict[str, list[int]]:
        """Every usable topic and its partition ids.

        All topics' metadata is requested rather than one topic's: asking for a topic by name makes a
        broker with ``auto.create.topics.enable`` create it, which would hide a typo.

        Raises:
            ServiceUnavailableError: no broker answered within the timeout.
        """
        try:
            metadata = self._client.list_topics(timeout=self.timeout_s)
        except KafkaException as exc:
            raise ServiceUnavailableError(
                f"Kafka at {self.kafka.bootstrap_servers} did not answer within {self.timeout_s:g}s "
                f"({kafka_reason(exc)})"
            ) from exc
        return {name: sorted(t.partitions) for name, t in metadata.topics.items() if t.error is None}

    def exists(self, topic: str) -> bool:
        """Whether ``topic`` exists (and is usable)."""
        return topic in self.topics()

    def partitions(self, topic: str) -> list[int]:
        """The partition ids of ``topic``.

        Raises:
            ServiceUnavailableError: no broker answered.
            TopicNotFoundError: the topic does not exist.
        """
        found = self.topics().get(topic)
        if found is None:
            raise TopicNotFoundError(f"topic {topic!r} does not exist on {self.kafka.bootstrap_servers}")
        return found

    def topic_config(self, topic: str) -> dict[str, str]:
        """The topic's effective configs (``max.message.bytes``, ``retention.ms`` ...), as the broker says.

        Raises:
            TopicNotFoundError: the broker says the topic does not exist.
            ServiceUnavailableError: the broker did not answer the describe (or refused it).
        """
        return self._describe(ConfigResource(ConfigResource.Type.TOPIC, topic), f"topic {topic!r}")

    def broker_config(self, broker_id: int | None = None) -> dict[str, str]:
        """One broker's configs (``message.max.bytes`` ...); the controller's (or any one's) by default.

        Raises:
            ServiceUnavailableError: no answer, or the broker refused the describe.
        """
        if broker_id is None:
            try:
                metadata = self._client.list_topics(timeout=self.timeout_s)
            except KafkaException as exc:
                raise ServiceUnavailableError(f"Kafka did not answer a metadata request: {kafka_reason(exc)}") from exc
            ids = sorted(metadata.brokers)
            if not ids:
                raise ServiceUnavailableError(f"Kafka at {self.kafka.bootstrap_servers} reports no brokers")
            broker_id = metadata.controller_id if metadata.controller_id in metadata.brokers else ids[0]
        return self._describe(ConfigResource(ConfigResource.Type.BROKER, str(broker_id)), f"broker {broker_id}")

    def _describe(self, resource: Any, what: str) -> dict[str, str]:
        try:
            futures = self._client.describe_configs([resource], request_timeout=self.timeout_s)
            entries = next(iter(futures.values())).result(timeout=self.timeout_s + 1)
        except KafkaException as exc:
            err = kafka_error(exc)
            if err is not None and err.code() in MISSING_TOPIC_CODES:
                raise TopicNotFoundError(f"{what} does not exist on {self.kafka.bootstrap_servers}") from exc
            raise ServiceUnavailableError(f"describing the configs of {what} failed: {kafka_reason(exc)}") from exc
        except Exception as exc:  # concurrent.futures.TimeoutError and friends: no answer
            raise ServiceUnavailableError(f"describing the configs of {what} failed: {kafka_reason(exc)}") from exc
        return {name: entry.value for name, entry in entries.items() if entry.value is not None}

    # -- changing --------------------------------------------------------------------------------------

    def create(self, specs: Iterable[TopicSpec], *, wait: bool = True) -> list[str]:
        """Create the topics that do not exist yet; existing ones are kept as they are (idempotent).

        Args:
            specs: the topics; a name given twice is created once (the first spec wins).
            wait: return only once metadata lists every requested topic (a topic just created is not
                yet known to every broker).

        Returns:
            The names this call created (a topic created concurrently by someone else is not in it).

        Raises:
            ServiceUnavailableError: the cluster did not answer, or refused a topic (the reason names the
                Kafka error, e.g. ``POLICY_VIOLATION`` or ``INVALID_REPLICATION_FACTOR``).
        """
        unique: dict[str, TopicSpec] = {}
        for spec in specs:
            unique.setdefault(spec.name, spec)
        existing = self.topics()
        wanted = [s for name, s in unique.items() if name not in existing]
        if not wanted:
            return []
        futures = self._client.create_topics(
            [
                NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor,
                         config=dict(s.config))
                for s in wanted
            ],
            request_timeout=self.timeout_s,
        )
        created: list[str] = []
        for name, future in futures.items():
            try:
                future.result(timeout=self.timeout_s + 1)
            except KafkaException as exc:
                err = kafka_error(exc)
                if err is not None and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                raise ServiceUnavailableError(f"could not create topic {name!r}: {kafka_reason(exc)}") from exc
            except Exception as exc:
                raise ServiceUnavailableError(f"could not create topic {name!r}: {kafka_reason(exc)}") from exc
            created.append(name)
        if wait:
            self._wait_listed([s.name for s in wanted])
        return created

    def _wait_listed(self, names: list[str]) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            missing = set(names) - set(self.topics())
            if not missing:
                return
            if time.monotonic() > deadline:
                raise ServiceUnavailableError(
                    f"topics {sorted(missing)} were created but not listed within {self.timeout_s:g}s"
                )
            time.sleep(_WAIT_POLL_S)


def ensure_state_topic(kafka: KafkaSettings, topic: str, replication_factor: int = 1) -> bool:
    """Create a compacted one-partition topic of state (the banks, the policy document) when it is missing;
    whether this call created it. One partition keeps the records in order; compaction keeps the latest per
    key; tombstones are kept a day, so a follower that was briefly away still sees removals."""
    spec = TopicSpec(topic, 1, replication_factor, {"cleanup.policy": "compact", "delete.retention.ms": "86400000"})
    return bool(TopicAdmin(kafka).create([spec]))
