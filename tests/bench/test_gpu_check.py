"""bench/gpu_check.sh on a machine without CUDA (JSON, exit 0) and its sections on CPU at tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # runs the GPU check's scripts

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def no_cuda() -> None:
    """Skips the test on a machine with CUDA (the script measures there instead); torch is imported only here."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the script measures instead")


@pytest.mark.usefixtures("no_cuda")
def test_script_says_there_is_no_gpu_and_exits_0(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITGUARD_GPU_CHECK")}
    env["VITGUARD_GPU_CHECK_TIMEOUT_S"] = "20"
    result = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], capture_output=True, text=True, env=env,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["gpu"] is False and report["complete"] is True and report["reason"]


@pytest.mark.usefixtures("no_cuda")
def test_python_side_says_so_too_when_a_driver_is_there_but_torch_has_no_cuda(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--out", str(out)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["gpu"] is False


def test_sections_run_on_cpu_at_tiny_sizes(tmp_path: Path) -> None:
    import gpu_check

    from vitguard.model import load_torch_classifier
    from vitguard.testing.models import make_tiny_checkpoint

    clf = load_torch_classifier(str(make_tiny_checkpoint(tmp_path / "tiny")))
    clf = type(clf)(clf.module, clf.info, clf.data_config, device_decode=True)
    datas = [p.read_bytes() for p in gpu_check._uploads(tmp_path / "up", 4, 96)]
    sample = clf.prepare(datas[0])
    measured = gpu_check.model_only(clf, "cpu", [2], 0.01, sample)
    assert measured["batch_2"]["device_resident"]["images_per_s"] > 0
    assert measured["batch_2"]["from_host_predict"]["images_per_s"] > 0
    single = gpu_check.single_image(clf, sample, datas[0], "cpu")
    assert set(single) == {"predict_ms", "predict_encoded_jpeg_ms", "cpu_prepare_ms"}
    decoded = gpu_check.decode(clf, datas, "cpu", 2, 0.01)
    assert decoded["images"] == 4 and decoded["device"]["images_per_s"] > 0 and decoded["cpu"]["images_per_s"] > 0
    report = gpu_check.Report(tmp_path / "r.json")
    report.put("x", {"a": np.float64(1.5).item()})
    assert json.loads((tmp_path / "r.json").read_text()) == {"complete": False, "x": {"a": 1.5}}
