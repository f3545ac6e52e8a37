"""The worker end to end: a real `vitguard worker` process against the real broker, Redis and Milvus Lite.

Each test publishes events, runs the worker as a child process configured only by VITGUARD_* variables
(exactly like an operator), reads the output topics and checks the accounting invariant: every consumed
event gets exactly one verdict or one dead letter, redeliveries aside.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vitguard.demo.samples import (
    SAMPLE_MAX_INLINE_BYTES,
    SampleEvent,
    SampleSet,
    make_sample_set,
    near_duplicate_variants,
    photo_bytes,
)
from vitguard.schemas.events import ImageEvent
from vitguard.testing import services
from vitguard.testing.worker import OutputReader, Outputs, WorkerProcess, publish_raw

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ALL_UNSAFE = {"unsafe_labels": ["SFW", "NSFW"], "unsafe_threshold": 0.0}
"""A test policy that calls every image unsafe, so near-duplicate clustering runs on safe photos."""



@pytest.fixture
def pipeline_settings(service_settings: Callable[..., Any], new_topic: Callable[..., str],
                      tmp_path: Path) -> Callable[..., Any]:
    """Settings for one worker run: fresh topics, a private Milvus Lite file, a file root, open_nsfw."""

    def make(partitions: int = 2, **overrides: dict[str, Any]) -> Any:
        sections: dict[str, dict[str, Any]] = {
            "topics": {"images": new_topic(partitions, "img"), "verdicts": new_topic(1, "verdicts"),
                       "alerts": new_topic(1, "alerts"), "dead_letters": new_topic(1, "dlq")},
            # a worker process owns its Milvus Lite file (it is locked), so each test has its own
            "milvus": {"uri": str(tmp_path / "milvus.db"), "retry_backoff_s": 0.2, "retry_backoff_max_s": 2.0},
            "model": {"spec": "opennsfw"},
            "fetch": {"file_root": str(tmp_path / "images"), "max_inline_bytes": SAMPLE_MAX_INLINE_BYTES},
            "batch": {"max_size": 4, "max_wait_s": 0.2},
            "kafka": {"session_timeout_s": 6.0},
            "web": {"host": "127.0.0.1", "port": services.free_port()},
        }
        for section, values in overrides.items():
            sections[section] = {**sections.get(section, {}), **values}
        return service_settings(**sections)

    return make


def reader(settings: Any) -> OutputReader:
    t = settings.topics
    return OutputReader(settings.kafka, verdicts=t.verdicts, alerts=t.alerts, dead_letters=t.dead_letters)


def publish(settings: Any, events: list[SampleEvent]) -> None:
    publish_raw(settings.kafka, settings.topics.images, [(e.key, e.value) for e in events])


def wait_answered(out: OutputReader, expected: int, worker: WorkerProcess, timeout_s: float = 150.0,
                  settle_s: float = 3.0) -> Outputs:
    outputs = out.poll_until(lambda o: o.answered() >= expected or not worker.running, timeout_s, settle_s)
    assert outputs.answered() >= expected, f"{outputs.answered()}/{expected} answered; log:\n{worker.log_tail()}"
    return outputs


def metric(settings: Any, name: str, **labels: str) -> float:
    """The sum of a series' samples in the worker's /metrics that carry ``labels`` (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{settings.web.port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()  # noqa: S310 - our own worker
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def post(settings: Any, path: str, body: bytes | None, content_type: str, method: str = "POST",
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST (or ``method``) to the worker's web server: (status, JSON body)."""
    request = urllib.request.Request(f"http://127.0.0.1:{settings.web.port}{path}", data=body,
                                     headers={"Content-Type": content_type, **(headers or {})}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our own worker
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def distinct_events(samples: SampleSet) -> list[SampleEvent]:
    return [e for e in samples.events if e.kind != "redelivery"]


def test_mixed_events_each_get_exactly_one_output(pipeline_settings: Callable[..., Any], tmp_path: Path,
                                                  workers: list[WorkerProcess]) -> None:
    settings = pipeline_settings(web={"classify_max_in_flight": 1}, fetch={"read_timeout_s": 2.0})
    samples = make_sample_set(tmp_path / "images", photos=4, copies=2, burst=0)
    publish(settings, samples.events)  # includes one redelivered event and bad events of 10 reason codes
    expected = distinct_events(samples)

    worker = WorkerProcess(settings).start()
    workers.append(worker)
    with reader(settings) as out:
        outputs = wait_answered(out, len(expected), worker)
        for path in ("/healthz", "/readyz"):
            probe = urllib.request.urlopen(f"http://127.0.0.1:{settings.web.port}{path}", timeout=5)  # noqa: S310
            assert probe.status == 200
        classified = post(settings, "/classify", samples.other_files[0].read_bytes(), "image/png")
        refused = post(settings, "/classify", b'{"image_ref": "http://10.0.0.1/x.jpg"}', "application/json")
        not_image = post(settings, "/classify", b"plain text, not an image", "application/octet-stream")
        too_deep = post(settings, "/classify", b'{"image_ref": ' + b"[" * 100_000, "application/json")
        # HTTP conventions: multipart uploads (several files: one answer each), 415 for other bodies, 502 when
        # the referenced image cannot be fetched, a JSON 405
        from tests.consumers.test_classify_http import multipart

        form_type, form = multipart(("file", "a.png", samples.other_files[0].read_bytes()),
                                    ("file", "b.txt", b"not an image"))
        uploaded = post(settings, "/classify", form, form_type)
        plain = post(settings, "/classify", b"hello", "text/plain")
        missing_ref = json.dumps({"image_ref": (tmp_path / "images" / "absent.jpg").as_uri()}).encode()
        missing = post(settings, "/classify", missing_ref, "application/json")
        wrong_method = post(settings, "/classify", None, "application/json", method="GET")
        with socket.create_connection(("127.0.0.1", settings.web.port), timeout=10) as trickling:
            # a client that trickles its body holds the one request slot: the next is refused, not buffered
            trickling.sendall(b"POST /classify HTTP/1.1\r\nHost: w\r\nContent-Type: image/png\r\n"
                              b"Content-Length: 100000\r\n\r\n\x89PNG")
            time.sleep(0.5)
            overloaded = post(settings, "/classify", samples.other_files[0].read_bytes(), "image/png")
            timed_out = trickling.recv(4096)  # and the trickled body is not waited for past the fetch deadlines
        deadline = time.monotonic() + 10
        while (freed := post(settings, "/classify", samples.other_files[0].read_bytes(), "image/png"))[0] == 429:
            assert time.monotonic() < deadline, "the slot of a client that went away was never freed"
            time.sleep(0.2)
        consumed = metric(settings, "vitguard_events_consumed_total")
        skipped = metric(settings, "vitguard_events_redelivered_total")
        verdict_count = metric(settings, "vitguard_verdicts_total", label="safe")
    assert worker.terminate() == 0  # graceful SIGTERM
    assert overloaded[0] == 429 and overloaded[1]["reason"] == "overloaded" and freed[0] == 200
    assert too_deep[0] == 400 and too_deep[1]["reason"] == "invalid_json", too_deep  # was a 500
    assert timed_out.startswith(b"HTTP/1.1 408") and b"request_timeout" in timed_out

    assert outputs.answered() == len(expected)  # nothing twice, the redelivery included
    good = [e for e in expected if not e.kind.startswith("bad:")]
    bad = [e for e in expected if e.kind.startswith("bad:")]
    assert sorted(v.content_id for v in outputs.verdicts) == sorted(e.content_id for e in good)
    assert {v.event_id for v in outputs.verdicts} == {e.event_id for e in good}
    assert all(v.label == "safe" and v.model_name == "opennsfw" for v in outputs.verdicts)
    assert outputs.keys["verdicts"] == [v.content_id.encode() for v in outputs.verdicts]  # keyed by content id

    by_payload = {e.value: e for e in bad}
    assert len(outputs.dead_letters) == len(bad)
    for letter in outputs.dead_letters:
        original = by_payload[letter.original_bytes()]  # the payload comes back byte for byte
        assert letter.reason == original.kind.removeprefix("bad:")
        assert letter.source_topic == settings.topics.images
    assert {d.reason for d in outputs.dead_letters} >= {
        "invalid_json", "schema_violation", "file_outside_root", "fetch_not_found", "not_an_image",
        "image_too_small", "fetch_blocked", "invalid_base64", "decompression_bomb", "inline_too_large"}
    # every record taken is answered once or skipped as a redelivery (the duplicate event id; a rebalance may
    # deliver records again): the metrics add up to the outputs
    assert consumed >= len(samples.events) and consumed - skipped == len(expected)
    assert verdict_count == len(good)
    assert classified[0] == 200 and classified[1]["label"] == "safe" and classified[1]["model_name"] == "opennsfw"
    assert refused == (400, {"reason": "fetch_blocked", "message": refused[1]["message"]})
    assert not_image[0] == 400 and not_image[1]["reason"] == "not_an_image"
    assert uploaded[0] == 200 and [r["name"] for r in uploaded[1]["results"]] == ["a.png", "b.txt"]
    assert uploaded[1]["results"][0]["verdict"]["label"] == "safe"
    assert uploaded[1]["results"][1]["reason"] == "not_an_image"
    assert plain[0] == 415 and plain[1]["reason"] == "unsupported_media_type"
    assert missing[0] == 502 and missing[1]["reason"] == "fetch_not_found"
    assert wrong_method[0] == 405 and wrong_method[1]["reason"] == "method_not_allowed"

    from vitguard.stores import MilvusEmbeddingIndex

    index = MilvusEmbeddingIndex(settings.milvus)  # the worker has exited, so the Lite file is free
    collection = outputs.verdicts[0].collection
    assert collection is not None and index.count(collection) == len({v.content_id for v in outputs.verdicts
                                                                       if not v.from_cache})
    index.close()


def test_near_duplicates_form_one_cluster_and_a_burst_escalates(pipeline_settings: Callable[..., Any],
                                                                tmp_path: Path,
                                                                workers: list[WorkerProcess]) -> None:
    wave_threshold = 4
    settings = pipeline_settings(partitions=1, policy={**ALL_UNSAFE, "wave_threshold": wave_threshold,
                                                       "wave_alert_cooldown_s": 300})
    samples = make_sample_set(tmp_path / "images", photos=3, copies=4, burst=6, bad=False)
    family = {e.content_id for e in samples.events if e.kind in {"near-duplicate", "burst-copy"}} | {"photo-0"}
    publish(settings, samples.events)
    expected = distinct_events(samples)

    worker = WorkerProcess(settings).start()
    workers.append(worker)
    with reader(settings) as out:
        outputs = wait_answered(out, len(expected), worker)
    worker.terminate()

    clusters = {v.content_id: v.cluster_id for v in outputs.verdicts}
    assert all(v.label == "unsafe" for v in outputs.verdicts)
    assert len({clusters[c] for c in family}) == 1  # resized, cropped, re-encoded copies: one cluster
    family_cluster = clusters["photo-0"]
    assert family_cluster not in {clusters["photo-1"], clusters["photo-2"]}
    assert clusters["photo-1"] != clusters["photo-2"]

    # the exact re-upload of photo-1 is a near-duplicate of it (similarity 1)
    (reupload,) = [a for a in outputs.alerts if a.content_id == "reupload-1"]
    assert reupload.cluster_id == clusters["photo-1"] == clusters["reupload-1"]
    assert reupload.matches[0].content_id == "photo-1" and reupload.matches[0].similarity > 0.99

    alerts = [a for a in outputs.alerts if a.content_id != "reupload-1"]
    assert {a.content_id for a in alerts} <= family and {a.cluster_id for a in alerts} == {family_cluster}
    severities = Counter(a.severity for a in alerts)
    # the founder has no alert; counts 2..threshold-1 alert; the threshold item raises ONE critical alert;
    # the rest of the wave is suppressed by the cooldown: a bounded number of alerts for 11 copies
    assert severities["critical"] == 1
    assert len(alerts) == wave_threshold - 1
    critical = next(a for a in alerts if a.severity == "critical")
    assert critical.wave_count == wave_threshold and critical.matches
    assert all(m.similarity >= settings.policy.near_duplicate_threshold for a in alerts for m in a.matches)


def test_redelivered_events_get_no_second_verdict(pipeline_settings: Callable[..., Any], tmp_path: Path,
                                                  workers: list[WorkerProcess]) -> None:
    settings = pipeline_settings()
    samples = make_sample_set(tmp_path / "images", photos=3, copies=1, burst=0, bad=False)
    publish(settings, samples.events)
    expected = distinct_events(samples)
    first = WorkerProcess(settings).start()
    workers.append(first)
    with reader(settings) as out:
        wait_answered(out, len(expected), first)
        first.terminate()

        # a second consumer group re-reads the whole topic: every event is a redelivery to the guard
        again = settings.model_copy(update={
            "kafka": settings.kafka.model_copy(update={"consumer_group": settings.kafka.consumer_group + "-again"})})
        second = WorkerProcess(again).start()
        workers.append(second)
        deadline = time.monotonic() + 120
        skipped = 0.0
        while time.monotonic() < deadline and skipped < len(samples.events) and second.running:
            time.sleep(1)
            try:
                skipped = metric(again, "vitguard_events_redelivered_total")
            except OSError:
                continue  # web server not up yet
        outputs = out.poll(3.0)
    second.terminate()
    # every event was skipped (a record the consumer delivers twice, e.g. around the group's first rebalance,
    # is skipped twice: delivery is at least once); what matters is that no event got a second verdict
    assert skipped >= len(samples.events), second.log_tail()
    assert len(outputs.verdicts) == len(expected)  # still one verdict per event


@pytest.mark.slow
def test_workers_stopped_mid_stream_and_restarted_lose_nothing(pipeline_settings: Callable[..., Any],
                                                               tmp_path: Path,
                                                               workers: list[WorkerProcess]) -> None:
    settings = pipeline_settings(batch={"max_size": 4, "max_wait_s": 0.2})
    root = tmp_path / "images"
    root.mkdir()
    ((_, photo),) = photo_bytes(1)
    events = []
    # distinct bytes (no cache); 200, not 60: on a fast hour a second worker finished all 52 it was given
    # before the reader counted its eighth verdict, and was killed after the end instead of mid-stream
    for j, (variant, data) in enumerate(near_duplicate_variants(photo, 200, seed=3)):
        path = root / f"{j}-{variant}.jpg"
        path.write_bytes(data)
        event = ImageEvent(content_id=f"k{j}", image_ref=path.as_uri())
        events.append(SampleEvent(event.content_id.encode(), event.model_dump_json().encode(), "photo",
                                  event.event_id, event.content_id))
    publish(settings, events)
    wanted = {e.event_id for e in events}

    with reader(settings) as out:
        # 1: SIGTERM mid-stream: graceful, the in-flight batches are abandoned uncommitted
        first = WorkerProcess(settings).start()
        workers.append(first)
        out.poll_until(lambda o: len(o.verdicts) >= 8 or not first.running, 120)
        assert first.running, first.log_tail()
        assert first.terminate(timeout_s=30) == 0, first.log_tail()
        after_first = len(out.outputs.answered_event_ids())

        # 2: SIGKILL mid-stream: whatever was in flight dies with the process
        second = WorkerProcess(settings).start()
        workers.append(second)
        out.poll_until(lambda o: len(o.answered_event_ids()) >= after_first + 8 or not second.running, 120)
        assert second.running, second.log_tail()
        second.kill()
        after_second = len(out.outputs.answered_event_ids())
        assert after_second < len(wanted), (after_first, after_second)  # killed mid-stream, not after the end

        # 3: a fresh worker finishes the stream from the committed offsets
        third = WorkerProcess(settings).start()
        workers.append(third)
        outputs = out.poll_until(lambda o: o.answered_event_ids() >= wanted or not third.running, 150, 3.0)
    third.terminate()

    assert outputs.answered_event_ids() == wanted, third.log_tail()
    assert not outputs.dead_letters
    # at-least-once: events of a stopped worker's uncommitted batches may be answered twice, never zero times
    duplicates = len(outputs.verdicts) - len(wanted)
    assert duplicates >= 0


@pytest.mark.slow
def test_redis_stopped_mid_run_does_not_stop_verdicts(pipeline_settings: Callable[..., Any], tmp_path: Path,
                                                      workers: list[WorkerProcess]) -> None:
    redis = services.start_redis()  # private: this test stops it
    try:
        settings = pipeline_settings(redis={"url": redis.address, "socket_timeout_s": 0.5},
                                     log={"json_format": True})
        samples = make_sample_set(tmp_path / "images", photos=4, copies=2, burst=0, bad=False)
        first_half = distinct_events(samples)[:4]
        second_half = distinct_events(samples)[4:]
        publish(settings, first_half)
        worker = WorkerProcess(settings).start()
        workers.append(worker)
        with reader(settings) as out:
            wait_answered(out, len(first_half), worker, settle_s=0)
            redis.stop()
            publish(settings, second_half)
            outputs = wait_answered(out, len(first_half) + len(second_half), worker)
            errors = metric(settings, "vitguard_store_errors_total", store="redis")
        worker.terminate()
    finally:
        redis.stop()
    assert {v.event_id for v in outputs.verdicts} == {e.event_id for e in first_half + second_half}
    assert errors >= 1
    # structured logs: the outage is one JSON object per line, with the store as a field
    records = [json.loads(line) for line in worker.log_path.read_text().splitlines() if line.startswith("{")]
    assert any(r.get("store") == "redis" and r["level"] == "WARNING" for r in records), worker.log_tail()


@pytest.mark.slow
def test_milvus_down_holds_the_stream_without_committing(pipeline_settings: Callable[..., Any], tmp_path: Path,
                                                         workers: list[WorkerProcess]) -> None:
    good = pipeline_settings()
    down = good.model_copy(update={"milvus": good.milvus.model_copy(update={"uri": "http://127.0.0.1:1"})})
    samples = make_sample_set(tmp_path / "images", photos=3, copies=1, burst=0, bad=False)
    publish(good, samples.events)
    expected = distinct_events(samples)

    with reader(good) as out:
        blocked = WorkerProcess(down).start()
        workers.append(blocked)
        deadline = time.monotonic() + 60
        errors = 0.0
        while time.monotonic() < deadline and errors < 2 and blocked.running:
            out.poll(1.0)
            with contextlib.suppress(OSError):
                errors = metric(down, "vitguard_store_errors_total", store="milvus")
        assert errors >= 2, blocked.log_tail()  # retried with backoff, not given up
        assert out.poll(1.0).answered() == 0  # nothing published while the store is down
        assert blocked.terminate(timeout_s=45) == 0

        healthy = WorkerProcess(good).start()  # the same group: nothing was committed, nothing is lost
        workers.append(healthy)
        outputs = wait_answered(out, len(expected), healthy)
    healthy.terminate()
    assert sorted(v.event_id for v in outputs.verdicts) == sorted(e.event_id for e in expected)


def test_classify_asks_for_an_api_key_when_keys_are_set_and_holds_each_key_to_its_rate(
        pipeline_settings: Callable[..., Any], tmp_path: Path, workers: list[WorkerProcess]) -> None:
    settings = pipeline_settings(web={"api_keys": ("first-key", "second-key"), "api_key_rate": 0.01})  # 1 / 100 s
    from vitguard.demo.samples import photo_bytes

    image = photo_bytes(1)[0][1]
    worker = WorkerProcess(settings).start()
    workers.append(worker)
    deadline = time.monotonic() + 90
    while True:  # the web server is up once the model is in
        try:
            if post(settings, "/classify", image, "image/png")[0] == 401:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline and worker.running, worker.log_tail()
        time.sleep(0.5)
    anonymous = post(settings, "/classify", image, "image/png")
    wrong = post(settings, "/classify", image, "image/png", headers={"Authorization": "Bearer nope"})
    first = [post(settings, "/classify", image, "image/png", headers={"Authorization": "Bearer first-key"})
             for _ in range(2)]
    second = post(settings, "/classify", image, "image/png", headers={"X-API-Key": "second-key"})
    probe = urllib.request.urlopen(f"http://127.0.0.1:{settings.web.port}/livez", timeout=5)  # noqa: S310
    api = json.loads(urllib.request.urlopen(  # noqa: S310 - our own worker
        f"http://127.0.0.1:{settings.web.port}/openapi.json", timeout=5).read())
    assert worker.terminate() == 0
    from vitguard.consumers.openapi import openapi_document

    assert api == json.loads(json.dumps(openapi_document()))  # served as exported
    assert anonymous[0] == wrong[0] == 401 and anonymous[1]["reason"] == "unauthorized"
    assert [status for status, _ in first] == [200, 429] and first[1][1]["reason"] == "rate_limited"
    assert first[0][1]["label"] == "safe" and second[0] == 200  # another key has its own bucket
    assert probe.status == 200  # probes need no key


def test_events_in_compressed_record_batches_are_answered_whatever_the_codec(
        pipeline_settings: Callable[..., Any], tmp_path: Path, workers: list[WorkerProcess]) -> None:
    """Producers compress (``vitguard publish`` itself writes lz4): a batch the consumer could not decompress
    crashed the worker's fetcher (aiokafka's lz4, snappy and zstd need cramjam). Every Kafka codec, one worker."""
    from confluent_kafka import Producer

    from vitguard.kafka.config import librdkafka_config
    from vitguard.schemas.events import ImageEvent

    settings = pipeline_settings(partitions=1)
    samples = make_sample_set(tmp_path / "images", photos=4, copies=0, burst=0, bad=False)
    codecs = ("gzip", "snappy", "lz4", "zstd")
    paths = [*samples.flagged_files, *samples.other_files][:len(codecs)]
    for codec, path in zip(codecs, paths, strict=True):
        producer = Producer(librdkafka_config(settings.kafka, **{"compression.type": codec}))
        event = ImageEvent(event_id=f"ev-{codec}", content_id=f"img-{codec}", image_ref=path.as_uri())
        producer.produce(settings.topics.images, key=event.content_id.encode(), value=event.model_dump_json().encode())
        assert producer.flush(30) == 0
    worker = WorkerProcess(settings).start()
    workers.append(worker)
    with reader(settings) as out:
        outputs = wait_answered(out, len(codecs), worker)
    assert worker.terminate() == 0, worker.log_tail()
    assert sorted(v.event_id for v in outputs.verdicts) == sorted(f"ev-{c}" for c in codecs), worker.log_tail()
