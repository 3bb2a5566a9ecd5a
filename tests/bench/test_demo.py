"""`agentdispatch demo`: runs to the end, places jobs, and shows the unserved dispatch failing."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from agentdispatch.demo.runner import DemoSettings, plan_dispatches, regular_workers


def test_demo_runs_and_tells_the_story() -> None:
    args = ["--workers", "2", "--dispatches", "5", "--seconds", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "agentdispatch", "demo", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # 5 regular jobs and the late worker's job succeed; the unserved one fails with its reason
    assert re.search(r"succeeded\s*│\s*6\b", out), out
    assert re.search(r"failed\s*│\s*1\b", out), out
    assert "no worker available" in out
    assert "agent_name='nobody'" in out
    assert re.search(r"jobs on late-worker\s*│\s*1\b", out), out
    assert "still pending/running" not in out
    assert "Warning" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_plan_has_unserved_late_and_burst() -> None:
    settings = DemoSettings(workers=3, dispatches=9, seconds=3.0)
    plan = plan_dispatches(settings)
    assert len(plan) == 9 + 2
    assert [p.agent_name for p in plan[:2]] == ["nobody", settings.late_agent]
    times = [p.at for p in plan[2:]]
    assert times == sorted(times) and times[-1] <= settings.seconds
    assert times.count(settings.seconds / 2) >= 3  # the burst
    assert len({p.room for p in plan}) == len(plan)
    # the late worker registers within the deadline, so its dispatch waits and then runs
    assert settings.late_worker_at < settings.deadline
    workers = regular_workers(settings)
    assert [w.job_duration for w in workers] == [1.0, 2.0, 3.0]
    assert [w.load for w in workers] == [0.0, 0.0, 0.3]


def test_demo_that_hits_its_time_limit_says_so_and_exits_nonzero(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from agentdispatch.cli.main import cli

    monkeypatch.setattr(DemoSettings, "time_limit", property(lambda self: 0.5))  # a very busy machine
    result = CliRunner().invoke(cli, ["demo", "--simulated", "--workers", "1", "--dispatches", "3"])
    assert result.exit_code == 1
    assert "time limit reached (0.5 s)" in result.output and "not ended" in result.output
