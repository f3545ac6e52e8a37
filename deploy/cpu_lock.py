"""The runtime lock for the CPU image: requirements/runtime.lock without the CUDA wheels.

PyPI's Linux torch wheel depends on the CUDA runtime as packages (``nvidia-*``, ``cuda-*``, ``triton``: ~3 GB
that a CPU image never loads). The CPU image installs torch and torchvision of the same versions from the
PyTorch CPU index (``+cpu`` builds, no CUDA dependencies) and everything else at the lock's exact versions.

Run by deploy/Dockerfile's ``build-cpu`` stage: ``python deploy/cpu_lock.py requirements/runtime.lock``
prints the lock to install with ``pip install -r``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
_CUDA_ONLY = re.compile(r"^(nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+|triton)==")
_CPU_BUILDS = re.compile(r"^(torch|torchvision)==([0-9][0-9a-z.]*)\s*$")


def cpu_lock(text: str) -> str:
    """``text`` (a uv-compiled lock) with the CUDA-only packages left out and torch/torchvision as ``+cpu``."""
    out = [f"--extra-index-url {CPU_INDEX}"]
    dropping = False
    for line in text.splitlines():
        if line.startswith(" ") and dropping:  # the "# via ..." lines of a package left out
            continue
        dropping = bool(_CUDA_ONLY.match(line))
        if dropping:
            continue
        build = _CPU_BUILDS.match(line)
        out.append(f"{build.group(1)}=={build.group(2)}+cpu" if build else line)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(cpu_lock(Path(sys.argv[1]).read_text()))
