"""Milvus adapter of :class:`~vitguard.stores.interfaces.EmbeddingIndex`.

One collection per model (name and dimension from :class:`~vitguard.model.types.ModelInfo`), COSINE
metric, ``content_id`` as primary key so an upsert is idempotent. The same code talks to Milvus Lite (a
``*.db`` file path) and to a Milvus server (``http://host:19530``): only ``MilvusSettings.uri`` differs.

Calls are blocking (pymilvus is synchronous); the pipeline runs them in a worker thread. A lock makes the
adapter safe when several threads share it, one call at a time.

Failure behaviour, the contract callers build their retry policy on:

- **Every call has a deadline.** pymilvus waits forever when a call has no timeout, so every
  ``MilvusClient`` method gets ``timeout=MilvusSettings.call_timeout_s`` (creating and loading a collection
  ``load_timeout_s``) and the client itself ``timeout=MilvusSettings.connect_timeout_s``. A frozen server
  fails a call after the deadline.
- **One retry layer, the caller's.** This module never retries. pymilvus wraps each RPC in its own retry
  loop (``pymilvus.decorators.retry_on_rpc_failure``): 75 attempts when no timeout is given, and when one
  is given the timeout is that loop's whole budget (``retry_times`` is then ignored) and a
  ``DEADLINE_EXCEEDED`` is never retried. So the deadline bounds it; ``retry_on_rate_limit=False`` turns
  off its sleeping on rate limits; an ``UNAVAILABLE`` makes it reconnect once (bounded by the connect
  timeout) and fail when the server is down. What comes out is for the caller's policy
  (:class:`~vitguard.pipeline.runtime.failure.MilvusPolicy`, the pipeline's retry).
- **Transient errors** (unreachable, hung, overloaded, any gRPC or socket error) become
  :class:`~vitguard.errors.ServiceUnavailableError`; the client is dropped and closed, so the next call
  opens a fresh connection (a broken gRPC channel does not heal by itself).
- **Permanent errors** become :class:`~vitguard.errors.ConfigError` and must not be retried: a collection
  with another dimension or schema (also one recreated under a running worker: when Milvus refuses an
  upsert or search, the adapter re-reads the collection's schema), a request the server calls invalid, and
  authentication or permission failures; by error code, see :func:`permanent_error`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

from vitguard.errors import ConfigError, ServiceUnavailableError, cause_chain
from vitguard.model.types import ModelInfo
from vitguard.settings import MilvusSettings
from vitguard.stores.interfaces import EmbeddingRecord, SearchHit
from vitguard.stores.naming import collection_name
from vitguard.stores.recent import RecentWrites, merge_hits
from vitguard.stores.similar import ANY, SearchFilters, SimilarItem, StoredItem, milvus_filter

__all__ = [
    "DEFAULT_LITE_FLUSH_ROWS",
    "FIELDS",
    "PERMANENT_MILVUS_CODES",
    "UNSAFE_FILTER",
    "MilvusEmbeddingIndex",
    "is_lite_uri",
    "lite_file_in_use",
    "permanent_error",
]

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_LITE_FLUSH_ROWS = 256
"""Milvus Lite searches unflushed (growing) rows by brute force after copying them row by row into a snapshot,
on every search: with 1024-d vectors, a 16-query search took ~80 ms over 1,000 unflushed rows, ~500 ms over
5,000 and ~2 s over 10,000, against ~0.3 s over 10,000 rows flushed every 1,024. So on Milvus Lite the
adapter flushes a collection after this many upserted rows. With 192-d rows and 64-row upserts (half of them
searched), flushing every 256 rows instead of 1,024 took the search from 0.87 to 0.54 ms an image and the
upsert, flushes included, from 0.48 to 0.36 (128: no better). A Milvus server seals and indexes growing
segments itself; there the adapter never flushes unless asked to."""

UNSAFE_FILTER = 'label == "unsafe"'
MAX_QUERY_ROWS = 16_383
"""The most rows one query reads (Milvus refuses a query limit over 16,384; one more is asked for, to tell a
cut answer)."""
"""Only items judged unsafe are candidates for near-duplicate clustering."""

_VARCHAR = {"content_id": 256, "label": 32, "cluster_id": 128, "tenant": 256, "model_version": 256}
FIELDS = (
    "content_id",
    "embedding",
    "label",
    "unsafe_score",
    "cluster_id",
    "tenant",
    "model_version",
    "created_at_ms",
    "processed_at_ms",
)
"""Columns of every collection, primary key first."""


PERMANENT_MILVUS_CODES = frozenset(
    {
        105,  # CollectionIllegalSchema
        109,  # CollectionSchemaMismatch
        800,  # DatabaseNotFound: VITGUARD_MILVUS_DB_NAME names no database
        802,  # DatabaseInvalidName
        1100,  # ParameterInvalid: e.g. "the dim (16) of field data(embedding) is not equal to schema dim (8)"
        1101,  # ParameterMissing
        1102,  # ParameterTooLarge
        1200,  # MetricNotFound
        1400,  # PrivilegeNotAuthenticated
        1401,  # PrivilegeNotPermitted
        1700,  # FieldNotFound
        1701,  # FieldInvalidName
    }
)
"""Milvus server error codes (``MilvusException.code``, Milvus's ``merr`` package) that no retry can fix:
the request or the credentials must change first."""

_CONNECT_FAILED = 2
"""pymilvus's ``Status.CONNECT_FAILED``: the connection, not the server, failed."""

_PERMANENT_LEGACY_CODES = frozenset({"PermissionDenied", "IllegalArgument", "IllegalDimension", "SchemaMismatch"})
"""The same, as the legacy ``common_pb2.ErrorCode`` names (``MilvusException.compatible_code``)."""


def permanent_error(exc: BaseException) -> bool:
    """True when retrying ``exc`` cannot help: schema or dimension mismatch, invalid request, bad credentials.

    Looks at the error codes, never at message text: gRPC status codes (``UNAUTHENTICATED``,
    ``PERMISSION_DENIED``, ``UNIMPLEMENTED``), Milvus server codes (:data:`PERMANENT_MILVUS_CODES` and the
    legacy ones) and pymilvus's client-side validation errors (data that does not match the schema). The
    ``__cause__`` chain is followed too: pymilvus reports a refused login as "Fail connecting" (code 2)
    caused by an ``UNAUTHENTICATED`` gRPC error.
    """
    import grpc
    from pymilvus import exceptions as mexc
    from pymilvus.grpc_gen import common_pb2

    permanent_grpc = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED}
    client_side = (
        mexc.ConnectionConfigException,  # an illegal URI, a Milvus Lite directory that does not exist
        mexc.ParamError,
        mexc.DataNotMatchException,
        mexc.DataTypeNotMatchException,
        mexc.SchemaMismatchRetryableException,  # pymilvus already retried it once with a fresh schema
        mexc.PrimaryKeyException,
        mexc.FieldsTypeException,
        mexc.FieldTypeException,
    )
    for current in cause_chain(exc):
        if isinstance(current, grpc.RpcError):
            code = getattr(current, "code", None)
            if callable(code) and code() in permanent_grpc:
                return True
        elif isinstance(current, mexc.MilvusException):
            if isinstance(current, client_side) or current.code in PERMANENT_MILVUS_CODES:
                return True
            try:
                legacy = common_pb2.ErrorCode.Name(current.compatible_code)
            except ValueError:
                legacy = ""
            if legacy in _PERMANENT_LEGACY_CODES:
                return True
    return False


def _answered_by_server(exc: BaseException) -> bool:
    """True when Milvus itself answered with an error status: no network failure, deadline or lost connection."""
    import grpc
    from pymilvus.exceptions import MilvusException

    chain = list(cause_chain(exc))
    if any(isinstance(e, grpc.RpcError | OSError | TimeoutError) for e in chain):
        return False
    return any(isinstance(e, MilvusException) and e.code != _CONNECT_FAILED for e in chain)


_COLLECTION_NOT_FOUND = 100
"""Milvus's ``ErrCollectionNotFound`` (``merr``), on Milvus Lite and on a server alike."""

_COLLECTION_NOT_LOADED = 101
"""Milvus's ``ErrCollectionNotLoaded``: released (``release_collection``), so searches are refused."""


def _has_code(exc: BaseException, code: int) -> bool:
    from pymilvus.exceptions import MilvusException

    return any(isinstance(e, MilvusException) and e.code == code for e in cause_chain(exc))


def _unavailable_errors() -> tuple[type[BaseException], ...]:
    from pymilvus.exceptions import MilvusException

    errors: list[type[BaseException]] = [MilvusException, OSError, TimeoutError]
    try:
        import grpc

        errors.append(grpc.RpcError)
    except ImportError:  # pragma: no cover - grpc is a pymilvus dependency
        pass
    return tuple(errors)


class MilvusEmbeddingIndex:
    """Embeddings in Milvus, one collection per model.

    The client connects lazily, on the first call, so building the adapter never fails because Milvus is
    down; the first call then raises :class:`ServiceUnavailableError` and a later one reconnects. The
    connection is the adapter's own (pymilvus ``dedicated=True``), not shared with other clients of the
    same address, so closing a broken one cannot break anybody else's.

    Args:
        settings: URI (Lite path or server URI), token, database, collection prefix.
        flush_every_rows: flush a collection after this many upserted rows; 0 never flushes. Default:
            :data:`DEFAULT_LITE_FLUSH_ROWS` on Milvus Lite, 0 on a server.
    """

    def __init__(self, settings: MilvusSettings, *, flush_every_rows: int | None = None) -> None:
        self._settings = settings
        self._lock = threading.RLock()
        self._client: Any = None
        self._dims: dict[str, int] = {}
        self._unflushed: dict[str, int] = {}
        self._since_flush: dict[str, dict[str, dict[str, Any]]] = {}
        """Rows upserted since the last flush, by content id, kept when flushing (Lite) to resend after a
        failed flush: Milvus Lite swaps in a fresh memtable before it writes the old one, so a flush that
        fails (a full disk) drops the rows already acknowledged from the running store (they are back only
        when the file is reopened and its log replayed)."""
        self._resend_owed: set[str] = set()
        self._recent = RecentWrites()
        """This process's recent unsafe rows: searches run at Bounded consistency (see stores/recent.py)."""
        self._errors = _unavailable_errors()
        # on every MilvusClient method: the deadline, and no sleeping retries on rate limits (module docstring)
        self._rpc: dict[str, Any] = {"timeout": settings.call_timeout_s, "retry_on_rate_limit": False}
        self._load_rpc: dict[str, Any] = {**self._rpc, "timeout": settings.load_timeout_s}
        if flush_every_rows is None:
            flush_every_rows = DEFAULT_LITE_FLUSH_ROWS if is_lite_uri(settings.uri) else 0
        if flush_every_rows < 0:
            raise ValueError("flush_every_rows must be >= 0")
        self.flush_every_rows = flush_every_rows

    @property
    def settings(self) -> MilvusSettings:
        return self._settings

    def collection_for(self, model: ModelInfo) -> str:
        """The model's collection name (pure; does not create it)."""
        return collection_name(self._settings.collection_prefix, model)

    # -- EmbeddingIndex ---------------------------------------------------------------------------

    def ensure_collection(self, model: ModelInfo) -> str:
        """Create the model's collection if missing and load it; return its name.

        Raises:
            ConfigError: a collection of that name exists with another embedding dimension or without
                the expected fields (it was made by something else).
            ServiceUnavailableError: Milvus did not answer.
        """
        name = self.collection_for(model)
        dim = model.embedding_dim
        if dim < 1:
            raise ConfigError(f"model {model.name} has embedding_dim {dim}; it must be positive")
        with self._lock:
            if self._dims.get(name) != dim:
                self._make_ready(name, dim, f"model {model.name}")
            return name

    def open_collection(self, name: str) -> str:
        """Load an existing collection for reading (``vitguard search``: a Milvus Lite file opened after its
        worker stopped holds its collections released); return its name.

        Raises:
            ConfigError: there is no such collection, or it was not made by vitguard.
            ServiceUnavailableError: Milvus did not answer.
        """
        with self._lock:
            client = self._connected()
            if not self._call(lambda: client.has_collection(name, **self._rpc)):
                raise ConfigError(f"Milvus at {self._settings.uri} has no collection {name}")
            self._dims[name] = self._described_dim(client, name)
            self._call(lambda: client.load_collection(name, **self._load_rpc))
        return name

    def _make_ready(self, name: str, dim: int, writer: str) -> None:
        """Create the collection if missing (another worker creating it at the same moment is fine), check
        its dimension, load it. ``writer`` names who writes ``dim``-d rows, for the ConfigError."""
        client = self._connected()
        if not self._call(lambda: client.has_collection(name, **self._rpc)):
            try:
                self._call(lambda: self._create(client, name, dim, self._load_rpc))
            except ServiceUnavailableError:
                client = self._connected()
                if not self._call(lambda: client.has_collection(name, **self._rpc)):
                    raise
        existing = self._described_dim(client, name)
        if existing != dim:
            raise ConfigError(
                f"Milvus collection {name} holds {existing}-d embeddings but {writer} makes "
                f"{dim}-d ones: drop the collection or use another VITGUARD_MILVUS_COLLECTION_PREFIX"
            )
        self._call(lambda: client.load_collection(name, **self._load_rpc))
        self._dims[name] = dim

    def upsert(self, collection: str, records: Sequence[EmbeddingRecord]) -> None:
        """Insert or replace rows by content id, in one call; of two records with the same content id (two
        events for one upload in a batch), the last is written: Milvus 2.6.7 and later refuse duplicate
        primary keys within one upsert (code 1100, which would read as a permanent error).

        Raises:
            ValueError: a record's embedding does not have the collection's dimension.
            ConfigError: Milvus refused the rows for good (schema changed under us, no permission).
            ServiceUnavailableError: Milvus did not answer in time; nothing is known to be written.
        """
        if not records:
            return
        with self._lock:
            dim = self._dim_of(collection)
            latest = list({r.content_id: r for r in records}.values())
            rows = [_row(r, dim) for r in latest]
            if collection in self._resend_owed:  # a failed flush's rows go first, the new ones replace them
                by_id = {**self._since_flush.get(collection, {}), **{r["content_id"]: r for r in rows}}
                self._write(collection, dim, list(by_id.values()))
                self._resend_owed.discard(collection)
            else:
                self._write(collection, dim, rows)
            self._recent.wrote(collection, latest)
            pending = self._unflushed.get(collection, 0) + len(rows)
            self._unflushed[collection] = pending
            if self.flush_every_rows and pending >= self.flush_every_rows:
                self._flush_or_resend(collection, dim)

    def _write(self, collection: str, dim: int, rows: list[dict[str, Any]]) -> None:
        """One upsert call; on Lite, the rows are also kept until the next flush (see ``_since_flush``)."""
        client = self._connected()
        try:
            self._call(lambda: client.upsert(collection_name=collection, data=rows, **self._rpc))
        except ServiceUnavailableError as exc:
            self._after_refusal(collection, dim, exc)
            raise
        if self.flush_every_rows:
            self._since_flush.setdefault(collection, {}).update((r["content_id"], r) for r in rows)

    def _flush_or_resend(self, collection: str, dim: int) -> None:
        """Flush; when the flush fails, write the rows since the last flush again, so the running store holds
        every acknowledged row. The upsert being answered succeeded: only when the resend fails too does it
        raise :class:`ServiceUnavailableError` (the caller retries the batch, and the kept rows go with it)."""
        try:
            self.flush(collection)
            return
        except ServiceUnavailableError as exc:
            log.warning("Milvus flush of %s failed, rows since the last flush are written again: %s",
                        collection, exc)
        self._resend_owed.add(collection)  # until written: the next upsert sends them with its own rows
        self._write(collection, dim, list(self._since_flush.get(collection, {}).values()))
        self._resend_owed.discard(collection)

    def search_unsafe(
        self, collection: str, vectors: NDArray[np.float32], limit: int, min_similarity: float
    ) -> list[list[SearchHit]]:
        """One batched search among unsafe rows.

        Returns:
            One list per query vector: hits with cosine similarity >= ``min_similarity``, most similar
            first, at most ``limit``.

        Raises:
            ValueError: ``vectors`` is not ``(N, dim)``.
            ConfigError: Milvus refused the search for good (see :func:`permanent_error`).
            ServiceUnavailableError: Milvus did not answer in time.
        """
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.ndim != 2:
            raise ValueError(f"vectors must be a 2-d (N, dim) array, got shape {matrix.shape}")
        if matrix.shape[0] == 0:
            return []
        if limit < 1:
            raise ValueError("limit must be at least 1")
        with self._lock:
            dim = self._dim_of(collection)
            if matrix.shape[1] != dim:
                raise ValueError(f"collection {collection} holds {dim}-d vectors, got {matrix.shape[1]}-d")
            client = self._connected()
            try:
                raw = self._call(
                    lambda: client.search(
                        collection_name=collection,
                        data=matrix.tolist(),
                        filter=UNSAFE_FILTER,
                        limit=limit,
                        output_fields=["cluster_id"],
                        anns_field="embedding",
                        search_params={"metric_type": "COSINE"},
                        # no wait for the server's time tick (~200 ms a search with Strong); this process's
                        # own recent writes are searched in memory instead (read-your-writes)
                        consistency_level="Bounded",
                        **self._rpc,
                    )
                )
            except ServiceUnavailableError as exc:
                self._after_refusal(collection, dim, exc)
                raise
            recent = self._recent.search(collection, matrix, limit, min_similarity)
        return [merge_hits(_hits(per_query, min_similarity), mine, limit=limit)
                for per_query, mine in zip(raw, recent, strict=True)]

    def similar(
        self, collection: str, vector: NDArray[np.float32], *, limit: int, min_similarity: float,
        filters: SearchFilters = ANY, exclude: Sequence[str] = (),
        consistency: Literal["Strong", "Bounded"] | None = None,
    ) -> list[SimilarItem]:
        """The stored items most similar to ``vector`` that pass ``filters``, ``exclude`` left out: at most
        ``limit``, similarity >= ``min_similarity``, most similar first (``POST /search``, ``vitguard search``).

        Runs at ``consistency``, by default ``VITGUARD_MILVUS_SEARCH_CONSISTENCY`` (``Bounded``): a search
        answers in milliseconds and may miss rows upserted in the last seconds on a server; ``Strong`` sees
        them and waits for the server's next time tick (~200 ms a search; ``bench/search.py`` measures both).
        The stream's near-duplicate search (:meth:`search_unsafe`) is ``Bounded`` with this process's recent
        rows beside it.

        Raises:
            ValueError: ``vector`` does not have the collection's dimension, or ``limit`` is below 1.
            ConfigError: Milvus refused the search for good.
            ServiceUnavailableError: Milvus did not answer in time.
        """
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if limit < 1:
            raise ValueError("limit must be at least 1")
        expr = milvus_filter(filters, exclude=exclude)
        with self._lock:
            dim = self._dim_of(collection)
            if query.shape[0] != dim:
                raise ValueError(f"collection {collection} holds {dim}-d vectors, got {query.shape[0]}-d")
            client = self._connected()
            try:
                raw = self._call(lambda: client.search(
                    collection_name=collection, data=[query.tolist()], filter=expr, limit=limit,
                    output_fields=[f for f in FIELDS if f != "embedding"], anns_field="embedding",
                    search_params={"metric_type": "COSINE"},
                    consistency_level=consistency or self._settings.search_consistency, **self._rpc,
                ))
            except ServiceUnavailableError as exc:
                self._after_refusal(collection, dim, exc)
                raise
        found = [_similar_item(h) for h in raw[0]]
        return sorted((f for f in found if f.similarity >= min_similarity), key=lambda f: -f.similarity)

    def cluster_rows(self, collection: str, *, filters: SearchFilters = ANY,
                     limit: int = MAX_QUERY_ROWS) -> tuple[list[StoredItem], bool]:
        """The unsafe rows on a cluster that pass ``filters`` (embeddings left out), at most ``limit``, and
        whether there were more (cluster listings read every row they summarise: fine for what one cluster or a
        tenant holds, not for a whole store of billions; the answer says when it is cut).

        Raises:
            ConfigError: Milvus refused the query for good.
            ServiceUnavailableError: Milvus did not answer in time.
        """
        limit = min(limit, MAX_QUERY_ROWS)
        expr = " and ".join(t for t in (UNSAFE_FILTER, 'cluster_id != ""', milvus_filter(filters)) if t)
        fields = ["content_id", "label", "unsafe_score", "cluster_id", "tenant", "created_at_ms", "processed_at_ms"]
        with self._lock:
            client = self._connected()
            rows = self._call(lambda: client.query(collection, filter=expr, output_fields=fields, limit=limit + 1,
                                                   **self._rpc))
        items = [StoredItem(str(r["content_id"]), str(r["label"]), float(r["unsafe_score"]), str(r["cluster_id"]),
                            str(r["tenant"]), int(r["created_at_ms"]), int(r["processed_at_ms"])) for r in rows]
        return items[:limit], len(items) > limit

    def ping(self) -> bool:
        """True when Milvus answers a cheap call within the deadlines; False otherwise, never hangs.

        A permanent failure (bad credentials) is False too, logged: a health probe reports, the first
        real call raises the :class:`ConfigError`. So is a client held by another call for longer than one
        call's deadline (a call that hangs past its own timeout): the probe does not queue behind it.
        """
        if not self._lock.acquire(timeout=self._settings.call_timeout_s):
            log.warning("Milvus ping: the client has been busy with another call for over %.0f s",
                        self._settings.call_timeout_s)
            return False
        try:
            client = self._connected()
            self._call(lambda: client.list_collections(**self._rpc))
        except ServiceUnavailableError:
            return False
        except ConfigError as exc:
            log.warning("Milvus ping refused: %s", exc)
            return False
        finally:
            self._lock.release()
        return True

    # -- extras (not in the protocol) -------------------------------------------------------------

    def get(self, collection: str, content_ids: Sequence[str]) -> dict[str, EmbeddingRecord]:
        """The stored rows of these content ids (the ones found), embedding included.

        Used by the review loop to re-upsert a reviewed item with its new label (Milvus has no partial
        update of one field).

        Raises:
            ConfigError: Milvus refused the read for good.
            ServiceUnavailableError: Milvus did not answer in time.
        """
        if not content_ids:
            return {}
        with self._lock:
            client = self._connected()
            rows = self._call(
                lambda: client.get(collection, ids=list(content_ids), output_fields=list(FIELDS), **self._rpc)
            )
        return {str(r["content_id"]): _record(r) for r in rows}

    def count(self, collection: str) -> int:
        """Rows in a collection (operations and tests)."""
        with self._lock:
            client = self._connected()
            res = self._call(lambda: client.query(collection, filter="", output_fields=["count(*)"], **self._rpc))
        return int(res[0]["count(*)"])

    def unflushed_rows(self, collection: str) -> int:
        """Rows upserted through this adapter since the collection was last flushed by it."""
        return self._unflushed.get(collection, 0)

    def flush(self, collection: str) -> None:
        """Seal the collection's growing rows so searches use the index (see :data:`DEFAULT_LITE_FLUSH_ROWS`)."""
        with self._lock:
            client = self._connected()
            self._call(lambda: client.flush(collection, **self._rpc))
            self._unflushed[collection] = 0
            self._since_flush.pop(collection, None)

    def drop_collection(self, collection: str) -> None:
        """Drop a collection if it exists (operations and tests)."""
        with self._lock:
            client = self._connected()
            self._call(lambda: client.drop_collection(collection, **self._rpc))
            self._dims.pop(collection, None)
            self._unflushed.pop(collection, None)
            self._since_flush.pop(collection, None)
            self._resend_owed.discard(collection)
            self._recent.forget(collection)

    def close(self) -> None:
        """Close the client connection; a later call reconnects."""
        with self._lock:
            self._drop_client()

    # -- internals --------------------------------------------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one pymilvus call and map its errors (see the module docstring). Never retries."""
        try:
            return fn()
        except self._errors as exc:
            if permanent_error(exc):
                raise ConfigError(
                    f"Milvus at {self._settings.uri} refused the request, retrying will not help "
                    f"(check VITGUARD_MILVUS_TOKEN, VITGUARD_MILVUS_DB_NAME and the collection's schema): {exc}"
                ) from exc
            # a broken gRPC channel does not heal by itself: close it, the next call reconnects
            self._drop_client()
            raise ServiceUnavailableError(f"Milvus at {self._settings.uri}: {exc}") from exc

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # a close that fails leaves nothing to clean up
                log.debug("closing the Milvus client failed: %s", exc)

    def _connected(self) -> Any:
        if self._client is None:
            from pymilvus import MilvusClient

            s = self._settings
            kwargs: dict[str, Any] = {"uri": s.uri, "timeout": s.connect_timeout_s, "dedicated": True}
            if s.token is not None:
                kwargs["token"] = s.token.get_secret_value()
            if s.db_name:
                kwargs["db_name"] = s.db_name
            try:
                self._client = self._call(lambda: MilvusClient(**kwargs))
            except ConfigError as exc:
                if is_lite_uri(s.uri) and lite_file_in_use(s.uri):
                    raise ConfigError(
                        f"the Milvus Lite file {s.uri} is in use by another process: Milvus Lite serves one "
                        "process at a time, so give each worker its own VITGUARD_MILVUS_URI file, or point every "
                        "worker at one Milvus server (VITGUARD_MILVUS_URI=http://HOST:19530)"
                    ) from exc
                raise
        return self._client

    def _after_refusal(self, collection: str, dim: int, failure: ServiceUnavailableError) -> None:
        """After Milvus itself refused a call, mend or name what changed under us, so the caller's retry can
        succeed or stops: a released collection is loaded again, a dropped one made again (empty), one
        recreated by something else with another dimension is a ConfigError.

        Milvus reports rows of the wrong dimension with no specific error code ("the length(8) of float
        data should divide the dim(12)", code 65535), so the adapter asks for the collection's schema
        instead of reading the message: a collection dropped and recreated by something else with another
        dimension cannot be fixed by retrying. Network failures skip the check (there is nobody to ask).
        """
        if failure.__cause__ is None or not _answered_by_server(failure.__cause__):
            return
        if _has_code(failure, _COLLECTION_NOT_LOADED):  # released under us (search refuses; upsert does not)
            log.warning("Milvus collection %s was released while in use; loading it again", collection)
            with contextlib.suppress(ServiceUnavailableError):  # the caller's retry asks again
                client = self._connected()
                self._call(lambda: client.load_collection(collection, **self._load_rpc))
            return
        self._dims.pop(collection, None)
        try:
            now = self._described_dim(self._connected(), collection)
        except ServiceUnavailableError as exc:
            if _has_code(exc, _COLLECTION_NOT_FOUND):  # dropped under us: a retry of the call could never succeed
                self._recreate(collection, dim)
            return  # the caller retries the original failure
        if now != dim:
            raise ConfigError(
                f"Milvus collection {collection} now holds {now}-d embeddings, not the {dim}-d ones written here: "
                "it was recreated by something else; drop it or use another VITGUARD_MILVUS_COLLECTION_PREFIX"
            ) from failure.__cause__
        self._dims[collection] = dim

    def _recreate(self, collection: str, dim: int) -> None:
        """The collection was dropped while this worker wrote to it (an operator resetting the index): make
        it again, empty, so the retried call succeeds instead of holding the stream until a restart."""
        log.warning("Milvus collection %s was dropped while in use; recreating it empty (near-duplicate "
                    "search starts again from nothing)", collection)
        self._unflushed.pop(collection, None)
        self._since_flush.pop(collection, None)
        self._resend_owed.discard(collection)
        self._recent.forget(collection)
        self._make_ready(collection, dim, "this worker")

    def _dim_of(self, collection: str) -> int:
        dim = self._dims.get(collection)
        if dim is None:
            dim = self._described_dim(self._connected(), collection)
            self._dims[collection] = dim
        return dim

    def _described_dim(self, client: Any, name: str) -> int:
        desc = self._call(lambda: client.describe_collection(name, **self._rpc))
        fields = {f["name"]: f for f in desc.get("fields", [])}
        missing = [f for f in FIELDS if f not in fields]
        if missing:
            raise ConfigError(
                f"Milvus collection {name} lacks field(s) {', '.join(missing)}: it was not created by vitguard"
            )
        return int(fields["embedding"]["params"]["dim"])

    @staticmethod
    def _create(client: Any, name: str, dim: int, rpc: dict[str, Any]) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("content_id", DataType.VARCHAR, is_primary=True, max_length=_VARCHAR["content_id"])
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("label", DataType.VARCHAR, max_length=_VARCHAR["label"])
        schema.add_field("unsafe_score", DataType.FLOAT)
        schema.add_field("cluster_id", DataType.VARCHAR, max_length=_VARCHAR["cluster_id"])
        schema.add_field("tenant", DataType.VARCHAR, max_length=_VARCHAR["tenant"])
        schema.add_field("model_version", DataType.VARCHAR, max_length=_VARCHAR["model_version"])
        schema.add_field("created_at_ms", DataType.INT64)
        schema.add_field("processed_at_ms", DataType.INT64)
        index = client.prepare_index_params()
        index.add_index(field_name="embedding", index_type="AUTOINDEX", metric_type="COSINE")
        # Strong consistency: a search right after an upsert must see it, or near-duplicates arriving in
        # consecutive batches would each start their own cluster.
        client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong", **rpc)


def is_lite_uri(uri: str) -> bool:
    """True for a Milvus Lite database path, False for a server URI (``http://host:19530`` and the like)."""
    return "://" not in uri and not uri.startswith("unix:")


_LITE_LOCK_FILE = "LOCK"
"""The file in a Milvus Lite database directory that its serving process holds an exclusive ``flock`` on."""


def lite_file_in_use(uri: str) -> bool:
    """Whether another process holds the Milvus Lite database at ``uri`` (its lock is taken). Milvus Lite
    reports that only as "Open local milvus failed"; this tells it apart, after such a failure."""
    try:
        import fcntl
    except ImportError:  # not on Linux or macOS
        return False
    try:
        fd = os.open(os.path.join(uri, _LITE_LOCK_FILE), os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _row(r: EmbeddingRecord, dim: int) -> dict[str, Any]:
    vec = np.asarray(r.embedding, dtype=np.float32).reshape(-1)
    if vec.shape[0] != dim:
        raise ValueError(f"record {r.content_id} has a {vec.shape[0]}-d embedding, the collection {dim}-d")
    for name, limit in _VARCHAR.items():
        value = getattr(r, name)
        if len(value) > limit:
            raise ValueError(f"record {r.content_id}: {name} longer than {limit} characters")
    return {
        "content_id": r.content_id,
        "embedding": vec.tolist(),
        "label": r.label,
        "unsafe_score": float(r.unsafe_score),
        "cluster_id": r.cluster_id,
        "tenant": r.tenant,
        "model_version": r.model_version,
        "created_at_ms": int(r.created_at_ms),
        "processed_at_ms": int(r.processed_at_ms),
    }


def _record(row: Mapping[str, Any]) -> EmbeddingRecord:
    return EmbeddingRecord(
        content_id=str(row["content_id"]),
        embedding=np.asarray(row["embedding"], dtype=np.float32),
        label=str(row["label"]),
        unsafe_score=float(row["unsafe_score"]),
        cluster_id=str(row["cluster_id"]),
        tenant=str(row["tenant"]),
        model_version=str(row["model_version"]),
        created_at_ms=int(row["created_at_ms"]),
        processed_at_ms=int(row["processed_at_ms"]),
    )


def _similar_item(hit: Mapping[str, Any]) -> SimilarItem:
    entity = {**(hit.get("entity") or {}), "content_id": hit.get("content_id", hit.get("id"))}
    return SimilarItem(
        content_id=str(entity["content_id"]), similarity=float(hit["distance"]), label=str(entity["label"]),
        unsafe_score=float(entity["unsafe_score"]), cluster_id=str(entity["cluster_id"]),
        tenant=str(entity["tenant"]), model_version=str(entity["model_version"]),
        created_at_ms=int(entity["created_at_ms"]), processed_at_ms=int(entity["processed_at_ms"]),
    )


def _hits(raw: Sequence[Any], min_similarity: float) -> list[SearchHit]:
    hits = []
    for h in raw:
        similarity = float(h["distance"])
        if similarity < min_similarity:
            continue
        entity = h.get("entity") or {}
        content_id = h.get("content_id", h.get("id", entity.get("content_id")))
        hits.append(SearchHit(str(content_id), similarity, str(entity.get("cluster_id", ""))))
    hits.sort(key=lambda hit: hit.similarity, reverse=True)
    return hits
