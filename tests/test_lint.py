"""Static checks as tests: `ruff check src tests` and `mypy` (strict, files from pyproject) must pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300.0


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def report(proc: subprocess.CompletedProcess[str]) -> str:
    command = " ".join(proc.args[1:]) if isinstance(proc.args, list) else str(proc.args)
    return (
        f"`{command}` exited with {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )


def test_ruff() -> None:
    proc = run_tool("ruff", "check", "--no-cache", "src", "tests")
    assert proc.returncode == 0, report(proc)


@pytest.mark.timeout(TIMEOUT)
def test_mypy() -> None:
    proc = run_tool("mypy")
    assert proc.returncode == 0, report(proc)
