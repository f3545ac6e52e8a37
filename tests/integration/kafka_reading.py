"""Read a topic to the end of every partition: the one helper integration tests use to see what was produced."""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition


def read_to_end(bootstrap: str, topic: str, partitions: int = 1, timeout_s: float = 20.0) -> list[Any]:
    """Every record of ``topic`` (confluent-kafka messages), read from offset 0 to the end of each partition."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex[:6]}",
                         "enable.partition.eof": True, "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records: list[Any] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while len(at_end) < partitions and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                continue
            at_end.discard(msg.partition())
            records.append(msg)
    finally:
        consumer.close()
    assert len(at_end) == partitions, "did not reach the end of every partition"
    return records
