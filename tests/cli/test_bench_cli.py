"""The bench commands' run-and-report: bad settings are usage errors, harness errors end cleanly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from agentdispatch.cli.bench_run import Log, run_benchmark
from agentdispatch.cli.main import cli
from agentdispatch.testing import HarnessError


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "dispatch", "--workers", "2", "--processes", "5"], "processes must not exceed workers"),
        (
            ["bench", "dispatch", "--server-url", "http://127.0.0.1:1", "--profile-server", "p.txt"],
            "profiling needs the benchmark to start the server itself",
        ),
    ],
)
def test_invalid_benchmark_settings_exit_2_before_anything_runs(
    argv: list[str], message: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(cli, [*argv, "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "r.json").exists()


def test_a_harness_error_ends_the_command_with_its_message_and_writes_nothing(tmp_path: Path) -> None:
    def broken(log: Log) -> dict[str, Any]:
        raise HarnessError("server exited with code 1 before answering GET /")

    out = tmp_path / "r.json"
    with pytest.raises(click.ClickException, match="before answering GET /"):
        run_benchmark(broken, out, lambda r: "table")
    assert not out.exists()


def test_a_run_writes_its_json_and_prints_its_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(log: Log) -> dict[str, Any]:
        log("progress line")
        return {"ok": True, "n": 3}

    out = tmp_path / "sub" / "r.json"
    result = run_benchmark(run, out, lambda r: f"TABLE n={r['n']}")
    assert result == {"ok": True, "n": 3}
    assert json.loads(out.read_text()) == {"ok": True, "n": 3}
    printed = capsys.readouterr()
    assert "TABLE n=3" in printed.out
    assert "results written to" in printed.out
    assert "progress line" in printed.err
