"""The runner's pool threads carry their names in the kernel too (``top -H``, ``/proc/PID/task/*/comm``)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from vitguard.pipeline.pools import named_pool, set_native_thread_name

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
