"""The benchmarks' statistics and that every script starts (``--help`` imports all it needs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import harness
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_steady_rate_does_not_count_the_group_that_starts_the_clock() -> None:
    # 4 batches of 10, 100 ms apart: 30 images in 0.3 s after the first group, not 39
    stamps = [1000 + 100 * b + (i % 2) for b in range(4) for i in range(10)]
    assert harness.steady_rate(stamps) == pytest.approx(100.0, rel=0.05)
    assert harness.steady_rate([5]) != harness.steady_rate([5])  # nan: nothing to measure


def test_latency_summary_in_milliseconds() -> None:
    summary = harness.latency_summary([0.010] * 98 + [0.100, 0.200])
    assert summary["events"] == 100 and summary["p50_ms"] == 10.0 and summary["max_ms"] == 200.0
    assert 10.0 < summary["p99_ms"] <= 200.0


def test_uploads_are_distinct(tmp_path: Path) -> None:
    paths = harness.uploads(tmp_path, 6, 64) + harness.uploads(tmp_path, 2, 64, start=6)
    assert len({p.read_bytes() for p in paths}) == 8


@pytest.mark.parametrize("script", ["latency.py", "classify_load.py", "pipeline_throughput.py", "gpu_check.py",
                                    "banks.py", "ort_spinning.py"])
def test_scripts_start(script: str) -> None:
    result = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


def test_saturation_targets_are_the_issues() -> None:
    assert harness.saturation_ratio_target("opennsfw") == 0.85
    assert harness.saturation_ratio_target("timm:vit_tiny_patch16_384") == 0.9
