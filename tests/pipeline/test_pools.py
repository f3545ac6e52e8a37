"""The runner's pool threads carry their names in the kernel too (``top -H``, ``/proc/PID/task/*/comm``)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

from vitguard.pipeline.runtime.pools import JobTimeout, PriorityPool, named_pool, set_native_thread_name

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kernel thread names are read from /proc")


def _comm() -> str:
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


@linux
def test_pool_threads_are_named_in_python_and_in_the_kernel() -> None:
    with named_pool(2, "vitguard-decode") as pool:
        names = {pool.submit(lambda: (threading.current_thread().name, _comm())).result() for _ in range(8)}
    assert {python for python, _ in names} <= {"vitguard-decode_0", "vitguard-decode_1"}
    assert all(comm == python.replace("vitguard-", "vg-") for python, comm in names)


@linux
def test_a_long_name_is_cut_to_the_kernels_15_bytes() -> None:
    result: list[tuple[bool, str]] = []
    t = threading.Thread(target=lambda: result.append((set_native_thread_name("a-much-longer-name-than-15"), _comm())))
    t.start()
    t.join()
    assert result == [(True, "a-much-longer-n")]


def _blocked(pool: PriorityPool) -> threading.Event:
    """Occupy the pool's only thread until the returned event is set."""
    gate, started = threading.Event(), threading.Event()
    pool.submit(lambda: (started.set(), gate.wait(10)))
    assert started.wait(10)
    return gate


def test_urgent_jobs_run_before_queued_normal_ones_each_kind_in_order() -> None:
    pool = PriorityPool(1, "vitguard-decode")
    try:
        gate, order = _blocked(pool), []
        futures = [pool.submit(order.append, f"n{i}") for i in range(3)]
        futures += [pool.urgent.submit(order.append, f"u{i}") for i in range(2)]
        gate.set()
        for f in futures:
            f.result(10)
        assert order == ["u0", "u1", "n0", "n1", "n2"]
    finally:
        pool.shutdown()


def test_errors_reach_the_caller_and_the_thread_goes_on() -> None:
    pool = PriorityPool(1, "vitguard-decode")
    try:
        with pytest.raises(ZeroDivisionError):
            pool.urgent.submit(lambda: 1 / 0).result(10)
        assert pool.submit(lambda: 2 + 2).result(10) == 4
    finally:
        pool.shutdown()


async def test_asyncio_runs_jobs_in_either_lane() -> None:
    import asyncio

    pool = PriorityPool(2, "vitguard-decode")
    try:
        loop = asyncio.get_running_loop()
        names = await asyncio.gather(loop.run_in_executor(pool, _comm), loop.run_in_executor(pool.urgent, _comm))
        assert set(names) <= {"vg-decode_0", "vg-decode_1"}
    finally:
        pool.shutdown()


def test_shutdown_finishes_queued_jobs_or_cancels_them_and_refuses_new_ones() -> None:
    pool = PriorityPool(1, "vitguard-decode")
    gate = _blocked(pool)
    kept = pool.submit(lambda: "done")
    gate.set()
    pool.shutdown(wait=True)
    assert kept.result(0) == "done"
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)
    with pytest.raises(RuntimeError):
        pool.urgent.submit(lambda: None)

    pool = PriorityPool(1, "vitguard-decode")
    gate = _blocked(pool)
    dropped = [pool.submit(lambda: None), pool.urgent.submit(lambda: None)]
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    assert all(f.cancelled() for f in dropped)
    pool.shutdown(wait=True)
    assert not any(t.is_alive() for t in pool._threads)  # noqa: SLF001 - its threads end


def test_a_job_past_the_deadline_is_abandoned_and_its_thread_replaced() -> None:
    stuck_calls: list[int] = []
    pool = PriorityPool(1, "vitguard-decode", job_timeout_s=0.2, max_stuck=1, on_stuck=stuck_calls.append)
    release = threading.Event()
    hung = pool.submit(release.wait, 30)  # a decoder that does not return
    with pytest.raises(JobTimeout, match="limit 0.2 s"):
        hung.result(timeout=5)
    assert pool.stuck == 1
    # the pool has a thread again: the next job runs while the stuck one still holds its own
    assert pool.submit(lambda: threading.current_thread().name).result(timeout=5) == "vitguard-decode_1"
    assert stuck_calls == []  # one stuck job is within max_stuck
    release.set()  # the stuck job returns: its result is dropped and its thread ends
    deadline = time.monotonic() + 5
    while pool.stuck and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.stuck == 0 and hung.exception() is not None
    pool.shutdown()


def test_time_queued_does_not_count_against_the_deadline() -> None:
    pool = PriorityPool(1, "vitguard-decode", job_timeout_s=0.3)
    jobs = [pool.submit(time.sleep, 0.15) for _ in range(4)]  # each 0.15 s; the last waits 0.45 s in the queue
    assert [j.result(timeout=10) for j in jobs] == [None] * 4
    assert pool.stuck == 0
    pool.shutdown()


def test_more_stuck_jobs_than_allowed_call_on_stuck_and_shutdown_does_not_wait_for_them() -> None:
    stuck_calls: list[int] = []
    pool = PriorityPool(2, "vitguard-decode", job_timeout_s=0.1, max_stuck=2, on_stuck=stuck_calls.append)
    release = threading.Event()
    hung = [pool.submit(release.wait, 30) for _ in range(3)]  # the third runs on a replacement thread
    for job in hung:
        with pytest.raises(JobTimeout):
            job.result(timeout=5)
    assert pool.stuck == 3 and stuck_calls == [3]
    started = time.monotonic()
    pool.shutdown(wait=True)  # joins the live threads, not the stuck ones
    assert time.monotonic() - started < 5
    release.set()


def test_the_urgent_lead_is_bounded_so_a_flood_of_requests_cannot_starve_the_stream() -> None:
    """Urgent jobs overtake normal ones queued less than ``urgent_lead_s`` before them, no more: a normal job
    that has waited that long runs before urgent jobs that keep arriving."""
    pool = PriorityPool(1, "vitguard-decode", urgent_lead_s=0.2)
    try:
        gate, order = _blocked(pool), []
        stream = pool.submit(order.append, "n0")
        time.sleep(0.3)  # the stream's job has waited past the lead
        flood = [pool.urgent.submit(order.append, f"u{i}") for i in range(3)]
        gate.set()
        for f in [stream, *flood]:
            f.result(10)
        assert order == ["n0", "u0", "u1", "u2"]
    finally:
        pool.shutdown()
