"""Prometheus metrics of the worker, all in one registry and all named ``vitguard_*``.

Dashboards and alert rules (``deploy/``) refer to these names: treat them as a contract, add new metrics
rather than renaming old ones. Every metric lives in :data:`REGISTRY`, so ``/metrics`` exposes exactly
vitguard's series (plus process metrics) and a test can read values with ``REGISTRY.get_sample_value``.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = [
    "ALERTS",
    "ALERTS_SUPPRESSED",
    "BANK_FLOODS",
    "BANK_REQUESTS",
    "BATCH_DURATION",
    "BATCH_SIZE",
    "BATCH_WAIT",
    "CACHE_HITS",
    "BANK_LOOKUP_REQUESTS",
    "POLICY_DOCUMENTS",
    "POLICY_SHADOW_DECISIONS",
    "POLICY_VERSION",
    "CLASSIFY_REQUESTS",
    "CLUSTER_REQUESTS",
    "CONTENT_TYPE",
    "DEAD_LETTERS",
    "EVENTS_CONSUMED",
    "EVENTS_REDELIVERED",
    "FRONT_BATCH_RECORDS",
    "INPUT_UNKNOWN_FIELDS",
    "EVENT_LATENCY",
    "FATAL_ERRORS",
    "IMAGE_STAGE_DURATION",
    "IN_FLIGHT",
    "LAST_BATCH_TIMESTAMP",
    "METRIC_NAMES",
    "MODEL_INFO",
    "OFFSET_HOLES",
    "OUTPUTS_DROPPED",
    "OUTPUTS_TRUNCATED",
    "PUBLISH_RETRIES",
    "QUEUE_TIME",
    "SEARCH_REQUESTS",
    "REDIS_LOOKUP_KEYS",
    "REGISTRY",
    "STAGE_DURATION",
    "STORE_ERRORS",
    "VERDICTS",
    "render",
]

REGISTRY = CollectorRegistry(auto_describe=True)
"""The one registry ``/metrics`` serves."""

ProcessCollector(registry=REGISTRY)

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""Content-Type of :func:`render`'s output (Prometheus text format)."""

_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

EVENTS_CONSUMED = Counter(
    "vitguard_events_consumed", "Input messages taken from the image-events topic.", registry=REGISTRY
)
EVENTS_REDELIVERED = Counter(
    "vitguard_events_redelivered",
    "Events skipped because their id was already processed (redelivery guard).",
    registry=REGISTRY,
)
INPUT_UNKNOWN_FIELDS = Counter(
    "vitguard_input_unknown_fields",
    "Fields of input events that the contract does not define (accepted and ignored): producers ahead of the "
    "workers, or x_ fields of their own.",
    registry=REGISTRY,
)
VERDICTS = Counter(
    "vitguard_verdicts",
    "Verdicts published, by label and by where they came from (model or cache).",
    ["label", "source"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "vitguard_dead_letters", "Dead letters published, by reason code.", ["reason"], registry=REGISTRY
)
BANK_FLOODS = Counter(
    "vitguard_bank_floods",
    "Hash-bank entries that matched far more items than usual, by outcome: quarantined (unrelated images), "
    "wave_kept (copies of one image: a wave, the entry keeps acting), released (a quarantine ended).",
    ["outcome"], registry=REGISTRY,
)
ALERTS = Counter(
    "vitguard_alerts", "Near-duplicate alerts published, by severity.", ["severity"], registry=REGISTRY
)
ALERTS_SUPPRESSED = Counter(
    "vitguard_alerts_suppressed",
    "Near-duplicates inside a wave whose alert was suppressed by the cooldown.",
    registry=REGISTRY,
)
CACHE_HITS = Counter(
    "vitguard_cache_hits", "Images answered from the verdict cache (same SHA-256), no inference.", registry=REGISTRY
)
STORE_ERRORS = Counter(
    "vitguard_store_errors",
    "Failed calls to a backing store (store: redis|milvus, op: the call). Redis errors are tolerated, "
    "Milvus errors are retried.",
    ["store", "op"],
    registry=REGISTRY,
)
PUBLISH_RETRIES = Counter(
    "vitguard_publish_retries", "Batches whose outputs had to be published again.", registry=REGISTRY
)
BATCH_SIZE = Histogram(
    "vitguard_batch_size", "Messages per batch taken from the stream.", buckets=_BATCH_SIZE_BUCKETS, registry=REGISTRY
)
FRONT_BATCH_RECORDS = Histogram(
    "vitguard_front_batch_records",
    "Records per batch of the front half (parsed, looked up in Redis, read and decoded together); grows with load.",
    buckets=_BATCH_SIZE_BUCKETS,
    registry=REGISTRY,
)
REDIS_LOOKUP_KEYS = Histogram(
    "vitguard_redis_lookup_keys",
    "Keys per Redis lookup of the front half (seen_events, cached_verdicts): concurrent events share one.",
    ["op"],
    buckets=_BATCH_SIZE_BUCKETS,
    registry=REGISTRY,
)
BATCH_DURATION = Histogram(
    "vitguard_batch_duration_seconds",
    "Wall time of one batch, from take to outputs acknowledged.",
    buckets=_SECONDS_BUCKETS,
    registry=REGISTRY,
)
STAGE_DURATION = Histogram(
    "vitguard_stage_duration_seconds",
    "Wall time of one batch stage: fetch_decode, inference, milvus_search, milvus_upsert, waves, publish, redis.",
    ["stage"],
    buckets=_SECONDS_BUCKETS,
    registry=REGISTRY,
)
IMAGE_STAGE_DURATION = Histogram(
    "vitguard_image_stage_duration_seconds",
    "Per-image time of fetch (by source: http|file|data) and decode.",
    ["stage", "source"],
    buckets=_SECONDS_BUCKETS,
    registry=REGISTRY,
)
EVENT_LATENCY = Histogram(
    "vitguard_event_latency_seconds",
    "From the event's created_at to its verdict being acknowledged by the broker.",
    buckets=_SECONDS_BUCKETS,
    registry=REGISTRY,
)
LAST_BATCH_TIMESTAMP = Gauge(
    "vitguard_last_batch_timestamp_seconds",
    "Unix time when the last batch's outputs were acknowledged (stalls show as a growing age).",
    registry=REGISTRY,
)
MODEL_INFO = Gauge(
    "vitguard_model_info",
    "Always 1; the labels say which model the worker serves.",
    ["name", "version", "backend", "embedding_dim"],
    registry=REGISTRY,
)
CLASSIFY_REQUESTS = Counter(
    "vitguard_classify_requests",
    "POST /classify requests by outcome (safe, unsafe, the reason code of a 400, overloaded, shutting_down).",
    ["outcome"],
    registry=REGISTRY,
)
BANK_REQUESTS = Counter(
    "vitguard_bank_requests",
    "GET /banks and the bank entry changes over HTTP, by outcome (answered, or the reason code of a refusal).",
    ["outcome"],
    registry=REGISTRY,
)
POLICY_DOCUMENTS = Counter(
    "vitguard_policy_documents",
    "Policy documents offered to this worker, by outcome: applied, or refused (the last good one stays in force).",
    ["outcome"], registry=REGISTRY,
)
POLICY_VERSION = Gauge(
    "vitguard_policy_version",
    "1 for the policy document in force (version 'builtin': the environment settings), by version and fingerprint.",
    ["version", "fingerprint"], registry=REGISTRY,
)
POLICY_SHADOW_DECISIONS = Counter(
    "vitguard_policy_shadow_decisions",
    "Verdicts a shadow policy judged beside the active one, with no effect: by active policy, shadow policy, the "
    "active and the shadow action.",
    ["policy", "shadow", "action", "shadow_action"], registry=REGISTRY,
)
BANK_LOOKUP_REQUESTS = Counter(
    "vitguard_bank_lookup_requests",
    "POST /banks/lookup requests by outcome (answered, or the reason code of a refusal).",
    ["outcome"],
    registry=REGISTRY,
)
CLUSTER_REQUESTS = Counter(
    "vitguard_cluster_requests",
    "GET /clusters and GET /clusters/{id} requests by outcome (answered, or the reason code of a refusal).",
    ["outcome"],
    registry=REGISTRY,
)
SEARCH_REQUESTS = Counter(
    "vitguard_search_requests",
    "POST /search requests by outcome (answered, or the reason code of a refusal).",
    ["outcome"],
    registry=REGISTRY,
)

QUEUE_TIME = Histogram(
    "vitguard_queue_seconds",
    "Broker timestamp of an input record to the worker consuming it (time waiting in Kafka).",
    buckets=_SECONDS_BUCKETS,
    registry=REGISTRY,
)
BATCH_WAIT = Histogram(
    "vitguard_batch_wait_seconds",
    "A decoded image's wait for its forward pass (the model busy with the batch before).",
    buckets=_SECONDS_BUCKETS,
    registry=REGISTRY,
)
OUTPUTS_TRUNCATED = Counter(
    "vitguard_outputs_truncated",
    "Outputs cut down to fit their topic (dead letters with a truncated payload, output_rejected letters).",
    registry=REGISTRY,
)
OUTPUTS_DROPPED = Counter(
    "vitguard_outputs_dropped", "Outputs given up (an alert the broker rejects).", ["kind"], registry=REGISTRY
)
IN_FLIGHT = Gauge(
    "vitguard_in_flight_events", "Events taken from the stream and not yet answered.", registry=REGISTRY
)
OFFSET_HOLES = Counter(
    "vitguard_offset_holes",
    "Input offsets skipped by the delivery (a rebalance or pause dropped fetched records, or compaction); "
    "each is re-fetched before anything past it is committed.",
    registry=REGISTRY,
)
FATAL_ERRORS = Counter(
    "vitguard_fatal_errors", "Errors that stop the worker (it exits non-zero), by kind.", ["kind"], registry=REGISTRY
)

METRIC_NAMES: tuple[str, ...] = (
    "vitguard_events_consumed_total",
    "vitguard_events_redelivered_total",
    "vitguard_verdicts_total",
    "vitguard_dead_letters_total",
    "vitguard_alerts_total",
    "vitguard_alerts_suppressed_total",
    "vitguard_cache_hits_total",
    "vitguard_store_errors_total",
    "vitguard_publish_retries_total",
    "vitguard_batch_size",
    "vitguard_batch_duration_seconds",
    "vitguard_stage_duration_seconds",
    "vitguard_image_stage_duration_seconds",
    "vitguard_event_latency_seconds",
    "vitguard_last_batch_timestamp_seconds",
    "vitguard_model_info",
    "vitguard_classify_requests_total",
    "vitguard_queue_seconds",
    "vitguard_batch_wait_seconds",
    "vitguard_outputs_truncated_total",
    "vitguard_outputs_dropped_total",
    "vitguard_in_flight_events",
    "vitguard_fatal_errors_total",
    "vitguard_offset_holes_total",
)
"""Exported series names (counters with their ``_total`` suffix; histograms add ``_bucket/_sum/_count``)."""


def render() -> bytes:
    """The registry in Prometheus text format, for ``GET /metrics``."""
    return generate_latest(REGISTRY)
