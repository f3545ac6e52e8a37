"""Faust's aiokafka consumer fetches with VITGUARD_KAFKA_FETCH_MAX_WAIT_MS, not faust's hard-coded 1500 ms."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import faust
import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka

from vitguard.kafka.config import faust_broker_kwargs
from vitguard.kafka.faust.consumer import (
    FetchWaitConsumerThread,
    FetchWaitOverrideError,
    FetchWaitTransport,
    consumer_broker_url,
    live_fetch_max_wait_ms,
)
from vitguard.settings import KafkaSettings


def test_consumer_broker_url_carries_every_host_and_the_wait() -> None:
    url = consumer_broker_url("h1:9092, h2:9093", 250)
    assert url == "vitguard-kafka://h1:9092?fetch_max_wait_ms=250;vitguard-kafka://h2:9093?fetch_max_wait_ms=250"


def test_app_kwargs_select_the_override_for_the_consumer_only() -> None:
    kwargs = faust_broker_kwargs(KafkaSettings(bootstrap_servers="h1:9092", fetch_max_wait_ms=42))
    app = faust.App(f"a-{uuid.uuid4().hex[:6]}", **kwargs)
    assert isinstance(app.transport, FetchWaitTransport)
    assert app.transport.fetch_max_wait_ms == 42
    assert not isinstance(app.producer_transport, FetchWaitTransport)


def test_a_consumer_url_without_the_wait_is_refused() -> None:
    app = faust.App(f"a-{uuid.uuid4().hex[:6]}", broker="kafka://h1:9092", broker_consumer="vitguard-kafka://h1:9092")
    with pytest.raises(Exception, match="fetch_max_wait_ms"):
        _ = app.transport


def test_a_consumer_without_the_fetcher_layout_is_refused() -> None:
    with pytest.raises(FetchWaitOverrideError):
        live_fetch_max_wait_ms(object())


def _app(kafka: KafkaSettings, topic: str) -> Any:
    app = faust.App(
        f"fw-{uuid.uuid4().hex[:8]}",
        **faust_broker_kwargs(kafka),
        web_enabled=False,
        store="memory://",
        topic_allow_declare=False,
        topic_disable_leader=True,
        value_serializer="raw",
        broker_rebalance_timeout=3.0,
        broker_session_timeout=6.0,
        broker_request_timeout=12.0,
        broker_heartbeat_interval=2.0,
    )

    @app.agent(app.topic(topic, value_type=bytes))
    async def drain(stream: Any) -> None:
        async for _ in stream:
            pass

    return app


@pytest.mark.integration
async def test_live_aiokafka_consumer_fetches_with_the_configured_wait(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, fetch_max_wait_ms=123)
    app = _app(kafka, new_topic())
    await app.start()
    try:
        thread = app.consumer._thread
        assert isinstance(thread, FetchWaitConsumerThread)
        assert thread._consumer._fetcher._fetch_max_wait_ms == 123
    finally:
        await app.stop()


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the consumer thread's raise
async def test_start_fails_loudly_when_faust_bypasses_the_override(
    kafka_bootstrap: str, new_topic: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if faust-streaming stopped calling the hook we override: the stock 1500 ms reaches the fetcher.
    stock = faust_aiokafka.AIOKafkaConsumerThread._create_consumer
    monkeypatch.setattr(FetchWaitConsumerThread, "_create_consumer", stock)
    app = _app(KafkaSettings(bootstrap_servers=kafka_bootstrap, fetch_max_wait_ms=123), new_topic())
    try:
        with pytest.raises(FetchWaitOverrideError, match="1500"):
            await app.start()
    finally:
        await app.stop()


def _seeking_app(kafka: KafkaSettings, topic: str, delivered: list[int]) -> Any:
    app = _app(kafka, f"{topic}-unused")
    app.agents.clear()

    @app.agent(app.topic(topic, value_type=bytes), name=f"count-{uuid.uuid4().hex[:6]}")
    async def count(stream: Any) -> None:
        async for event in stream.events():
            delivered.append(event.message.offset)

    return app


@pytest.mark.integration
async def test_seeks_from_the_event_loop_never_race_the_fetcher(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    """Faust's stock seek called aiokafka from the app's loop while the consumer thread was iterating its
    fetched records: ``KeyError`` in ``Fetcher.fetched_records``, ``Fetcher: Crashed`` and a worker exit. Ours
    runs on the consumer thread. Hundreds of seeks during a busy fetch: the fetcher lives and still delivers."""
    import asyncio

    from faust.types import TP

    from vitguard.testing.worker import publish_raw

    topic = new_topic()
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, fetch_max_wait_ms=5)
    publish_raw(kafka, topic, [(None, b"x" * 64)] * 3000)
    delivered: list[int] = []
    app = _seeking_app(kafka, topic, delivered)
    await app.start()
    try:
        tp = TP(topic, 0)
        deadline = asyncio.get_running_loop().time() + 30
        while tp not in app.consumer.assignment() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert tp in app.consumer.assignment()
        assert await app.consumer.committed_offsets({tp}) == {tp: None}  # nothing committed, nothing moved
        fetcher = app.consumer._thread._consumer._fetcher
        for i in range(400):
            await app.consumer.seek(tp, (i * 7) % 3000)
            await asyncio.sleep(0.002)
        assert not app._fetcher.crashed, app._fetcher.crash_reason  # Faust's drain loop
        assert not fetcher._fetch_task.done(), fetcher._fetch_task  # aiokafka's fetch routine
        await app.consumer.seek(tp, 2990)
        seen = len(delivered)
        deadline = asyncio.get_running_loop().time() + 30  # its own budget: the seeks above take long on a slow host
        while asyncio.get_running_loop().time() < deadline and 2999 not in delivered[seen:]:
            await asyncio.sleep(0.05)
        assert 2999 in delivered[seen:]  # the seek took effect and the fetcher still delivers
    finally:
        await app.stop()


async def test_a_seek_the_consumer_thread_never_carries_out_is_fatal_not_a_stall() -> None:
    import asyncio
    from types import SimpleNamespace

    from faust.types import TP

    from vitguard.errors import FatalError
    from vitguard.kafka.faust.consumer import FetchWaitConsumer, SeekTimeoutError

    class StuckThread:
        async def call_thread(self, fun: Any, *args: Any) -> None:
            await asyncio.Event().wait()  # the thread's method queue never takes the call

    conf = SimpleNamespace(broker_request_timeout=0.05)
    stuck = SimpleNamespace(_thread=StuckThread(), app=SimpleNamespace(conf=conf))
    with pytest.raises(SeekTimeoutError, match="did not seek") as caught:
        await FetchWaitConsumer._seek(stuck, TP("in", 0), 5)
    assert isinstance(caught.value, FatalError)


def test_every_override_of_faust_names_a_test_that_exists() -> None:
    """``vitguard.kafka.faust`` lists each upstream defect with the test that fails without its override: the
    list stays true (a renamed or deleted test would leave an override unguarded)."""
    import re
    from pathlib import Path

    import vitguard.kafka.faust as overrides

    named = set(re.findall(r"::(test_\w+)", overrides.__doc__ or ""))
    assert len(named) >= 10
    tests = "".join(p.read_text() for p in Path(__file__).resolve().parents[1].rglob("test_*.py"))
    missing = sorted(n for n in named if not re.search(rf"def {n}\(", tests))
    assert missing == []
