"""The runner's thread pools, named where operators look: ``top -H``, ``ps -L`` and ``/proc/PID/task/*/comm``
show ``vg-decode_0``, ``vg-infer_0``, ``vg-milvus_0`` instead of ``python`` for every thread.

Python (before 3.14) names its threads only for itself; the kernel's name (15 bytes at most) is set here when
a pool thread starts, on Linux. Threads that native libraries start (onnxruntime's intra-op pool, librdkafka's,
gRPC's) keep the names those libraries give them or inherit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["named_pool", "set_native_thread_name"]

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
