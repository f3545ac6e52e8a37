"""The runner's thread pools, named where operators look: ``top -H``, ``ps -L`` and ``/proc/PID/task/*/comm``
show ``vg-decode_0``, ``vg-infer_0``, ``vg-milvus_0`` instead of ``python`` for every thread.

Python (before 3.14) names its threads only for itself; the kernel's name (15 bytes at most) is set here when
a pool thread starts, on Linux. Threads that native libraries start (onnxruntime's intra-op pool, librdkafka's,
gRPC's) keep the names those libraries give them or inherit.

The decode pool is a :class:`PriorityPool`: jobs submitted through its ``urgent`` lane (``POST /classify``, a
caller waiting on the line) run before the stream's queued decodes, so a busy stream's decode backlog does not
add to a request's latency; a job already running is never interrupted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["PriorityPool", "named_pool", "set_native_thread_name"]

T = TypeVar("T")

_PR_SET_NAME = 15


def set_native_thread_name(name: str) -> bool:
    """Give the calling thread ``name`` (cut to 15 bytes) in the kernel; False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return int(libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _name_this_thread() -> None:
    set_native_thread_name(threading.current_thread().name.replace("vitguard-", "vg-", 1))


def named_pool(workers: int, prefix: str) -> ThreadPoolExecutor:
    """A thread pool whose threads carry ``prefix`` in Python (``vitguard-decode_0``) and in the kernel
    (``vg-decode_0``)."""
    return ThreadPoolExecutor(workers, thread_name_prefix=prefix, initializer=_name_this_thread)


_URGENT, _NORMAL, _STOP = 0, 1, 2


class PriorityPool(Executor):
    """A fixed pool of ``workers`` named threads (as :func:`named_pool`) that takes urgent jobs first.

    :meth:`submit` queues a normal job; ``pool.urgent.submit`` an urgent one. Each kind runs in submission
    order; a free thread always takes the oldest urgent job before any normal one. ``shutdown`` lets queued
    jobs finish (or cancels them with ``cancel_futures``); a job submitted after it raises ``RuntimeError``,
    as with :class:`~concurrent.futures.ThreadPoolExecutor`.
    """

    def __init__(self, workers: int, prefix: str) -> None:
        if workers < 1:
            raise ValueError("a pool needs at least one thread")
        self._queue: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._shut = False
        self.urgent: Executor = _Lane(self, _URGENT)
        """The same threads, ahead of every normal job still queued."""
        self._threads = [threading.Thread(target=self._work, name=f"{prefix}_{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self._submit(_NORMAL, fn, args, kwargs)

    def _submit(self, priority: int, fn: Callable[..., T], args: Any, kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.put((priority, next(self._seq), (future, fn, args, kwargs)))
        return future

    def _work(self) -> None:
        _name_this_thread()
        while True:
            _, _, job = self._queue.get()
            if job is None:
                return
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # the caller gets it, as from ThreadPoolExecutor
                future.set_exception(exc)
            else:
                future.set_result(result)
            del job, future, fn, args, kwargs

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if not self._shut:
                self._shut = True
                if cancel_futures:
                    while True:
                        try:
                            _, _, job = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        if job is not None:
                            job[0].cancel()
                for _ in self._threads:
                    self._queue.put((_STOP, next(self._seq), None))
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join()


class _Lane(Executor):
    """A view of a :class:`PriorityPool` that submits at one priority (shutting the pool down is its owner's)."""

    def __init__(self, pool: PriorityPool, priority: int) -> None:
        self._pool, self._priority = pool, priority

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self._pool._submit(self._priority, fn, args, kwargs)  # noqa: SLF001 - the pool's own lane
