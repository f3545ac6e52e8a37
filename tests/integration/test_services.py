"""The harness gives working real services: a broker, Redis and Milvus."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def test_broker_produce_consume_commit(kafka_bootstrap: str, new_topic: Callable[..., str]) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition

    topic = new_topic(partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    sent = {f"k{i}": f"v{i}" for i in range(10)}
    for key, value in sent.items():
        producer.produce(topic, key=key, value=value)
    assert producer.flush(10) == 0

    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got: dict[str, str] = {}
    try:
        for _ in range(200):
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                if len(got) == len(sent):
                    break
                continue
            got[msg.key().decode()] = msg.value().decode()
            consumer.commit(msg, asynchronous=False)
            if len(got) == len(sent):
                break
        assert got == sent
        committed = consumer.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
        assert sum(tp.offset for tp in committed if tp.offset >= 0) == len(sent)
    finally:
        consumer.close()


def test_redis_set_get(redis_url: str, redis_prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    key = f"{redis_prefix}hello"
    assert client.set(key, "world", nx=True, ex=60)
    assert not client.set(key, "again", nx=True, ex=60)
    assert client.get(key) == b"world"
    client.close()


def test_milvus_upsert_search(milvus_uri: str) -> None:
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(milvus_uri)
    name = f"t_{uuid.uuid4().hex[:8]}"
    schema = client.create_schema(auto_id=False)
    schema.add_field("content_id", DataType.VARCHAR, is_primary=True, max_length=128)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=8)
    index = client.prepare_index_params()
    index.add_index("embedding", metric_type="COSINE", index_type="AUTOINDEX")
    client.create_collection(name, schema=schema, index_params=index)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(5, 8)).astype(np.float32)
    client.upsert(name, [{"content_id": f"c{i}", "embedding": v.tolist()} for i, v in enumerate(vectors)])
    client.upsert(name, [{"content_id": "c0", "embedding": vectors[0].tolist()}])  # idempotent by key
    client.load_collection(name)
    hits = client.search(name, data=[vectors[3].tolist(), vectors[1].tolist()], limit=2, anns_field="embedding")
    assert [h[0]["content_id"] for h in hits] == ["c3", "c1"]
    assert hits[0][0]["distance"] == pytest.approx(1.0, abs=1e-4)
    assert client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"] == 5
    client.close()
