"""A plain install (no ``train`` extra) runs the worker, the moderation commands and model export.

matplotlib belongs to the ``train`` extra. Each check runs in a fresh interpreter where importing
matplotlib fails, and then asserts it was never imported, so an eager import anywhere on these paths fails
here and not on an operator's machine.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vitguard.testing.models import make_tiny_checkpoint

_PRELUDE = """
import sys
from importlib.abc import MetaPathFinder

class _NoTrainExtra(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"{name} is not installed (test: no train extra)")
        return None

sys.meta_path.insert(0, _NoTrainExtra())
"""

_EPILOGUE = """
heavy = sorted(m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib."))
assert not heavy, heavy
print("LEAN-OK")
"""


def _run_lean(body: str, cwd: Path) -> None:
    code = _PRELUDE + textwrap.dedent(body) + _EPILOGUE
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=240,
                            check=False)
    assert result.returncode == 0 and "LEAN-OK" in result.stdout, result.stdout[-2000:] + result.stderr[-4000:]


def test_the_worker_import_path_does_not_need_matplotlib(tmp_path: Path) -> None:
    _run_lean(
        """
        import vitguard.cli, vitguard.consumers, vitguard.consumers.app, vitguard.consumers.worker
        from click.testing import CliRunner
        from vitguard.cli import main
        for args in (["worker", "--help"], ["classify", "--help"], ["model", "export", "--help"]):
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, result.output
        """,
        tmp_path,
    )


@pytest.mark.slow
def test_classify_and_export_run_without_matplotlib(tmp_path: Path) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "tiny", seed=0)
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 40, 40)).save(tmp_path / "red.png")
    _run_lean(
        f"""
        from click.testing import CliRunner
        from vitguard.cli import main
        runner = CliRunner()
        result = runner.invoke(main, ["classify", "red.png", "--model", {str(checkpoint)!r}, "--json"])
        assert result.exit_code == 0, result.output
        result = runner.invoke(main, ["model", "export", "--model", {str(checkpoint)!r}, "--out", "tiny.onnx"])
        assert result.exit_code == 0, result.output
        result = runner.invoke(main, ["classify", "red.png", "--model", "onnx:tiny.onnx", "--json"])
        assert result.exit_code == 0, result.output
        """,
        tmp_path,
    )
