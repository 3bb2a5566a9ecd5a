"""Adversarial inputs against a real server process: it never crashes, never answers 5xx, its memory
stays bounded, and a well-behaved worker's job is unaffected."""

from __future__ import annotations

from collections.abc import Iterator

import psutil
import pytest

from agentdispatch.testing.fuzz import FuzzOptions, run_fuzz
from agentdispatch.testing.serverproc import ServerProcess, ServerProcessSettings


@pytest.fixture
def server_process() -> Iterator[ServerProcess]:
    with ServerProcess(ServerProcessSettings(log_level="ERROR")) as proc:
        yield proc


async def test_fuzz_server_survives_and_bystander_keeps_its_job(
    server_process: ServerProcess,
) -> None:
    proc = psutil.Process(server_process.pid)
    report = await run_fuzz(
        FuzzOptions(
            url=server_process.url,
            server_pid=proc.pid,
            frames=1500,
            churn=200,
            api_requests=300,
            status_flood=3000,
        )
    )
    print("fuzz report:", report.as_dict())
    assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE, "server process died"
    assert report.crashes == 0 and report.server_alive
    assert report.api_5xx == 0, report.api_status_counts
    assert report.api_requests == 300
    assert report.frames_sent >= 1500 + 3000
    assert report.connections >= 200
    assert report.bystander_job_intact, "the well-behaved worker's job was disturbed"
    assert report.rss_after_mb < report.rss_before_mb + 60, report.as_dict()
