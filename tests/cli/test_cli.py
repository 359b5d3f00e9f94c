"""The command line as a user meets it: real subprocesses, real exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modelshield import __version__


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelshield", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"modelshield {__version__}"


def test_help_lists_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout


def test_wrong_option_is_a_usage_error() -> None:
    result = run("--no-such-option")
    assert result.returncode == 2
    assert "Usage" in result.stderr


def test_unknown_command_is_a_usage_error() -> None:
    result = run("no-such-command")
    assert result.returncode == 2


@pytest.mark.slow
def test_demo_prints_accuracy(tmp_path: Path) -> None:
    result = run("demo", "--workdir", str(tmp_path / "d"))
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
