"""The one `vitguard` command: help, schema export, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from vitguard.cli import main


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "schemas" in result.output


def test_schemas_export(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["schemas", "export", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "out").glob("*.schema.json"))
    assert {f.name.removesuffix(".schema.json") for f in files} == {
        "image-event", "verdict", "near-duplicate-alert", "bank-match-alert", "retro-match", "dead-letter",
        "review-request", "review-decision", "verdict-correction", "review-audit-record",
    }
    for f in files:
        assert json.loads(f.read_text())["type"] == "object"


def test_console_script_bad_settings_is_one_line(tmp_path: Path) -> None:
    # a command that loads settings must fail at start-up with one line and a non-zero exit
    env = {"VITGUARD_BATCH_MAX_SIZE": "-1", "PATH": str(Path(sys.executable).parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "vitguard", "config", "show"], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [lines[0]] and "VITGUARD_BATCH_MAX_SIZE" in lines[0]


def test_banks_import_of_a_file_that_is_not_utf8_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Issue 28: it printed a traceback (the README promises one line and exit 2)."""
    bad = tmp_path / "hashes.txt"
    bad.write_bytes(b"f8f8" * 16 + b" id-1\n\xff\xfe latin-1 \xe9t\xe9\n")
    proc = subprocess.run([sys.executable, "-m", "vitguard", "banks", "import", "b", str(bad), "--dry-run"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not UTF-8" in lines[0] and "Traceback" not in proc.stderr
