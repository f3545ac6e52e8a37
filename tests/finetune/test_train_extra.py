"""Without the ``train`` extra (matplotlib), the training and report commands stop at once with one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vitguard.cli import main


@pytest.mark.parametrize("command", ["finetune", "evaluate"])
def test_without_matplotlib_the_command_says_what_to_install(
    command: str, binary_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: find_spec and import fail
    data = [str(binary_data)] if command == "finetune" else ["--data", str(binary_data)]
    result = CliRunner().invoke(main, [command, *data, "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"vitguard: error: vitguard {command} needs the train extra: pip install 'vitguard[train]'"
    ]
    assert not (tmp_path / "out").exists(), "nothing is started before the check"
