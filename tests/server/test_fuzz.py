"""Adversarial inputs against a real server process: it never crashes, never answers 5xx, its memory
stays bounded, and a well-behaved worker's job is unaffected."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentdispatch.bench.fuzz import FuzzOptions, run_fuzz


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = _free_port()
    log = (tmp_path / "server.log").open("wb")
    cmd = [
        sys.executable,
        "-m",
        "agentdispatch",
        "server",
        "--dev",
        "--port",
        str(port),
        "--log-level",
        "ERROR",
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url + "/", timeout=1) as resp:
                if resp.status == 200:
                    break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start: " + (tmp_path / "server.log").read_text()) from None
            time.sleep(0.1)
    yield url, proc
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


async def test_fuzz_server_survives_and_bystander_keeps_its_job(
    server_process: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, proc = server_process
    report = await run_fuzz(
        FuzzOptions(url=url, server_pid=proc.pid, frames=1500, churn=200, api_requests=300, status_flood=3000)
    )
    print("fuzz report:", report.as_dict())
    assert proc.poll() is None, "server process died"
    assert report.crashes == 0 and report.server_alive
    assert report.api_5xx == 0, report.api_status_counts
    assert report.api_requests == 300
    assert report.frames_sent >= 1500 + 3000
    assert report.connections >= 200
    assert report.bystander_job_intact, "the well-behaved worker's job was disturbed"
    assert report.rss_after_mb < report.rss_before_mb + 60, report.as_dict()
