"""Topic admin (error codes, not message text), offsets and publish-error classification."""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from typing import Any

import aiokafka.errors
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from vitguard.errors import ServiceUnavailableError
from vitguard.kafka.admin import TopicAdmin, TopicNotFoundError, TopicSpec
from vitguard.kafka.config import librdkafka_config
from vitguard.kafka.errors import classify_publish_error
from vitguard.kafka.offsets import consumer_config, end_offsets, start_offsets
from vitguard.settings import KafkaSettings


class _Metadata:
    def __init__(self, names: list[str]) -> None:
        self.topics = {n: type("T", (), {"partitions": {0: None}, "error": None})() for n in names}


class RacingClient:
    """An AdminClient whose create answers TOPIC_ALREADY_EXISTS (another worker created it first)."""

    def __init__(self, code: int) -> None:
        self.code = code

    def list_topics(self, timeout: float) -> _Metadata:
        return _Metadata([])

    def create_topics(self, topics: list[Any], request_timeout: float) -> dict[str, Future[None]]:
        futures: dict[str, Future[None]] = {}
        for t in topics:
            f: Future[None] = Future()
            f.set_exception(KafkaException(KafkaError(self.code, "localised text that must not matter")))
            futures[t.topic] = f
        return futures


def test_create_reads_the_already_exists_code_not_the_text() -> None:
    admin = TopicAdmin(KafkaSettings(), client=RacingClient(KafkaError.TOPIC_ALREADY_EXISTS))
    assert admin.create([TopicSpec("a")], wait=False) == []


def test_create_maps_other_codes_to_service_unavailable_with_the_code_name() -> None:
    admin = TopicAdmin(KafkaSettings(), client=RacingClient(KafkaError.POLICY_VIOLATION))
    with pytest.raises(ServiceUnavailableError, match="POLICY_VIOLATION"):
        admin.create([TopicSpec("a")], wait=False)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)), "rejected"),
        (KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)), "fatal"),
        (KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT)), "transient"),
        (KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION)), "transient"),
        (aiokafka.errors.MessageSizeTooLargeError(), "rejected"),
        (aiokafka.errors.TopicAuthorizationFailedError(), "fatal"),
        (aiokafka.errors.KafkaTimeoutError(), "transient"),
        (aiokafka.errors.NotLeaderForPartitionError(), "transient"),
        (TimeoutError(), "transient"),
        (TypeError("a bug"), "fatal"),
    ],
)
def test_publish_errors_are_classified_by_code(exc: BaseException, expected: str) -> None:
    assert classify_publish_error(exc) == expected


def test_librdkafka_config_carries_credentials_and_extra() -> None:
    kafka = KafkaSettings(
        bootstrap_servers="b:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc", sasl_password="pw", client_id="me",  # type: ignore[arg-type]  # noqa: S106
    )
    conf = librdkafka_config(kafka, **{"acks": "all"})
    assert conf["bootstrap.servers"] == "b:9093" and conf["client.id"] == "me"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512" and conf["sasl.password"] == "pw"
    assert conf["acks"] == "all"
    assert librdkafka_config(kafka)["sasl.username"] == "svc"


@pytest.mark.integration
def test_admin_against_the_real_broker(kafka_bootstrap: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    admin = TopicAdmin(kafka)
    name = f"adm-{uuid.uuid4().hex[:10]}"
    assert not admin.exists(name)
    with pytest.raises(TopicNotFoundError):
        admin.partitions(name)
    spec = TopicSpec(name, partitions=3, config={"max.message.bytes": "1500000"})
    assert admin.create([spec, spec]) == [name]
    assert admin.create([spec]) == []  # idempotent
    assert admin.exists(name) and admin.partitions(name) == [0, 1, 2]
    assert admin.topic_config(name)["max.message.bytes"] == "1500000"


@pytest.mark.integration
def test_offsets_are_exact_after_writes(kafka_bootstrap: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    name = f"off-{uuid.uuid4().hex[:10]}"
    TopicAdmin(kafka).create([TopicSpec(name, partitions=2)])
    producer = Producer(librdkafka_config(kafka))
    for i in range(5):
        producer.produce(name, value=b"x", partition=i % 2)
    assert producer.flush(10) == 0
    consumer = Consumer(consumer_config(kafka, f"off-{uuid.uuid4().hex[:6]}"))
    try:
        assert end_offsets(consumer, name, [0, 1], 10.0) == {0: 3, 1: 2}
        assert start_offsets(consumer, name, [0, 1], 10.0) == {0: 0, 1: 0}
    finally:
        consumer.close()
