"""The real ``vitguard worker`` with faults injected at named seams, each fired by a marked event.

Used by the failure-model tests and the chaos suite as a worker entry point (``python fault_worker.py``, settings
from ``VITGUARD_*`` variables, like ``vitguard worker``). Everything is the real worker
(:func:`vitguard.consumers.worker.run_worker`); only the seams below are wrapped, each so that a marked event
fails exactly where a bug (or the dependency's refusal) would:

========================  =========================================================================================
seam                      what a payload carrying ``<marker>/<seam>`` does
========================  =========================================================================================
``agent``                 the agent body raises (:func:`vitguard.consumers.app.raw_message`)
``front_half``            the front-half task dies (``FrontHalf.screen`` raises, and so does its error path)
``batch_loop``            the runner's batch loop raises (``infer_pass`` raises on a batch holding the event)
``completion_loop``       the runner's completion loop raises outside its own try (``Runner._settle``)
``milvus_permanent``      Milvus refuses the upsert for good (a real ``MilvusException``, code 1401, through the
                          adapter's own error mapping)
``publish_permanent``     the broker refuses the event's verdict for good (librdkafka's
                          ``TOPIC_AUTHORIZATION_FAILED``, through the policy's classification)
``decode_stuck``          the event's decode never returns (past ``VITGUARD_BATCH_DECODE_TIMEOUT_S``: the pool's
                          stuck-thread limit)
========================  =========================================================================================

The event factory (:class:`tests.harness.events.EventFactory`) puts the mark in the event's content id, so
it is in the event's payload, its verdict and its Milvus record alike. A bare ``<marker>`` (no seam) is the
``agent`` seam, as before.

Environment:
    VITGUARD_FAULT_MARKER: the marker (default ``vitguard-fault-crash``).
    VITGUARD_FAULT_ONCE_DIR: when set, each marked payload fires only the first time any worker takes it
        (a file named by the payload's SHA-256 and the seam records it), so a restarted fault worker then
        answers it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

MARKER = os.environ.get("VITGUARD_FAULT_MARKER", "vitguard-fault-crash")
ONCE_DIR = os.environ.get("VITGUARD_FAULT_ONCE_DIR")
SEAMS = ("agent", "front_half", "batch_loop", "completion_loop", "milvus_permanent", "publish_permanent",
         "decode_stuck")


class InjectedFault(RuntimeError):
    """An injected bug."""


def marked(value: bytes | str | None, seam: str) -> bool:
    """``value`` carries the mark of ``seam`` (a bare marker is the agent's)."""
    if not value:
        return False
    data = value.encode() if isinstance(value, str) else value
    mark = f"{MARKER}/{seam}".encode()
    if mark in data:
        return True
    return seam == "agent" and MARKER.encode() in data and f"{MARKER}/".encode() not in data


def fires(value: bytes | str | None, seam: str) -> bool:
    """``value`` is marked for ``seam`` and (with a once-only directory) has not fired there before."""
    if not marked(value, seam):
        return False
    if ONCE_DIR is None:
        return True
    data = value.encode() if isinstance(value, str) else value  # type: ignore[union-attr]
    path = Path(ONCE_DIR) / f"{hashlib.sha256(data).hexdigest()}-{seam}"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _raw_value(value: Any) -> bytes | None:
    parsed = getattr(value, "parsed", None)
    raw = getattr(parsed, "raw", None) or getattr(value, "raw", None)
    return getattr(raw, "value", None)


def install() -> None:
    """Wrap every seam (each fires only on its own mark)."""
    import vitguard.consumers.app as app_module
    import vitguard.pipeline.runtime.intake as intake_module
    import vitguard.pipeline.runtime.runner as runner_module
    from vitguard.consumers.sink import KafkaSink
    from vitguard.pipeline.results import Answered
    from vitguard.pipeline.runtime.front import FrontHalf
    from vitguard.stores.milvus import MilvusEmbeddingIndex

    raw_message = app_module.raw_message

    def faulty_raw_message(event: Any) -> Any:
        raw = raw_message(event)
        if fires(raw.value, "agent"):
            raise InjectedFault(f"injected agent fault at {raw.topic}[{raw.partition}]@{raw.offset}")
        return raw

    app_module.raw_message = faulty_raw_message  # the agent looks the name up in its module at each event

    screen, dead_letter = FrontHalf.screen, intake_module.dead_letter

    async def faulty_screen(self: Any, items: Any) -> Any:
        if any(fires(item.raw.value, "front_half") for item in items):
            raise InjectedFault("injected front-half fault")
        return await screen(self, items)

    def faulty_dead_letter(raw: Any, *args: Any, **kwargs: Any) -> Any:
        if marked(getattr(raw, "value", None), "front_half"):
            raise InjectedFault("injected fault in the front half's error path")
        return dead_letter(raw, *args, **kwargs)

    FrontHalf.screen = faulty_screen  # type: ignore[method-assign]
    intake_module.dead_letter = faulty_dead_letter

    import vitguard.pipeline.runtime.batch_loop as batch_loop_module

    infer_pass = batch_loop_module.infer_pass

    async def faulty_infer_pass(taken: Any, *args: Any, **kwargs: Any) -> Any:
        if any(fires(_raw_value(w.value), "batch_loop") for w in taken):
            raise InjectedFault("injected batch-loop fault")
        return await infer_pass(taken, *args, **kwargs)

    batch_loop_module.infer_pass = faulty_infer_pass  # the batch loop looks the name up in its module

    settle = runner_module.Runner._settle

    def faulty_settle(self: Any, fut: Any, outcome: Any, *, slot: bool = True) -> None:
        if isinstance(outcome, Answered) and fires(outcome.raw.value, "completion_loop"):
            raise InjectedFault("injected completion-loop fault")
        settle(self, fut, outcome, slot=slot)

    runner_module.Runner._settle = faulty_settle  # type: ignore[method-assign]

    upsert = MilvusEmbeddingIndex.upsert

    def faulty_upsert(self: Any, collection: str, records: Any) -> None:
        if any(fires(r.content_id, "milvus_permanent") for r in records):
            from pymilvus.exceptions import MilvusException

            def refuse() -> None:
                raise MilvusException(code=1401, message="PrivilegeNotPermitted: injected permanent refusal")

            self._call(refuse)  # the adapter's own mapping of a server error to ConfigError
        upsert(self, collection, records)

    MilvusEmbeddingIndex.upsert = faulty_upsert  # type: ignore[method-assign]

    send = KafkaSink.send

    async def faulty_send(self: Any, messages: Any) -> list[BaseException | None]:
        from confluent_kafka import KafkaError, KafkaException

        refused = [fires(m.value, "publish_permanent") for m in messages]
        sent = iter(await send(self, [m for m, r in zip(messages, refused, strict=True) if not r]))
        refusal = KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "injected permanent refusal"))
        return [refusal if r else next(sent) for r in refused]

    KafkaSink.send = faulty_send  # type: ignore[method-assign]

    import vitguard.pipeline.stages.decode as decode_module
    import vitguard.pipeline.stages.decode_batch as decode_batch_module
    import vitguard.pipeline.stages.expand as expand_module

    prepare_decoded = decode_module.prepare_decoded

    def faulty_prepare_decoded(classifier: Any, data: bytes) -> Any:
        if fires(data, "decode_stuck"):
            time.sleep(3600)  # a decoder that never returns: its thread is lost
        return prepare_decoded(classifier, data)

    for module in (decode_module, decode_batch_module, expand_module):  # each looks the name up in its module
        module.prepare_decoded = faulty_prepare_decoded  # type: ignore[attr-defined]


def main() -> None:
    install()
    from vitguard.cli import main as cli

    sys.argv = ["vitguard", "worker"]
    cli()


if __name__ == "__main__":
    main()
