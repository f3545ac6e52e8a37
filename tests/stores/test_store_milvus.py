"""MilvusEmbeddingIndex against real Milvus: each test runs on Milvus Lite and on a Milvus server.

The server is the session's local one (``milvus_server`` fixture) or the one ``VITGUARD_TEST_MILVUS_URI``
names. Failure behaviour against a frozen or killed server is in ``test_milvus_faults.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vitguard.errors import ConfigError, ServiceUnavailableError
from vitguard.model.types import ModelInfo
from vitguard.settings import MilvusSettings
from vitguard.stores import EmbeddingRecord, InMemoryEmbeddingIndex, MilvusEmbeddingIndex
from vitguard.stores.milvus import DEFAULT_LITE_FLUSH_ROWS, is_lite_uri
from vitguard.stores.similar import SearchFilters, StoredItem
from vitguard.testing import services

pytestmark = pytest.mark.integration

SMALL = ModelInfo("timm:vit_tiny_test", "r1", ("NSFW", "SFW"), 8, (3, 32, 32))
LARGE = ModelInfo("opennsfw", "r1", ("NSFW", "SFW"), 16, (3, 224, 224))


@pytest.fixture
def milvus_uri(milvus_any_uri: str) -> str:
    """Every test here that asks for a Milvus URI runs twice: on Milvus Lite and on a server."""
    return milvus_any_uri


@pytest.fixture
def prefix(milvus_uri: str) -> Iterator[str]:
    """A collection prefix of this test alone; its collections are dropped afterwards (a server keeps them)."""
    value = f"t{uuid.uuid4().hex[:8]}_"
    yield value
    if not is_lite_uri(milvus_uri):
        from pymilvus import MilvusClient

        client = MilvusClient(uri=milvus_uri, timeout=10, dedicated=True)
        try:
            for name in client.list_collections(timeout=10):
                if name.startswith(value):
                    client.drop_collection(name, timeout=10)
        finally:
            client.close()


@pytest.fixture
def index(milvus_uri: str, prefix: str) -> Iterator[MilvusEmbeddingIndex]:
    idx = MilvusEmbeddingIndex(MilvusSettings(uri=milvus_uri, collection_prefix=prefix))
    try:
        yield idx
    finally:
        idx.close()


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    m = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def rec(cid: str, vec: np.ndarray, label: str = "unsafe", cluster: str = "", score: float = 0.9) -> EmbeddingRecord:
    return EmbeddingRecord(cid, vec, label, score, cluster, "tenant-a", "r1", 1_700_000_000_000, 1_700_000_000_500)


def test_upsert_is_idempotent_by_content_id(index: MilvusEmbeddingIndex) -> None:
    name = index.ensure_collection(SMALL)
    assert index.ensure_collection(SMALL) == name  # idempotent too
    vecs = unit_rows(3, 8, seed=1)
    index.upsert(name, [rec(f"img-{i}", vecs[i], cluster=f"c-{i}") for i in range(3)])
    index.upsert(name, [rec("img-0", vecs[0], cluster="c-moved")])  # a redelivered batch rewrites, never adds
    index.upsert(name, [rec(f"img-{i}", vecs[i], cluster=f"c-{i}") for i in range(1, 3)])
    assert index.count(name) == 3
    [hits] = index.search_unsafe(name, vecs[:1], limit=3, min_similarity=0.99)
    assert [(h.content_id, h.cluster_id) for h in hits] == [("img-0", "c-moved")]
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-4)


def test_two_records_for_one_content_id_in_one_upsert_write_the_last(index: MilvusEmbeddingIndex) -> None:
    """Two events for one upload in a batch: Milvus 2.6.7+ refuses duplicate primary keys in one upsert (a
    permanent error: the worker would stop, the batch redelivered, again), older ones keep either row."""
    name = index.ensure_collection(SMALL)
    vecs = unit_rows(2, 8, seed=7)
    index.upsert(name, [rec("same", vecs[0], cluster="first"), rec("other", vecs[1]), rec("same", vecs[0],
                                                                                          cluster="last")])
    assert index.count(name) == 2
    [hits] = index.search_unsafe(name, vecs[:1], limit=3, min_similarity=0.99)
    assert [(h.content_id, h.cluster_id) for h in hits] == [("same", "last")]


def test_collections_per_model_never_mix(index: MilvusEmbeddingIndex) -> None:
    small, large = index.ensure_collection(SMALL), index.ensure_collection(LARGE)
    assert small != large
    index.upsert(small, [rec("shared-id", unit_rows(1, 8, seed=2)[0])])
    index.upsert(large, [rec("shared-id", unit_rows(1, 16, seed=3)[0]), rec("only-large", unit_rows(1, 16, seed=4)[0])])
    assert index.count(small) == 1 and index.count(large) == 2
    with pytest.raises(ValueError, match="8-d"):
        index.upsert(small, [rec("wrong", unit_rows(1, 16, seed=5)[0])])
    with pytest.raises(ValueError):
        index.search_unsafe(small, unit_rows(1, 16, seed=5), limit=3, min_similarity=0.0)
    [hits] = index.search_unsafe(large, unit_rows(1, 16, seed=4), limit=5, min_similarity=-1.0)
    assert {h.content_id for h in hits} == {"shared-id", "only-large"}


def test_existing_collection_with_another_dimension_is_a_config_error(milvus_uri: str, prefix: str) -> None:
    first = MilvusEmbeddingIndex(MilvusSettings(uri=milvus_uri, collection_prefix=prefix))
    wrong = ModelInfo(SMALL.name, SMALL.version, SMALL.labels, 12, SMALL.input_size)
    made = first.ensure_collection(SMALL)
    # simulate a collection left by another deployment under the name this model wants
    first._connected().rename_collection(made, first.collection_for(wrong))
    second = MilvusEmbeddingIndex(MilvusSettings(uri=milvus_uri, collection_prefix=prefix))
    with pytest.raises(ConfigError, match="8-d embeddings but model"):
        second.ensure_collection(wrong)
    first.close()
    second.close()


def test_a_collection_dropped_in_use_is_made_again_and_the_retry_succeeds(milvus_uri: str, prefix: str) -> None:
    """An operator drops the collection under a running worker: the call that finds it gone fails
    (retryable), and the adapter makes the collection again, so the pipeline's retry writes instead of every
    retry failing the same way until someone restarts the worker."""
    writer = MilvusEmbeddingIndex(MilvusSettings(uri=milvus_uri, collection_prefix=prefix))
    name = writer.ensure_collection(SMALL)
    writer.upsert(name, [rec("c1", unit_rows(1, 8, 1)[0])])
    operator = MilvusEmbeddingIndex(MilvusSettings(uri=milvus_uri, collection_prefix=prefix))
    operator.drop_collection(name)
    operator.close()
    with pytest.raises(ServiceUnavailableError):
        writer.upsert(name, [rec("c2", unit_rows(1, 8, 2)[0])])
    writer.upsert(name, [rec("c2", unit_rows(1, 8, 2)[0])])  # the pipeline's retry
    hits = writer.search_unsafe(name, unit_rows(1, 8, 2), 3, 0.99)
    assert [h.content_id for h in hits[0]] == ["c2"]  # c1 went with the dropped collection
    writer.close()


def test_a_collection_released_in_use_is_loaded_again_and_the_retry_succeeds(index: MilvusEmbeddingIndex) -> None:
    name = index.ensure_collection(SMALL)
    index.upsert(name, [rec("c1", unit_rows(1, 8, 1)[0])])
    index._connected().release_collection(name)  # an operator freeing memory
    with pytest.raises(ServiceUnavailableError):
        index.search_unsafe(name, unit_rows(1, 8, 1), 3, 0.99)
    hits = index.search_unsafe(name, unit_rows(1, 8, 1), 3, 0.99)  # the pipeline's retry
    assert [h.content_id for h in hits[0]] == ["c1"]


def test_foreign_collection_is_a_config_error(index: MilvusEmbeddingIndex) -> None:
    name = index.collection_for(SMALL)
    index._connected().create_collection(name, dimension=8)  # pymilvus quick setup: id + vector only
    with pytest.raises(ConfigError, match="not created by vitguard"):
        index.ensure_collection(SMALL)


def test_batched_search_finds_near_vectors_among_unsafe_only(index: MilvusEmbeddingIndex) -> None:
    name = index.ensure_collection(SMALL)
    base = unit_rows(24, 8, seed=7)
    labels = ["safe" if i % 4 == 3 else "unsafe" for i in range(24)]
    index.upsert(name, [rec(f"k{i}", base[i], labels[i], cluster=f"c-{i}") for i in range(24)])
    noise = np.random.default_rng(8).standard_normal((24, 8)).astype(np.float32) * 0.02
    queries = base + noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    results = index.search_unsafe(name, queries, limit=4, min_similarity=0.95)
    assert len(results) == 24
    for i, hits in enumerate(results):
        assert all(h.similarity >= 0.95 for h in hits)
        assert [h.similarity for h in hits] == sorted((h.similarity for h in hits), reverse=True)
        assert all(labels[int(h.content_id[1:])] == "unsafe" for h in hits)
        if labels[i] == "unsafe":
            assert hits[0].content_id == f"k{i}" and hits[0].cluster_id == f"c-{i}"
        else:
            assert f"k{i}" not in {h.content_id for h in hits}
    assert index.search_unsafe(name, np.zeros((0, 8), dtype=np.float32), 4, 0.9) == []


def test_search_right_after_upsert_sees_the_new_rows(index: MilvusEmbeddingIndex) -> None:
    name = index.ensure_collection(SMALL)
    vecs = unit_rows(2, 8, seed=11)
    index.upsert(name, [rec("first", vecs[0])])
    assert [h.content_id for h in index.search_unsafe(name, vecs[:1], 2, 0.99)[0]] == ["first"]
    index.upsert(name, [rec("second", vecs[1])])
    assert [h.content_id for h in index.search_unsafe(name, vecs[1:], 2, 0.99)[0]] == ["second"]


def test_unreachable_server_is_service_unavailable_every_time() -> None:
    settings = MilvusSettings(uri=f"http://127.0.0.1:{services.free_port()}", call_timeout_s=2, connect_timeout_s=2)
    down = MilvusEmbeddingIndex(settings)
    assert down.ping() is False
    for _ in range(2):  # no retry loop inside the adapter: each call fails fast, the caller's policy retries
        with pytest.raises(ServiceUnavailableError):
            down.ensure_collection(SMALL)


def test_ping(index: MilvusEmbeddingIndex) -> None:
    assert index.ping() is True


def test_lite_flushes_every_n_rows_and_rows_stay_searchable(milvus_uri: str, prefix: str) -> None:
    settings = MilvusSettings(uri=milvus_uri, collection_prefix=prefix)
    if not is_lite_uri(milvus_uri):
        pytest.skip("automatic flushing is for Milvus Lite")
    assert MilvusEmbeddingIndex(settings).flush_every_rows == DEFAULT_LITE_FLUSH_ROWS
    index = MilvusEmbeddingIndex(settings, flush_every_rows=4)
    name = index.ensure_collection(SMALL)
    vecs = unit_rows(6, 8, seed=21)
    index.upsert(name, [rec(f"f{i}", vecs[i]) for i in range(3)])
    assert index.unflushed_rows(name) == 3
    index.upsert(name, [rec(f"f{i}", vecs[i]) for i in range(3, 5)])
    assert index.unflushed_rows(name) == 0
    index.upsert(name, [rec("f5", vecs[5])])
    assert index.unflushed_rows(name) == 1
    assert index.count(name) == 6
    results = index.search_unsafe(name, vecs, limit=1, min_similarity=0.99)
    assert [hits[0].content_id for hits in results] == [f"f{i}" for i in range(6)]
    index.close()


def test_lite_and_server_uris_are_told_apart() -> None:
    assert is_lite_uri("./vitguard_milvus.db") and is_lite_uri("/var/lib/vitguard/m.db")
    assert not is_lite_uri("http://milvus:19530") and not is_lite_uri("https://x.zillizcloud.com")
    assert MilvusEmbeddingIndex(MilvusSettings(uri="http://milvus:19530")).flush_every_rows == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs (root only: skipped where mounting is not allowed); ``remount(mib)`` makes it larger."""
    where = tmp_path / "small-disk"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(where)],  # noqa: S607
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()[:200]}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)  # noqa: S607


def test_lite_on_a_full_disk_is_an_outage_not_a_config_error_and_resumes_once_there_is_room(
    small_disk: Path,
) -> None:
    index = MilvusEmbeddingIndex(MilvusSettings(uri=str(small_disk / "m.db")))
    info = ModelInfo("opennsfw", "r1", ("NSFW", "SFW"), 1024, (3, 224, 224))
    name = index.ensure_collection(info)
    written, failure = 0, None
    for batch in range(200):  # 3 MiB holds a few hundred 1,024-d rows
        vecs = unit_rows(64, 1024, seed=batch)
        try:
            index.upsert(name, [rec(f"d{batch}-{i}", vecs[i]) for i in range(64)])
        except (ServiceUnavailableError, ConfigError) as exc:
            failure = exc
            break
        written += 64
    assert isinstance(failure, ServiceUnavailableError), failure  # held and retried, never fatal
    assert "No space left on device" in str(failure)
    subprocess.run(["mount", "-o", "remount,size=32M", str(small_disk)], check=True)  # noqa: S607
    index.upsert(name, [rec(f"d{batch}-{i}", vecs[i]) for i in range(64)])  # the retry, once there is room
    assert index.count(name) == written + 64
    index.close()


def test_a_lite_flush_that_fails_on_a_full_disk_loses_no_acknowledged_row(small_disk: Path) -> None:
    """Milvus Lite swaps in a fresh memtable before it writes the old one: a flush that failed (the disk filled
    between the upsert's log write and the flush's data file) used to leave every row since the last flush out
    of the running store, although each upsert had been acknowledged (CI saw 320 rows of 576)."""
    index = MilvusEmbeddingIndex(MilvusSettings(uri=str(small_disk / "m.db")), flush_every_rows=256)
    name = index.ensure_collection(ModelInfo("opennsfw", "r1", ("NSFW", "SFW"), 1024, (3, 224, 224)))
    batches = [[rec(f"b{b}-{i}", v) for i, v in enumerate(unit_rows(64, 1024, seed=b))] for b in range(4)]
    before = shutil.disk_usage(small_disk).used
    for batch in batches[:3]:  # 192 rows: under the flush threshold
        index.upsert(name, batch)
    per_batch = (shutil.disk_usage(small_disk).used - before) // 3
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - per_batch * 3 // 2))
    try:
        index.upsert(name, batches[3])  # its log write fits; the flush of 256 rows does not
    except ServiceUnavailableError:
        subprocess.run(["mount", "-o", "remount,size=32M", str(small_disk)], check=True)  # noqa: S607
        index.upsert(name, batches[3])  # the caller's retry, once there is room
    assert index.count(name) == 256
    assert len(index.get(name, [r.content_id for batch in batches for r in batch])) == 256
    index.close()


def test_a_lite_file_held_by_another_process_is_a_config_error_that_says_so(tmp_path: Path) -> None:
    """Two workers on one host with the default Milvus Lite file: the second used to be told to check its
    token and database name ("Open local milvus failed")."""
    uri = str(tmp_path / "shared.db")
    holder = subprocess.Popen(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", "import sys, time\nfrom pymilvus import MilvusClient\n"
         f"MilvusClient(uri={uri!r}).list_collections()\nprint('holding', flush=True)\ntime.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        index = MilvusEmbeddingIndex(MilvusSettings(uri=uri))
        with pytest.raises(ConfigError, match="in use by another process") as caught:
            index.ensure_collection(SMALL)
        assert "VITGUARD_MILVUS_URI" in str(caught.value) and "TOKEN" not in str(caught.value)
    finally:
        holder.kill()
        holder.wait(10)
    index = MilvusEmbeddingIndex(MilvusSettings(uri=uri))  # free again: the same file opens
    assert index.ensure_collection(SMALL)
    index.close()


def _stored(n: int, seed: int) -> list[EmbeddingRecord]:
    """Rows of every kind a search filters on: two labels, three tenants, clusters, upload times an hour apart."""
    vecs = unit_rows(n, 8, seed=seed)
    return [EmbeddingRecord(f"item-{i}", vecs[i], "unsafe" if i % 3 else "safe", 0.9 if i % 3 else 0.1,
                            f"c-{i % 4}" if i % 3 else "", f"tenant-{i % 3}", "r1",
                            1_700_000_000_000 + i * 3_600_000, 1_700_000_000_000 + i * 3_600_000 + 500)
            for i in range(n)]


SEARCHES = {
    "any": SearchFilters(),
    "unsafe": SearchFilters(labels=("unsafe",)),
    "two tenants": SearchFilters(tenants=("tenant-1", "tenant-2")),
    "a cluster": SearchFilters(clusters=("c-1",)),
    "a time range": SearchFilters(since_ms=1_700_000_000_000 + 5 * 3_600_000,
                                  until_ms=1_700_000_000_000 + 20 * 3_600_000),
    "all at once": SearchFilters(labels=("unsafe",), tenants=("tenant-1", "tenant-2"),
                                 since_ms=1_700_000_000_000 + 3 * 3_600_000),
}


@pytest.mark.parametrize("filters", SEARCHES.values(), ids=SEARCHES.keys())
def test_similar_answers_what_a_brute_force_search_answers(index: MilvusEmbeddingIndex, filters: SearchFilters) -> None:
    """Milvus (Lite and server) and the in-memory index (numpy, brute force) give the same items in the same order
    with the same similarities, for every kind of filter, the query item left out."""
    rows = _stored(30, seed=21)
    name = index.ensure_collection(SMALL)
    index.upsert(name, rows)
    reference = InMemoryEmbeddingIndex("ref_")
    ref_name = reference.ensure_collection(SMALL)
    reference.upsert(ref_name, rows)
    query = rows[4].embedding
    got = index.similar(name, query, limit=6, min_similarity=-1.0, filters=filters, exclude=["item-4"],
                        consistency="Strong")  # rows upserted just now
    want = reference.similar(ref_name, query, limit=6, min_similarity=-1.0, filters=filters, exclude=["item-4"])
    assert want, "the case must find something"
    assert [g.content_id for g in got] == [w.content_id for w in want]
    assert [g.similarity for g in got] == pytest.approx([w.similarity for w in want], abs=1e-4)
    assert [g.unsafe_score for g in got] == pytest.approx([w.unsafe_score for w in want])  # Milvus keeps float32
    assert ({replace(g, similarity=0.0, unsafe_score=0.0) for g in got}
            == {replace(w, similarity=0.0, unsafe_score=0.0) for w in want})
    assert all(filters.admits(next(r for r in rows if r.content_id == g.content_id)) for g in got)


def test_similar_keeps_to_the_floor_and_the_limit(index: MilvusEmbeddingIndex) -> None:
    rows = _stored(30, seed=22)
    name = index.ensure_collection(SMALL)
    index.upsert(name, rows)
    found = index.similar(name, rows[0].embedding, limit=30, min_similarity=0.3, consistency="Strong")
    assert found and found[0].content_id == "item-0" and found[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert all(f.similarity >= 0.3 for f in found) and len(found) < 30
    assert [f.similarity for f in found] == sorted((f.similarity for f in found), reverse=True)
    assert len(index.similar(name, rows[0].embedding, limit=3, min_similarity=-1.0, consistency="Strong")) == 3


def test_a_filter_value_cannot_add_terms_to_the_milvus_expression(index: MilvusEmbeddingIndex) -> None:
    """A tenant such as ``x" or label != "`` would widen the search to every tenant if it reached Milvus as is:
    it is refused before any call."""
    name = index.ensure_collection(SMALL)
    index.upsert(name, _stored(6, seed=23))
    for bad in ('x" or label != "', "tenant-1\\", "a b"):
        with pytest.raises(ValueError):
            index.similar(name, unit_rows(1, 8, seed=1)[0], limit=3, min_similarity=-1.0,
                          filters=SearchFilters(tenants=(bad,)))
    with pytest.raises(ValueError):
        index.similar(name, unit_rows(1, 8, seed=1)[0], limit=3, min_similarity=-1.0, exclude=['item-1"] or ["'])


def test_cluster_rows_are_the_unsafe_rows_on_a_cluster_as_stored(index: MilvusEmbeddingIndex) -> None:
    rows = _stored(30, seed=24)
    name = index.ensure_collection(SMALL)
    index.upsert(name, rows)
    for filters in (SearchFilters(), SearchFilters(tenants=("tenant-1",)), SearchFilters(clusters=("c-2",))):
        got, cut = index.cluster_rows(name, filters=filters)
        want = [StoredItem.of(r) for r in rows if r.label == "unsafe" and r.cluster_id and filters.admits(r)]
        assert not cut and want
        assert sorted(g.content_id for g in got) == sorted(w.content_id for w in want)
        assert {replace(g, unsafe_score=0.0) for g in got} == {replace(w, unsafe_score=0.0) for w in want}
    got, cut = index.cluster_rows(name, limit=3)
    assert len(got) == 3 and cut
