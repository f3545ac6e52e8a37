"""Each pipeline benchmark end to end at tiny sizes (real worker, embedded services): they keep working as
the pipeline changes. The figures are meaningless at these sizes; only the shape of the JSON is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run(tmp_path: Path, script: str, *args: str) -> dict[str, Any]:
    out = tmp_path / "out.json"
    result = subprocess.run([sys.executable, str(BENCH / script), *args, "--out", str(out)], capture_output=True,
                            text=True, timeout=280, check=False)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    report: dict[str, Any] = json.loads(out.read_text())
    return report


@pytest.mark.timeout(300)
def test_latency(tmp_path: Path) -> None:
    report = _run(tmp_path, "latency.py", "--point-s", "1", "--saturation-s", "1", "--min-events", "4",
                  "--batch-size", "8", "--plot", str(tmp_path / "plot.png"))
    assert [p["offered"] for p in report["points"]] == ["1/s", "10%", "25%", "50%", "75%", "90%"]
    assert all(p["latency"]["events"] >= 4 for p in report["points"])
    assert report["saturation"]["images_per_s"] > 0 and report["model_only"]["full_batch_ms"] > 0
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(300)
def test_classify_load(tmp_path: Path) -> None:
    report = _run(tmp_path, "classify_load.py", "--stream-s", "0.5", "--idle-requests", "5", "--max-requests",
                  "40", "--concurrency", "2", "--batch-size", "8")
    assert report["idle"]["requests"] == 5 and report["busy"]["errors"] == 0
    assert report["stream_alone_images_per_s"] > 0 and report["busy"]["stream_images_per_s"] > 0


@pytest.mark.timeout(300)
def test_pipeline_throughput(tmp_path: Path) -> None:
    report = _run(tmp_path, "pipeline_throughput.py", "--events", "48", "--latency-events", "10",
                  "--batch-sizes", "1,8", "--pipeline-batch-size", "8", "--warmup-events", "4",
                  "--adjacent-images", "32")
    assert report["end_to_end"]["images_per_s"] > 0 and report["latency"]["events"] == 10
    assert report["end_to_end"]["events"] == 48, "the warm-up is not counted in the backlog"
    adjacent = report["model_only_adjacent_images_per_s"]
    assert adjacent["before"] > 0 and adjacent["after"] > 0
    e2e = report["end_to_end"]
    assert e2e["co_located_cpu_ms_per_image"]["bench"] > 0  # it published and read every event
    assert 0 < e2e["machine_cores_while_answering"]["busy"] <= (os.cpu_count() or 1) + 0.5


@pytest.mark.timeout(200)
def test_banks(tmp_path: Path) -> None:
    report = _run(tmp_path, "banks.py", "--sizes", "5000", "--seconds", "0.2")
    assert {r["kind"] for r in report["scale"]} == {"mih", "multihash", "flat"}
    assert all(r["agrees"] and r["images_per_s"] > 0 for r in report["scale"])
    robust = report["robustness"]
    assert robust["photos"] >= 8 and robust["copies_matching_their_original"]["jpeg_q40"] >= 0.9
    assert robust["false_match_rate"] is not None
    for size in ("512", "640", "1024"):
        hashing = report["hashing"][f"long_side_{size}px"]
        assert hashing["numpy_ms"] > 0 and hashing["pdqhash_cpp_ms"] > 0
        assert hashing["max_bits_apart"] <= 2  # 0 here (ties go to the reference); float drift elsewhere


@pytest.mark.timeout(120)
def test_ort_spinning(tmp_path: Path) -> None:
    report = _run(tmp_path, "ort_spinning.py", "--rounds", "1", "--runs", "3", "--pauses-ms", "60",
                  "--batch", "2")
    ways = report["ways"]
    assert set(ways) == {"off", "on", "on_stop_after_run"}
    assert all(w["back_to_back_ms"] > 0 and w["batch_ms"] > 0 for w in ways.values())
    # the spinning pool keeps a thread busy through the pause; the others sleep
    assert ways["on"]["after_pause_60ms"]["cpu_ms_in_pause"] > 10 * ways["off"]["after_pause_60ms"]["cpu_ms_in_pause"]


@pytest.mark.timeout(240)
def test_safety_checker(tmp_path: Path) -> None:
    report = _run(tmp_path, "safety_checker.py", "--size", "64", "--batch", "1", "--rounds", "1")
    checkers = report["checkers"]
    assert set(checkers) == {"diffusers_stock_clip_vit_l14", "vitguard_opennsfw", "vitguard_vit_tiny_384"}
    assert all(c["ms_per_image"] > 0 for c in checkers.values())
    assert checkers["diffusers_stock_clip_vit_l14"]["vs_stock"] == 1.0


@pytest.mark.timeout(200)
def test_search(tmp_path: Path) -> None:
    report = _run(tmp_path, "search.py", "--sizes", "2000", "--dims", "16", "--backends", "lite", "--queries", "10",
                  "--chunk", "500")
    (run,) = report["runs"]
    assert (run["backend"], run["size"], run["dim"], run["queries"]) == ("lite", 2000, 16, 10)
    assert run["recall_at_10"] >= 0.9 and run["search_p50_ms"] > 0 and run["retro_hunt_p99_ms"] > 0


def test_policy(tmp_path: Path) -> None:
    data = _run(tmp_path, "policy.py", "--tenants", "10", "1000", "--events", "5000")
    assert [d["tenants"] for d in data["documents"]] == [10, 1000]
    assert all(d["resolve_and_decide"]["p50_ns"] > 0 and d["compile_s"] >= 0 for d in data["documents"])
    assert data["decide_before_policies"]["p50_ns"] > 0 and data["builtin_policy"]["p50_ns"] > 0


def test_hash_hunt(tmp_path: Path) -> None:
    data = _run(tmp_path, "hash_hunt.py", "--items", "20000", "--queries", "5")
    assert data["items"] == 20000 and data["hunt_ms"]["p50"] > 0
    assert data["matches_per_hunt_mean"] >= 1  # the hunted hashes have near copies stored


def test_recent_writes(tmp_path: Path) -> None:
    data = _run(tmp_path, "recent_writes.py", "--writes", "20", "--rows", "8", "--repeats", "2")
    wave, distinct = data["scenarios"]["wave"], data["scenarios"]["distinct"]
    assert wave["recent_rows"] == 160 and wave["hits_per_query"] == 6 and distinct["hits_per_query"] == 0
    assert wave["ms_per_search"] > 0 and distinct["ms_per_search"] > 0
