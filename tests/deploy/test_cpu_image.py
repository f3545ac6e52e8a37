"""The CPU image installs no CUDA wheels (issue 30): its lock is the runtime lock without them, torch and
torchvision of the same versions as +cpu builds from the PyTorch CPU index, everything else unchanged; the
``cpu`` target's virtualenv comes from that build, the ``cuda`` target's from the full lock."""

from __future__ import annotations

import importlib.util
import re

from deploy_files import DEPLOY, REPO, dockerfile

LOCK = (REPO / "requirements" / "runtime.lock").read_text()


def _cpu_lock() -> str:
    spec = importlib.util.spec_from_file_location("cpu_lock", DEPLOY / "cpu_lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text: str = module.cpu_lock(LOCK)
    return text


def _pins(text: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)$", text, re.M))


def test_the_cpu_lock_drops_the_cuda_wheels_and_keeps_everything_else_at_its_version() -> None:
    full, cpu = _pins(LOCK), _pins(_cpu_lock())
    cuda = {name for name in full if name.startswith(("nvidia-", "cuda-")) or name == "triton"}
    assert len(cuda) >= 10  # the lock does pull them (PyPI's Linux torch wheel)
    assert not cuda & set(cpu)
    assert cpu["torch"] == f"{full['torch']}+cpu" and cpu["torchvision"] == f"{full['torchvision']}+cpu"
    assert {n: v for n, v in cpu.items() if n not in ("torch", "torchvision")} == {
        n: v for n, v in full.items() if n not in cuda | {"torch", "torchvision"}}
    assert _cpu_lock().startswith("--extra-index-url https://download.pytorch.org/whl/cpu\n")
    assert "# via cuda-toolkit" not in _cpu_lock()


def test_the_cpu_target_takes_its_virtualenv_from_the_cpu_build_and_cuda_from_the_full_one() -> None:
    df = dockerfile()
    assert {"build", "build-cpu", "cpu", "cuda"} <= set(df.stages) and df.stages[-1] == "cpu"
    stage = None
    copies: dict[str, list[str]] = {}
    for instr, args in df.instructions:
        if instr == "FROM":
            stage = args.split()[-1]
        elif instr == "COPY" and args.startswith("--from=") and stage is not None:
            copies.setdefault(stage, []).append(args)
    assert copies["cpu"] == ["--from=build-cpu /opt/venv /opt/venv"]
    assert copies["cuda"] == ["--from=build /opt/venv /opt/venv"]
    runs = " ".join(a for i, a in df.instructions if i == "RUN")
    assert "python deploy/cpu_lock.py requirements/runtime.lock > requirements/cpu.lock" in runs


def test_the_model_revision_is_pinned_to_a_commit_and_the_runtime_loads_what_was_baked() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    pinned = re.search(r"^ARG BAKE_MODEL_REVISION=(\S+)$", text, re.M)
    assert pinned is not None and re.fullmatch(r"[0-9a-f]{40}", pinned.group(1))  # a commit, not a branch
    assert dockerfile().env()["VITGUARD_MODEL_REVISION"] == "${BAKE_MODEL_REVISION}"
    assert 'revision=sys.argv[2]' in text and '"${BAKE_MODEL_REVISION}"' in text
