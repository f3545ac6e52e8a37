"""MilvusEmbeddingIndex when the Milvus server misbehaves: frozen, killed and restarted, wrong schema, wrong
credentials.

These tests freeze and kill a server, so they run their own (this module's ``server``), not the session's.
It requires a token, so the adapter's authentication path and its failures are real too. The time bounds
are correctness bounds (a call returns instead of hanging), not benchmarks: generous on a busy machine.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from pydantic import SecretStr

from tests.harness.milvus_server import ROOT_TOKEN, MilvusServerProcess
from tests.stores.test_store_milvus import unit_rows
from vitguard.errors import ConfigError, ServiceUnavailableError
from vitguard.model.types import ModelInfo
from vitguard.settings import MilvusSettings
from vitguard.stores import EmbeddingRecord, MilvusEmbeddingIndex

pytestmark = pytest.mark.integration

T = TypeVar("T")
SMALL = ModelInfo("timm:vit_tiny_test", "r1", ("NSFW", "SFW"), 8, (3, 32, 32))
DEADLINE_S = 2.0
BOUND_S = DEADLINE_S * 3 + 5
"""A call against a broken server must come back within this: deadline*3 + 5 s (connect and call)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, milvus_binaries_dir: Path) -> Iterator[MilvusServerProcess]:
    """This module's own server, with authorization on; tests leave it running (restart it if they kill it)."""
    from tests.conftest import milvus_server_process

    with milvus_server_process(tmp_path_factory.mktemp("milvus-faults"), milvus_binaries_dir,
                               authorization=True) as process:
        yield process


@pytest.fixture
def healthy(server: MilvusServerProcess) -> Iterator[MilvusServerProcess]:
    """The module's server, made healthy again after the test whatever the test did to it."""
    yield server
    server.thaw()
    if not server.running:
        server.restart()


def settings_for(server: MilvusServerProcess, prefix: str, token: str = ROOT_TOKEN) -> MilvusSettings:
    return MilvusSettings(
        uri=server.uri,
        token=SecretStr(token),
        collection_prefix=prefix,
        call_timeout_s=DEADLINE_S,
        connect_timeout_s=DEADLINE_S,
        load_timeout_s=60,  # loading a collection is slower than a call; not what these tests time
    )


@pytest.fixture
def index(healthy: MilvusServerProcess) -> Iterator[MilvusEmbeddingIndex]:
    idx = MilvusEmbeddingIndex(settings_for(healthy, f"f{uuid.uuid4().hex[:8]}_"))
    try:
        yield idx
    finally:
        idx.close()



def records(ids: list[str], dim: int = 8, seed: int = 0) -> list[EmbeddingRecord]:
    vecs = unit_rows(len(ids), dim, seed)
    return [
        EmbeddingRecord(cid, vecs[i], "unsafe", 0.9, f"c-{cid}", "tenant-a", "r1", 1_700_000_000_000, 1_700_000_000_500)
        for i, cid in enumerate(ids)
    ]


def timed(fn: Callable[[], T]) -> tuple[T | BaseException, float]:
    """``fn()``'s result or exception, and how long it took."""
    start = time.monotonic()
    try:
        result: T | BaseException = fn()
    except BaseException as exc:  # noqa: B036 - the test inspects what came out
        result = exc
    return result, time.monotonic() - start


def eventually(fn: Callable[[], T], timeout_s: float = 90.0) -> tuple[T, int]:
    """Retry ``fn`` on ServiceUnavailableError only (the caller's policy, as in the pipeline); its result
    and how many attempts failed first."""
    deadline = time.monotonic() + timeout_s
    failures = 0
    while True:
        try:
            return fn(), failures
        except ServiceUnavailableError:
            failures += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def stored_ids(server: MilvusServerProcess, collection: str, ids: list[str]) -> set[str]:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=server.uri, token=ROOT_TOKEN, timeout=10, dedicated=True)
    try:
        rows = client.query(collection, filter=f"content_id in {ids!r}", output_fields=["content_id"], timeout=30)
    finally:
        client.close()
    return {row["content_id"] for row in rows}


def test_frozen_server_fails_each_call_within_the_deadline_and_the_next_call_after_thaw_succeeds(
    healthy: MilvusServerProcess, index: MilvusEmbeddingIndex
) -> None:
    name = index.ensure_collection(SMALL)
    index.upsert(name, records(["before-0", "before-1"]))
    query = unit_rows(1, 8, seed=0)

    healthy.freeze()
    try:
        outcomes = {
            "upsert": timed(lambda: index.upsert(name, records(["frozen-0"], seed=1))),
            "search": timed(lambda: index.search_unsafe(name, query, limit=2, min_similarity=0.0)),
            "ping": timed(index.ping),
        }
    finally:
        healthy.thaw()

    for what, (result, elapsed) in outcomes.items():
        assert elapsed < BOUND_S, f"{what} took {elapsed:.1f}s against a frozen server"
        if what == "ping":
            assert result is False
        else:
            assert isinstance(result, ServiceUnavailableError), f"{what}: {result!r}"
    # the next call succeeds: the adapter reconnects by itself, nobody restarts anything
    index.upsert(name, records(["after-0"], seed=2))
    assert index.ping() is True
    [hits] = index.search_unsafe(name, query, limit=1, min_similarity=0.99)
    assert [h.content_id for h in hits] == ["before-0"]


def test_a_ping_does_not_queue_behind_a_call_that_outlives_its_deadline(
    healthy: MilvusServerProcess, index: MilvusEmbeddingIndex
) -> None:
    """A call stuck past its own timeout holds the client; a readiness ping waited behind it, its thread with
    it, one more every probe. It now answers False after one call's deadline, and True once the client is free."""
    index.ensure_collection(SMALL)
    held, release = threading.Event(), threading.Event()

    def stuck_call() -> None:
        with index._lock:  # what a call hung inside pymilvus holds
            held.set()
            release.wait(60)

    thread = threading.Thread(target=stuck_call, daemon=True)
    thread.start()
    held.wait(5)
    try:
        result, elapsed = timed(index.ping)
    finally:
        release.set()
        thread.join(10)
    assert result is False and DEADLINE_S - 0.5 <= elapsed < DEADLINE_S + 2, elapsed
    assert index.ping() is True


def test_killed_server_keeps_acknowledged_rows_after_restart_and_the_same_adapter_reconnects(
    healthy: MilvusServerProcess, index: MilvusEmbeddingIndex
) -> None:
    name = index.ensure_collection(SMALL)
    acked: list[str] = []
    attempted: list[str] = []
    failures: list[tuple[BaseException, float]] = []
    stop = threading.Event()

    def writer() -> None:  # a stream of upserts, as the pipeline makes them
        batch = 0
        while not stop.is_set():
            ids = [f"b{batch}-{i}" for i in range(20)]
            attempted.extend(ids)
            result, elapsed = timed(lambda ids=ids, seed=batch: index.upsert(name, records(ids, seed=seed)))
            if isinstance(result, BaseException):
                failures.append((result, elapsed))
                time.sleep(0.2)
            else:
                acked.extend(ids)
            batch += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(acked) < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(acked) >= 100, f"only {len(acked)} rows written before the kill; failures: {failures[:3]}"
        healthy.kill()
        deadline = time.monotonic() + BOUND_S * 2
        while len(failures) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(BOUND_S * 2)
    assert not thread.is_alive(), "an upsert against a killed server did not return"
    assert len(failures) >= 2, "upserts against a killed server did not fail"
    for exc, elapsed in failures:
        assert isinstance(exc, ServiceUnavailableError), repr(exc)
        assert elapsed < BOUND_S

    healthy.restart()
    # the same adapter object: it reconnects (the caller may need to retry while Milvus reloads)
    _, failed_first = eventually(lambda: index.upsert(name, records(["after-restart"], seed=99)))
    count, _ = eventually(lambda: index.count(name))
    assert len(acked) + 1 <= count <= len(set(attempted)) + 1
    assert stored_ids(healthy, name, acked) == set(acked), "rows acknowledged before the kill were lost"
    [hits], _ = eventually(lambda: index.search_unsafe(name, unit_rows(1, 8, seed=0), limit=1, min_similarity=0.99))
    assert hits and hits[0].content_id == "b0-0"
    assert failed_first < 100  # it did come back


def test_collection_recreated_with_another_dimension_is_a_config_error_at_once(
    healthy: MilvusServerProcess, index: MilvusEmbeddingIndex
) -> None:
    name = index.ensure_collection(SMALL)  # the adapter now knows the collection as 8-d
    index.upsert(name, records(["x-0"]))
    from pymilvus import MilvusClient

    other = MilvusClient(uri=healthy.uri, token=ROOT_TOKEN, timeout=10, dedicated=True)
    try:  # another deployment replaces it with a 12-d one under the same name
        other.drop_collection(name, timeout=10)
        MilvusEmbeddingIndex._create(other, name, 12, {"timeout": 10})
    finally:
        other.close()

    result, elapsed = timed(lambda: index.upsert(name, records(["x-1"])))
    assert isinstance(result, ConfigError), repr(result)
    assert elapsed < DEADLINE_S, f"a permanent error took {elapsed:.1f}s: something retried it"
    # and a fresh adapter refuses the collection at start-up
    fresh = MilvusEmbeddingIndex(index.settings)
    with pytest.raises(ConfigError, match="12-d embeddings but model"):
        fresh.ensure_collection(SMALL)
    fresh.close()


def test_wrong_token_is_a_config_error_not_a_retry(healthy: MilvusServerProcess) -> None:
    wrong = MilvusEmbeddingIndex(settings_for(healthy, "f_wrong_", token="root:not-the-password"))  # noqa: S106
    result, elapsed = timed(lambda: wrong.ensure_collection(SMALL))
    assert isinstance(result, ConfigError), repr(result)
    assert "VITGUARD_MILVUS_TOKEN" in str(result)
    assert elapsed < BOUND_S
    assert wrong.ping() is False
    wrong.close()


def test_missing_permission_is_a_config_error(healthy: MilvusServerProcess, index: MilvusEmbeddingIndex) -> None:
    name = index.ensure_collection(SMALL)
    from pymilvus import MilvusClient

    user, password = f"u{uuid.uuid4().hex[:8]}", "a-password-1"
    admin = MilvusClient(uri=healthy.uri, token=ROOT_TOKEN, timeout=10, dedicated=True)
    try:
        admin.create_user(user, password, timeout=10)  # no role: it may connect, not write
    finally:
        admin.close()
    reader = MilvusEmbeddingIndex(settings_for(healthy, index.settings.collection_prefix, token=f"{user}:{password}"))
    with pytest.raises(ConfigError):
        reader.ensure_collection(SMALL)
        reader.upsert(name, records(["y-0"]))
    reader.close()
