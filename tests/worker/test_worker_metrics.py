"""The worker's /metrics: per-job process memory and CPU while a job runs, durations by outcome; promtool."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from livekit import api
from prometheus_client.parser import text_string_to_metric_families

from agentdispatch.server import DispatchServer
from agentdispatch.testing.services import require
from conftest import dispatch, listed_status, wait_record, wait_until

JS_RUNNING = 1
JS_SUCCESS = 2
JS_FAILED = 3


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(worker: Any) -> str:
    async with aiohttp.ClientSession() as http, http.get(worker.http.url + "/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


async def test_job_memory_cpu_and_durations_by_outcome(
    start_worker: Any, lkapi: api.LiveKitAPI, server: DispatchServer, out_file: Any
) -> None:
    worker = await start_worker(agent_name="measured", entrypoint_fnc="metrics_agents:entry_burn", ready=1)
    out = out_file("sleeper")
    await dispatch(lkapi, "room-measured", "measured", out=out)
    rec = await wait_record(out)
    await listed_status(lkapi, "room-measured", JS_RUNNING)
    text = await scrape(worker)
    got = samples(text)
    assert got[("agentdispatch_worker_jobs_running", ())] == 1
    memory = got[("agentdispatch_worker_jobs_memory_bytes", ())]
    assert memory > 1_000_000, f"job process {rec['pid']} measured at {memory} bytes"
    assert got[("agentdispatch_worker_job_memory_max_bytes", ())] == memory

    await listed_status(lkapi, "room-measured", JS_SUCCESS)
    crashy = await start_worker(agent_name="crashing", entrypoint_fnc="worker_agents:entry_crash", ready=1)
    await dispatch(lkapi, "room-crashing", "crashing")
    await listed_status(lkapi, "room-crashing", JS_FAILED)

    async def ended(w: Any, outcome: str) -> float:
        key = ("agentdispatch_worker_job_duration_seconds_count", (("outcome", outcome),))
        return samples(await scrape(w)).get(key, 0.0)

    await wait_until_async(lambda: ended(worker, "success"), "the success duration")
    got = samples(await scrape(worker))
    assert got[("agentdispatch_worker_jobs_running", ())] == 0
    assert got[("agentdispatch_worker_job_duration_seconds_sum", (("outcome", "success"),))] >= 0.5
    assert got[("agentdispatch_worker_jobs_cpu_seconds_total", ())] >= 0.4  # the 0.5 s it burnt
    await wait_until_async(lambda: ended(crashy, "failed"), "the failed duration")


async def wait_until_async(probe: Any, what: str, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await probe():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_promtool_accepts_the_worker_metrics(start_worker: Any) -> None:
    promtool = require("promtool", "prometheus")
    worker = await start_worker(agent_name="linted", entrypoint_fnc="worker_agents:entry_noop", ready=1)
    await wait_until(lambda: worker.http.port != 0, 5, "the HTTP server")
    text = await scrape(worker)
    assert "agentdispatch_worker_jobs_memory_bytes" in text
    proc = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(text.encode()), 60)
    assert proc.returncode == 0, out.decode()
