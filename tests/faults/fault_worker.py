"""The real ``vitguard worker`` with one fault injected: the agent's ``raw_message`` seam raises on a marked event.

Used by the failure-model tests and the chaos suite as a worker entry point (``python fault_worker.py``, settings
from ``VITGUARD_*`` variables, like ``vitguard worker``). Everything is the real worker
(:func:`vitguard.consumers.worker.run_worker`): only :func:`vitguard.consumers.app.raw_message`, which the agent
calls for every event it takes, is wrapped, so an exception escapes the agent body exactly where a bug in it
would.

Environment:
    VITGUARD_FAULT_MARKER: a payload containing this string raises (default ``vitguard-fault-crash``).
    VITGUARD_FAULT_ONCE_DIR: when set, each marked payload raises only the first time any worker takes it
        (a file named by the payload's SHA-256 records it), so a restarted fault worker then answers it.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import vitguard.consumers.app as app_module

MARKER = os.environ.get("VITGUARD_FAULT_MARKER", "vitguard-fault-crash").encode()
ONCE_DIR = os.environ.get("VITGUARD_FAULT_ONCE_DIR")


class InjectedFault(RuntimeError):
    """The injected agent exception."""


def should_raise(value: bytes | None) -> bool:
    if not value or MARKER not in value:
        return False
    if ONCE_DIR is None:
        return True
    path = Path(ONCE_DIR) / hashlib.sha256(value).hexdigest()
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


_raw_message = app_module.raw_message


def faulty_raw_message(event: Any) -> Any:
    raw = _raw_message(event)
    if should_raise(raw.value):
        raise InjectedFault(f"injected agent fault at {raw.topic}[{raw.partition}]@{raw.offset}")
    return raw


def main() -> None:
    app_module.raw_message = faulty_raw_message  # the agent looks the name up in its module at each event
    from vitguard.cli import main as cli

    sys.argv = ["vitguard", "worker"]
    cli()


if __name__ == "__main__":
    main()
