"""Faust's aiokafka consumer, fixed where vitguard's latency and delivery guarantees need it.

* *Our* fetch wait (``VITGUARD_KAFKA_FETCH_MAX_WAIT_MS``), below.
* A pause that drops nothing (:meth:`FetchWaitConsumer.pause_partitions`).
* Seeks on the consumer's own thread (:meth:`FetchWaitConsumer._seek`): Faust's seek called aiokafka from the
  event loop while the consumer thread was inside ``Fetcher.fetched_records``, which then deleted a partition's
  buffered records that the seek had already removed (``KeyError``, ``Fetcher: Crashed``, the worker exits).
* Committed offsets read without a seek (:meth:`FetchWaitConsumer.committed_offsets`).
* No read offset (:class:`UntrackedReadOffsets`): Faust drops every delivered record below the last offset
  it read, and takes a jump above it for a gap that commits may pass. After a seek back (a re-fetch of records
  dropped at a rebalance) its drain loop wrote the offset it was delivering over the seek's, so the re-fetched
  records were dropped as old and the commit passed them: events lost. Order, duplicates and holes are the
  agent's offset tracker's (:mod:`vitguard.kafka.faust.offsets`); only a gap it re-fetched and found empty lets
  commits pass (:meth:`FetchWaitConsumer.accept_gap`).

The fetch wait:

faust-streaming's aiokafka driver builds its ``AIOKafkaConsumer`` with ``fetch_max_wait_ms=1500``
hard-coded and no setting to change it. The broker may hold each fetch that long when a partition has no
new data, so a message arriving on a quiet partition can wait up to 1.5 s before the worker sees it, and
a broker that always holds fetches for the full wait (the embedded test broker does) adds that to every
batch. vitguard's latency budget needs the wait to be a setting.

How: a transport subclass, :class:`FetchWaitTransport`, registered in Faust's transport registry under
the URL scheme :data:`SCHEME`. ``faust.App(broker_consumer=consumer_broker_url(...))`` selects it for the
consumer only (the producer keeps ``broker``, the stock driver). Its consumer thread builds the stock
aiokafka consumer and replaces the wait before the consumer starts (aiokafka reads it when ``start()``
builds its fetcher). Nothing global in Faust or aiokafka is patched; the registry entry is additive, the
same thing a ``faust.transports`` entry point would do.

Fails loudly: when faust-streaming or aiokafka change so that the override no longer reaches the live
fetcher, the consumer raises :class:`FetchWaitOverrideError` at start instead of silently running with
1.5 s (checked on the live ``AIOKafkaConsumer._fetcher`` after it started).
"""

from __future__ import annotations

import asyncio
from typing import Any

from faust.transport import consumer as faust_consumer_base
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka
from yarl import URL

from vitguard.errors import ConfigError, FatalError

__all__ = [
    "FETCH_WAIT_QUERY",
    "SCHEME",
    "FetchWaitConsumer",
    "FetchWaitOverrideError",
    "FetchWaitTransport",
    "SeekTimeoutError",
    "UntrackedReadOffsets",
    "consumer_broker_url",
    "live_fetch_max_wait_ms",
]

SCHEME = "vitguard-kafka"
"""URL scheme of :class:`FetchWaitTransport` in Faust's transport registry."""
FETCH_WAIT_QUERY = "fetch_max_wait_ms"
"""Query parameter of the consumer broker URL that carries the wait (Faust drops unknown App kwargs)."""


class FetchWaitOverrideError(ConfigError):
    """faust-streaming/aiokafka internals changed: the fetch wait override no longer applies."""


class SeekTimeoutError(FatalError):
    """The consumer thread did not carry out a seek in time: it is stuck, and the worker must not go on."""


def consumer_broker_url(bootstrap_servers: str, fetch_max_wait_ms: int) -> str:
    """``faust.App(broker_consumer=...)`` for :class:`FetchWaitTransport`: every host, the wait as a query.

    ``vitguard-kafka://h1:9092?fetch_max_wait_ms=100;vitguard-kafka://h2:9092?fetch_max_wait_ms=100``
    """
    if fetch_max_wait_ms < 0:
        raise ValueError(f"fetch_max_wait_ms must be >= 0, got {fetch_max_wait_ms}")
    hosts = [h.strip() for h in bootstrap_servers.split(",") if h.strip()]
    if not hosts:
        raise ValueError("bootstrap_servers is empty: set VITGUARD_KAFKA_BOOTSTRAP_SERVERS to host:port[,host:port]")
    return ";".join(f"{SCHEME}://{h}?{FETCH_WAIT_QUERY}={fetch_max_wait_ms}" for h in hosts)


def _fetch_wait_from_urls(urls: Any) -> int:
    values = {URL(str(u)).query.get(FETCH_WAIT_QUERY) for u in urls}
    values.discard(None)
    if len(values) != 1:
        raise ConfigError(
            f"broker_consumer URLs for {SCHEME}:// need one ?{FETCH_WAIT_QUERY}=<ms>; build them with "
            "vitguard.kafka.faust.consumer.consumer_broker_url"
        )
    (text,) = values
    assert text is not None  # noqa: S101 - None was discarded above
    try:
        return int(text)
    except ValueError as exc:
        raise ConfigError(f"{FETCH_WAIT_QUERY}={text!r} in broker_consumer is not an integer") from exc


def live_fetch_max_wait_ms(aiokafka_consumer: Any) -> int:
    """The wait the started aiokafka consumer's fetcher really uses (aiokafka 0.8 - 0.14 layout).

    Raises:
        FetchWaitOverrideError: the consumer has no fetcher or the fetcher no ``_fetch_max_wait_ms``.
    """
    fetcher = getattr(aiokafka_consumer, "_fetcher", None)
    value = getattr(fetcher, "_fetch_max_wait_ms", None)
    if not isinstance(value, int):
        raise FetchWaitOverrideError(
            "aiokafka's consumer has no _fetcher._fetch_max_wait_ms any more: update vitguard.kafka.faust.consumer"
        )
    return value


class FetchWaitConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):  # type: ignore[misc]
    """The stock consumer thread, except that the aiokafka consumer gets the transport's fetch wait."""

    @property
    def fetch_max_wait_ms(self) -> int:
        """The wait configured on this thread's transport."""
        transport = self.transport
        if not isinstance(transport, FetchWaitTransport):
            raise FetchWaitOverrideError(f"consumer thread runs on {type(transport).__name__}, not FetchWaitTransport")
        return transport.fetch_max_wait_ms

    def _create_consumer(self, loop: asyncio.AbstractEventLoop) -> Any:
        consumer = super()._create_consumer(loop)
        if not hasattr(consumer, "_fetch_max_wait_ms"):
            raise FetchWaitOverrideError(
                "aiokafka.AIOKafkaConsumer has no _fetch_max_wait_ms any more: update vitguard.kafka.faust.consumer"
            )
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer

    async def on_start(self) -> None:
        await super().on_start()
        wanted = self.fetch_max_wait_ms
        live = live_fetch_max_wait_ms(self._consumer)
        if live != wanted:
            raise FetchWaitOverrideError(
                f"Faust's aiokafka consumer fetches with fetch_max_wait_ms={live}, not the configured {wanted}: "
                "faust-streaming changed how it creates the consumer; update vitguard.kafka.faust.consumer"
            )


class UntrackedReadOffsets(dict):  # type: ignore[type-arg]
    """Faust's per-partition read offsets, never kept: every lookup says "none yet".

    Faust's drain loop reads it for each record (``offset >= read_offset`` or the record is dropped; a jump
    past it is a gap) and writes it after each delivery. With nothing kept, every fetched record is delivered
    and no gap is guessed; Faust's seeks still move the fetch position (they write here, to no effect).
    """

    def __getitem__(self, tp: Any) -> None:
        return None

    def __setitem__(self, tp: Any, offset: Any) -> None:
        return None

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None


class FetchWaitConsumer(faust_aiokafka.Consumer):  # type: ignore[misc]
    """Faust's aiokafka ``Consumer`` running :class:`FetchWaitConsumerThread`, with a pause that loses nothing
    and no read offset (so no record dropped as old and no gap that Faust guessed on its own)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_offset = UntrackedReadOffsets()

    def _new_consumer_thread(self) -> FetchWaitConsumerThread:
        return FetchWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def pause_partitions(self, tps: Any) -> None:
        """Stop fetching from ``tps`` without dropping the records already fetched from them.

        Faust's ``getmany`` delivers one fetch's records only for partitions in the very set object that its
        ``pause_partitions`` shrinks in place. A pause while that loop waits on a delivery drops the rest of the
        partition's fetched records, whose offsets the fetcher has already passed; the next record's offset
        jump is then taken for a gap (compaction) and committed past: those events are lost. Replacing the
        set instead of mutating it lets a loop in progress deliver what it fetched.
        """
        tpset = faust_consumer_base.ensure_TPset(tps)
        self._active_partitions = set(self._get_active_partitions()) - tpset
        self._paused_partitions.update(tpset)

    async def _seek(self, partition: Any, offset: int) -> None:
        """Move the fetch position on the consumer thread, between two steps of its fetcher.

        Faust's own ``_seek`` calls ``AIOKafkaConsumer.seek`` from the app's event loop, a different thread
        from the one running the fetcher: the seek drops the partition's buffered records while
        ``fetched_records`` is iterating them, and the fetcher task crashes on a ``KeyError``. Through the
        thread's method queue the seek runs on the fetcher's loop, so it can never interleave with it.

        A consumer thread that does not take the call within the broker request timeout is stuck: the
        seek raises :class:`SeekTimeoutError` (the agent treats it as fatal) rather than stall the partition.
        """
        thread = self._thread
        timeout_s = float(self.app.conf.broker_request_timeout)
        try:
            async with asyncio.timeout(timeout_s):
                await thread.call_thread(_seek_on_thread, thread, partition, offset)
        except TimeoutError as exc:
            raise SeekTimeoutError(
                f"the consumer thread did not seek {partition} to {offset} within {timeout_s:g} s") from exc

    async def committed_offsets(self, partitions: Any) -> dict[Any, int | None]:
        """The group's committed offset of each partition (None where nothing is committed); no seek."""
        thread = self._thread
        result: dict[Any, int | None] = await thread.call_thread(_committed_on_thread, thread, list(partitions))
        return result

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        """Faust's guess at a gap is ignored (with no read offset it is not even made): the agent's offset
        tracker checks a jump by re-fetching it and says what it found (:meth:`accept_gap`). Faust's commit
        counts a gap's offsets, and the offset that revealed it, as acknowledged."""
        return None

    async def accept_gap(self, tp: Any, start: int, end: int) -> None:
        """Offsets [start, end) of ``tp`` were re-fetched and hold no records: commits may pass over them."""
        if start < end:
            await super()._add_gap(tp, start, end - 1)


async def _seek_on_thread(thread: Any, partition: Any, offset: int) -> None:
    thread._ensure_consumer().seek(partition, offset)


async def _committed_on_thread(thread: Any, partitions: list[Any]) -> dict[Any, int | None]:
    consumer = thread._ensure_consumer()
    return {tp: await consumer.committed(faust_aiokafka.ensure_aiokafka_TP(tp)) for tp in partitions}


class FetchWaitTransport(faust_aiokafka.Transport):  # type: ignore[misc]
    """Faust's aiokafka transport whose consumers use the URL's ``fetch_max_wait_ms``."""

    Consumer = FetchWaitConsumer

    def __init__(self, url: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(url, *args, **kwargs)
        self.fetch_max_wait_ms: int = _fetch_wait_from_urls(self.url)


def _check_driver() -> None:
    """Refuse to import against a driver whose hooks we override are gone (fail at start, not silently)."""
    missing = [
        name
        for owner, name in (
            (faust_aiokafka.AIOKafkaConsumerThread, "_create_consumer"),
            (faust_aiokafka.AIOKafkaConsumerThread, "on_start"),
            (faust_aiokafka.Consumer, "_new_consumer_thread"),
            (faust_aiokafka.Consumer, "_add_gap"),
            (faust_aiokafka.Consumer, "_seek"),
            (faust_aiokafka.AIOKafkaConsumerThread, "call_thread"),
            (faust_aiokafka.AIOKafkaConsumerThread, "_ensure_consumer"),
        )
        if not callable(getattr(owner, name, None))
    ]
    if missing:
        raise FetchWaitOverrideError(
            f"faust-streaming's aiokafka driver lacks {missing}: the fetch wait override cannot apply; "
            "update vitguard.kafka.faust.consumer"
        )


_check_driver()
drivers.TRANSPORTS.aliases.setdefault(SCHEME, f"{__name__}:FetchWaitTransport")
