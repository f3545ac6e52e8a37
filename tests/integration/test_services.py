"""The harness gives working real services: a broker, Redis and Milvus."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

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


def test_free_port_draws_distinct_bindable_ports_below_the_ephemeral_range() -> None:
    """Ports the kernel would hand to outgoing connections can be taken between the draw and a server's
    bind; free_port stays below that range and never hands out one port twice."""
    import socket

    from vitguard.testing import services

    ephemeral_low = services._ephemeral_low()
    if ephemeral_low - services._LOWEST_PORT < 1000:
        pytest.skip(f"this machine's ephemeral range starts at {ephemeral_low}: free_port takes the kernel's pick")
    ports = [services.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(1024 < p < ephemeral_low for p in ports)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", ports[-1]))


@pytest.mark.parametrize("taken_at", ["config check", "server bind"])
def test_milvus_server_that_cannot_bind_its_port_starts_again_on_fresh_ports(
    taken_at: str, tmp_path_factory: pytest.TempPathFactory, milvus_binaries_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CI failure of 2026-12-03: a port drawn free was taken before the server bound it, and the server
    exited. Another process takes the server's port before the ``milvus`` package's config check binds it,
    or after that check and before the server itself binds it (what happened in CI); either way the harness
    draws fresh ports and starts again, and the server answers on its new port."""
    import socket

    from pymilvus import MilvusClient

    from tests.harness import milvus_server

    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server = milvus_server.MilvusServerProcess(tmp_path_factory.mktemp("milvus-squatted"),
                                               binaries_dir=milvus_binaries_dir)
    first_port = server.port
    taken: list[int] = []
    # before the package's check: the client port; after it: the proxy's internal port, as in CI
    hook = "_prepare" if taken_at == "config check" else "_spawn"
    original = getattr(milvus_server.MilvusServerProcess, hook)

    def squat_once_then(self: milvus_server.MilvusServerProcess) -> None:
        if not taken:
            taken.append(first_port if hook == "_prepare" else self.ports["proxy_internal_port"])
            squatter.bind(("127.0.0.1", taken[0]))  # loopback only; the server binds every address
            squatter.listen()
        original(self)

    monkeypatch.setattr(milvus_server.MilvusServerProcess, hook, squat_once_then)
    try:
        server.start()
        assert taken and taken[0] not in server.ports.values()
        assert server.port != first_port
        assert milvus_server._ADDRESS_IN_USE not in server.log_tail(chars=1_000_000)  # this attempt's logs
        client = MilvusClient(server.uri, timeout=10)
        assert client.list_collections() == []
        client.close()
    finally:
        squatter.close()
        server.stop(timeout_s=5)
