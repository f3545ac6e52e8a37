"""The runner's thread pools, named where operators look: ``top -H``, ``ps -L`` and ``/proc/PID/task/*/comm``
show ``vg-decode_0``, ``vg-infer_0``, ``vg-milvus_0`` instead of ``python`` for every thread.

Python (before 3.14) names its threads only for itself; the kernel's name (15 bytes at most) is set here when
a pool thread starts, on Linux. Threads that native libraries start (onnxruntime's intra-op pool, librdkafka's,
gRPC's) keep the names those libraries give them or inherit.

The decode pool is a :class:`PriorityPool`: jobs submitted through its ``urgent`` lane (``POST /classify``, a
caller waiting on the line) run before the stream's queued decodes, so a busy stream's decode backlog does not
add to a request's latency; a job already running is never interrupted. The lead is bounded: an urgent job
overtakes normal jobs queued less than ``urgent_lead_s`` (1 s) before it, so a flood of requests cannot hold
the stream's decodes back for longer than that (once, they waited for as long as requests kept coming; the
stream stalled and ``/livez`` restarted the worker).

It also has a deadline for a job's running time (``job_timeout_s``; time queued does not count). A decoder
that never returns (a crafted file, a codec bug) would otherwise hold its event, and so its partition's
commits, forever, and take a thread with it. Past the deadline the job's future fails with
:class:`JobTimeout` (its event becomes a dead letter), the pool starts a thread in its place, and the stuck
thread ends once its job returns, its result dropped. Python cannot kill a thread: when more jobs than
``max_stuck`` are stuck at once, ``on_stuck`` is called (the runner stops the worker, for a restart).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["JobTimeout", "PriorityPool", "named_pool", "set_native_thread_name"]

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


_URGENT, _NORMAL = 0, 1
_STOP_KEY = float("inf")
"""The queue key of a thread's stop order: after every job."""


class JobTimeout(TimeoutError):
    """A pool job ran past the pool's ``job_timeout_s`` and was abandoned (its thread was replaced)."""


class PriorityPool(Executor):
    """A fixed pool of ``workers`` named threads (as :func:`named_pool`) that takes urgent jobs first.

    :meth:`submit` queues a normal job; ``pool.urgent.submit`` an urgent one. Each kind runs in submission
    order; a free thread takes the oldest urgent job before any normal one queued less than ``urgent_lead_s``
    before it (a normal job that waited that long goes first: the urgent lane's lead is bounded). ``shutdown``
    lets queued jobs finish (or cancels them with ``cancel_futures``); a job submitted after it raises
    ``RuntimeError``, as with :class:`~concurrent.futures.ThreadPoolExecutor`. With ``job_timeout_s``, a job
    running longer is abandoned (see the module); ``on_stuck(n)`` is called, from the pool's watchdog thread,
    each time an abandonment leaves ``n > max_stuck`` jobs stuck.
    """

    def __init__(self, workers: int, prefix: str, *, job_timeout_s: float | None = None, max_stuck: int = 0,
                 on_stuck: Callable[[int], None] | None = None, urgent_lead_s: float = 1.0) -> None:
        if workers < 1:
            raise ValueError("a pool needs at least one thread")
        if job_timeout_s is not None and job_timeout_s <= 0:
            raise ValueError("job_timeout_s must be positive")
        self._queue: queue.PriorityQueue[tuple[float, int, Any]] = queue.PriorityQueue()
        self._urgent_lead_s = urgent_lead_s
        self._seq = itertools.count()
        self._names = itertools.count()
        self._prefix = prefix
        self._lock = threading.Lock()
        self._shut = False
        self._max_stuck = max_stuck
        self._on_stuck = on_stuck
        self._running: dict[Future[Any], tuple[float, threading.Thread]] = {}
        """Futures of the jobs running now: when each started (monotonic), on which thread."""
        self._stuck: set[threading.Thread] = set()
        """Threads whose job was abandoned and has not returned yet."""
        self.urgent: Executor = _Lane(self, _URGENT)
        """The same threads, ahead of every normal job still queued."""
        self._threads: list[threading.Thread] = []
        for _ in range(workers):
            self._start_thread()
        self._stopped = threading.Event()
        if job_timeout_s is not None:
            threading.Thread(target=self._watch, args=(job_timeout_s,), name=f"{prefix}-watch", daemon=True).start()

    @property
    def stuck(self) -> int:
        """Jobs abandoned past the deadline whose threads are still running them."""
        return len(self._stuck)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self._submit(_NORMAL, fn, args, kwargs)

    def _submit(self, priority: int, fn: Callable[..., T], args: Any, kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            key = time.monotonic() - (self._urgent_lead_s if priority == _URGENT else 0.0)
            self._queue.put((key, next(self._seq), (future, fn, args, kwargs)))
        return future

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._work, name=f"{self._prefix}_{next(self._names)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        _name_this_thread()
        while True:
            _, _, job = self._queue.get()
            if job is None:
                return
            future, fn, args, kwargs = job
            if not future.set_running_or_notify_cancel():
                continue
            with self._lock:
                self._running[future] = (time.monotonic(), threading.current_thread())
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # the caller gets it, as from ThreadPoolExecutor
                outcome: tuple[bool, Any] = (False, exc)
            else:
                outcome = (True, result)
            with self._lock:
                abandoned = self._running.pop(future, None) is None
                if abandoned:  # the watchdog failed the future and started a thread in this one's place
                    self._stuck.discard(threading.current_thread())
                    self._threads.remove(threading.current_thread())
            if abandoned:
                return
            if outcome[0]:
                future.set_result(outcome[1])
            else:
                future.set_exception(outcome[1])
            del job, future, fn, args, kwargs, outcome

    def _watch(self, timeout_s: float) -> None:
        interval = min(1.0, timeout_s / 4)
        while not self._stopped.wait(interval):
            now = time.monotonic()
            late: list[tuple[Future[Any], float]] = []
            with self._lock:
                for future, (started, thread) in list(self._running.items()):
                    if now - started > timeout_s:
                        del self._running[future]
                        late.append((future, now - started))
                        self._stuck.add(thread)
                        if not self._shut:
                            self._start_thread()
                stuck = len(self._stuck)
            for future, ran in late:
                future.set_exception(JobTimeout(f"still running after {ran:.1f} s (limit {timeout_s:g} s)"))
                if stuck > self._max_stuck and self._on_stuck is not None:
                    self._on_stuck(stuck)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if not self._shut:
                self._shut = True
                self._stopped.set()
                if cancel_futures:
                    while True:
                        try:
                            _, _, job = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        if job is not None:
                            job[0].cancel()
                for _ in range(len(self._threads) - len(self._stuck)):
                    self._queue.put((_STOP_KEY, next(self._seq), None))
            live = [t for t in self._threads if t not in self._stuck and t is not threading.current_thread()]
        if wait:  # a stuck thread is not waited for: its job may never return
            for t in live:
                t.join()


class _Lane(Executor):
    """A view of a :class:`PriorityPool` that submits at one priority (shutting the pool down is its owner's)."""

    def __init__(self, pool: PriorityPool, priority: int) -> None:
        self._pool, self._priority = pool, priority

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self._pool._submit(self._priority, fn, args, kwargs)  # noqa: SLF001 - the pool's own lane
