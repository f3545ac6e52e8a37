"""An offline start is quiet: one line says which model is used and why, nothing else reaches stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from vitguard.testing.services import free_port


def test_offline_classify_prints_one_model_line_and_no_traceback(tmp_path: Path) -> None:
    image = tmp_path / "green.png"
    Image.new("RGB", (64, 64), (10, 200, 10)).save(image)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VITGUARD_", "HF_"))}
    # A hub nobody answers for (a closed local port) and an empty cache: what an air-gapped host sees.
    env.update({"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HOME": str(tmp_path / "hf")})
    result = subprocess.run(
        [sys.executable, "-m", "vitguard", "classify", str(image)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("model in use: opennsfw") and "falling back because" in lines[0], lines[0]
    assert "cannot be reached" in lines[0]
    for noise in ("Traceback", "Retrying", "client has been closed"):
        assert noise not in result.stderr
    assert "opennsfw" in result.stdout and str(image) in result.stdout
